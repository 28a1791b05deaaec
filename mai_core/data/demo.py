"""A synthetic, fully offline demo dataset in the MAI format, with known ground truth.

Every tile is a 224x224 H&E-like patch rendered from latent tissue regions (tumour, immune
infiltrate, collagenous stroma, lumen/white space, and loose connective tissue filling the rest) and
nuclei drawn inside them. Gene expression is planted on top: five gene modules. Four are localised:
their activity is the fraction of the tile covered by the region that drives them. The fifth,
"housekeeping", follows a per-tile nuclear chromatin factor that sets how dark (and how coarsely
textured) every nucleus in the tile is, independently of the tissue mix. Each region's share is drawn
on its own, so module activities are nearly uncorrelated and co-expression can tell the modules apart.
On top come sample-level noise factors that no image can explain and pure-noise genes.

Output folder (written atomically)::

    train.csv          ID, path, one float column per gene (log1p of size-normalised counts)
    test.csv           ID, path (no expression, like the contest)
    test_truth.csv     ID + the test tiles' expression, for evaluation
    images/<ID>.png    224x224 RGB tiles
    masks/<ID>.npz     one boolean 224x224 array per module: where its signal lives in that tile
                       (the driving region; all nuclei for housekeeping)
    modules.gmt        the true modules (name, description, genes)
    activities.csv     ID, split, one column per module (driving-region fraction; for housekeeping
                       the chromatin factor in [0, 1])
    truth.json         modules, gene -> module (or null), gene families, seed, generator version

The same seed always gives byte-identical CSVs and identical images.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mai_core.data.tissue import MODULES, render_tile
from mai_core.errors import MaiError, Problem

GENERATOR_VERSION = "2.0"
MIN_GENES = 20
MAX_GENES = 20000

MODULE_DESCRIPTIONS = {
    "tumour_proliferation": "tumour epithelium and proliferation; driven by the fraction of the tile that is tumour",
    "immune": "lymphoid/myeloid infiltrate; driven by the fraction covered by dense small-nucleus clusters",
    "stroma_ecm": "fibroblasts and extracellular matrix; driven by the fraction that is dense collagenous "
                  "stroma (not the pale loose connective tissue)",
    "lumen_secretory": "secretory/luminal genes; driven by the fraction that is lumen or white space",
    "housekeeping": "mitochondrial, ribosomal and other abundant transcripts; driven by the tile's nuclear "
                    "chromatin factor (darker, coarser hematoxylin in every nucleus), not by any region's area",
}
# Where each module's signal lives (its mask); "nuclei" is the union of all nuclei.
MODULE_REGION = {
    "tumour_proliferation": "tumour", "immune": "immune", "stroma_ecm": "stroma",
    "lumen_secretory": "lumen", "housekeeping": "nuclei",
}
MODULE_ACTIVITY = {
    "tumour_proliferation": "fraction of the tile that is tumour", "immune": "fraction that is immune infiltrate",
    "stroma_ecm": "fraction that is collagenous stroma", "lumen_secretory": "fraction that is lumen",
    "housekeeping": "nuclear chromatin factor in [0, 1] (scales hematoxylin darkness of all nuclei)",
}
# Approximate mean and standard deviation of each module's activity under the tile prior below;
# fixed (not estimated from the generated data) so a tile's expression depends only on the tile.
_ACT_MEAN = np.array([0.22, 0.09, 0.31, 0.055, 0.5])
_ACT_STD = np.array([0.23, 0.13, 0.23, 0.09, 0.25])

# ----------------------------------------------------------------------------------------------
# Gene names
# ----------------------------------------------------------------------------------------------

_MARKERS = {
    "tumour_proliferation": [
        "KRT19", "KRT8", "KRT18", "EPCAM", "ERBB2", "GRB7", "MKI67", "TOP2A", "CCNB1", "CDK1",
        "BIRC5", "PCNA", "KRT7", "MCM2", "TYMS", "AURKA", "CENPF", "UBE2C", "CDH1", "CLDN4",
        "STARD3", "PGAP3", "CLDN3", "ESR1", "GATA3", "FOXA1", "XBP1", "TPD52", "SPDEF", "CCND1",
        "MYC", "KRT23", "S100A14", "ELF3", "CD24", "SLC39A6", "MUCL1", "CENPA", "RRM2", "TK1",
    ],
    "immune": [
        "PTPRC", "CD3E", "CD74", "IGKC", "CD3D", "CD2", "HLA-DRA", "CD8A", "MS4A1", "CD79A",
        "IGHG1", "CD4", "CD19", "CD79B", "IGHG3", "IGHM", "IGLC2", "JCHAIN", "MZB1", "CCL19",
        "CCL21", "CXCL13", "CCR7", "LYZ", "HLA-DRB1", "HLA-DPA1", "HLA-DPB1", "CD68", "CD163",
        "GZMB", "GZMA", "NKG7", "IL7R", "TRBC2", "LTB", "CORO1A", "SELL", "CXCR4", "CD52", "CD37",
    ],
    "stroma_ecm": [
        "COL1A1", "COL1A2", "COL3A1", "SPARC", "DCN", "FN1", "LUM", "POSTN", "ACTA2", "VIM",
        "COL5A1", "COL5A2", "COL6A1", "COL6A2", "COL6A3", "COL12A1", "MYL9", "TAGLN", "FAP",
        "PDGFRB", "PDGFRA", "MMP2", "MMP11", "THBS2", "BGN", "FBLN1", "FBLN2", "AEBP1", "CTHRC1",
        "SFRP2", "SFRP4", "COL11A1", "ELN", "MFAP4", "IGFBP7", "CALD1", "TIMP3", "CCDC80", "SULF1",
        "INHBA",
    ],
    "lumen_secretory": [
        "SCGB2A2", "PIP", "MUC1", "AZGP1", "TFF1", "TFF3", "AGR2", "MGP", "LTF", "SLPI",
        "SCGB1D2", "CLU", "AGR3", "KRT15", "KRT5", "KRT14", "ANKRD30A", "STC2", "CPB1", "APOD",
        "LALBA", "CSN2", "PIGR", "WFDC2", "LCN2", "S100P", "DEFB1", "SCGB3A1", "OLFM4", "MUC5B",
    ],
    "housekeeping": [
        "ACTB", "GAPDH", "B2M", "EEF1A1", "TPT1", "FTL", "FTH1", "TMSB4X", "TMSB10", "MALAT1",
        "NEAT1", "UBC", "HSPA8", "PPIA", "EEF2", "TPI1", "PKM", "LDHA", "ENO1", "UBB",
    ],
}
_MT_GENES = ["MT-CO1", "MT-ND1", "MT-CO2", "MT-ATP6", "MT-CO3", "MT-CYB", "MT-ND4", "MT-ND2",
             "MT-ND5", "MT-ND3", "MT-ND4L", "MT-ND6", "MT-ATP8"]
_RP_GENES = (
    [f"RPL{i}" for i in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 21, 22, 23, 24, 26,
                         27, 28, 29, 30, 31, 32, 34, 35, 36, 37, 38, 39, 41)]
    + ["RPL7A", "RPL10A", "RPL13A", "RPL18A", "RPL23A", "RPL27A", "RPL35A", "RPL36A", "RPL37A",
       "RPLP0", "RPLP1", "RPLP2"]
    + [f"RPS{i}" for i in (2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23,
                           24, 25, 26, 27, 28, 29)]
    + ["RPS3A", "RPS4X", "RPS15A", "RPS27A", "RPSA"]
)

# Which modules a gene family tends to join: probabilities over MODULES + (None,).
_FAMILY_MODULES = {
    "MT": (0, 0, 0, 0, 1.0, 0),
    "RP": (0.15, 0, 0, 0, 0.85, 0),
    "LINC": (0.10, 0.50, 0.0, 0.0, 0.0, 0.40),
    "AC": (0.12, 0.0, 0.33, 0.0, 0.0, 0.55),
    "AL": (0.08, 0.10, 0.0, 0.22, 0.0, 0.60),
    "symbol": (0.06, 0.06, 0.06, 0.04, 0.03, 0.75),
}
# Typical expression level (rate at average activity, counts) per family: log-uniform range.
_FAMILY_BASE = {
    "marker": (0.3, 40.0), "hk_marker": (5.0, 120.0), "MT": (20.0, 300.0), "RP": (8.0, 90.0),
    "LINC": (0.02, 2.0), "AC": (0.01, 3.0), "AL": (0.01, 3.0), "symbol": (0.01, 15.0),
}

# Lowest typical count rate of a module gene (genes in no module can be far rarer).
_MODULE_MIN_BASE = 0.4


def _symbol_like(rng: np.random.Generator) -> str:
    kind = int(rng.integers(10))
    if kind == 0:
        return f"ZNF{rng.integers(100, 860)}"
    if kind == 1:
        return f"TMEM{rng.integers(8, 270)}" + ("", "A", "B")[int(rng.integers(3))]
    if kind == 2:
        return f"FAM{rng.integers(20, 240)}" + "ABC"[int(rng.integers(3))]
    if kind == 3:
        return f"CCDC{rng.integers(6, 190)}"
    if kind == 4:
        return f"SLC{rng.integers(1, 50)}A{rng.integers(1, 13)}"
    if kind == 5:
        return f"KIAA{rng.integers(100, 2030):04d}"
    if kind == 6:
        return f"C{rng.integers(1, 23)}orf{rng.integers(10, 190)}"
    if kind == 7:
        return f"LRRC{rng.integers(1, 75)}"
    if kind == 8:
        return f"ANKRD{rng.integers(1, 66)}"
    return f"PRR{rng.integers(3, 37)}"


@dataclass
class GeneSpec:
    names: list[str]
    family: list[str]
    module: np.ndarray  # int index into MODULES, -1 for no module
    base: np.ndarray  # typical count rate
    gain: np.ndarray  # log-fold change per standard deviation of module activity
    nuisance: np.ndarray  # index of a hidden non-image factor, -1 for none
    noise_sd: np.ndarray  # per-gene log-scale noise
    dispersion: np.ndarray  # Gamma-Poisson overdispersion


def _gene_catalogue(n_genes: int, rng: np.random.Generator) -> GeneSpec:
    """Choose gene names, families and module memberships for ``n_genes`` genes."""
    n_mt = min(len(_MT_GENES), max(2, round(0.01 * n_genes)))
    n_rp = min(len(_RP_GENES), max(2, round(0.04 * n_genes)))
    n_markers_total = sum(len(v) for v in _MARKERS.values())
    n_mark = min(n_markers_total, max(2 * len(MODULES), round(0.22 * n_genes)))
    n_linc = max(1, round(0.08 * n_genes))
    n_al = max(1, round(0.12 * n_genes))
    n_ac = max(1, round(0.12 * n_genes))
    n_sym = n_genes - (n_mt + n_rp + n_mark + n_linc + n_al + n_ac)
    while n_sym < 0:  # small gene counts: trim the generated families first
        if n_al >= n_ac and n_al > 1:
            n_al -= 1
        elif n_ac > 1:
            n_ac -= 1
        elif n_linc > 1:
            n_linc -= 1
        else:
            n_mark -= 1
        n_sym = n_genes - (n_mt + n_rp + n_mark + n_linc + n_al + n_ac)

    names: list[str] = []
    family: list[str] = []
    module: list[int] = []
    taken: set[str] = set()

    def add(name: str, fam: str, mod: int) -> None:
        names.append(name)
        family.append(fam)
        module.append(mod)
        taken.add(name)

    # Markers: round-robin over modules so every module gets some even for tiny gene counts.
    queues = {m: list(v) for m, v in _MARKERS.items()}
    k = 0
    while k < n_mark:
        for mi, m in enumerate(MODULES):
            if k < n_mark and queues[m]:
                add(queues[m].pop(0), "hk_marker" if m == "housekeeping" else "marker", mi)
                k += 1
    probs = {f: np.asarray(p) / sum(p) for f, p in _FAMILY_MODULES.items()}

    def draw_module(fam: str) -> int:
        j = int(rng.choice(len(MODULES) + 1, p=probs[fam]))
        return -1 if j == len(MODULES) else j

    for name in _MT_GENES[:n_mt]:
        add(name, "MT", draw_module("MT"))
    rp = list(rng.permutation(_RP_GENES))[:n_rp]
    for name in rp:
        add(str(name), "RP", draw_module("RP"))
    makers = {
        "LINC": (n_linc, lambda: f"LINC{rng.integers(1, 2900):05d}"),
        "AL": (n_al, lambda: f"AL{rng.integers(20000, 999999):06d}.{rng.integers(1, 8)}"),
        "AC": (n_ac, lambda: f"AC{rng.integers(2000, 999999):06d}.{rng.integers(1, 8)}"),
        "symbol": (n_sym, lambda: _symbol_like(rng)),
    }
    for fam, (count, make) in makers.items():
        made, misses = 0, 0
        while made < count:
            if misses > 200:  # a family's name space is nearly used up: use clone-style names
                fam, make, misses = "AC", makers["AC"][1], 0
            name = make()
            if name in taken:
                misses += 1
                continue
            add(name, fam, draw_module(fam))
            made, misses = made + 1, 0

    n = len(names)
    module_arr = np.asarray(module, dtype=np.int64)
    # Make sure every module has at least two genes (matters only for tiny gene counts).
    for mi in range(len(MODULES)):
        while (module_arr == mi).sum() < 2:
            free = np.flatnonzero(module_arr == -1)
            if len(free) == 0:
                break
            module_arr[free[0]] = mi
    base = np.empty(n)
    for i, fam in enumerate(family):
        lo, hi = _FAMILY_BASE[fam]
        if module_arr[i] >= 0:  # a module gene is expressed well enough for its co-expression to show
            lo = max(lo, _MODULE_MIN_BASE)
        base[i] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    gain = np.where(module_arr >= 0, rng.uniform(0.45, 1.0, n), 0.0)
    gain[module_arr == MODULES.index("housekeeping")] *= 0.6
    nuisance = np.where((module_arr < 0) & (rng.random(n) < 0.5), rng.integers(0, 3, n), -1)
    order = rng.permutation(n)  # columns in no particular order, like a real gene table
    return GeneSpec(
        names=[names[i] for i in order], family=[family[i] for i in order], module=module_arr[order],
        base=base[order], gain=gain[order], nuisance=nuisance[order],
        noise_sd=rng.uniform(0.1, 0.3, n), dispersion=rng.uniform(0.05, 0.3, n),
    )

# ----------------------------------------------------------------------------------------------
# Tiles: mai_core.data.tissue
# ----------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------
# Expression
# ----------------------------------------------------------------------------------------------


_CHUNK = 512  # samples per block when drawing and writing expression (bounds memory at contest size)


def _expression(activities: np.ndarray, spec: GeneSpec, seed: int) -> np.ndarray:
    """Planted expression: log1p of size-normalised, overdispersed counts (float32 samples x genes).

    Rounded to 4 decimals. Drawn in fixed blocks of samples, each from its own seeded generator.
    """
    n, g = activities.shape[0], len(spec.names)
    out = np.empty((n, g), dtype=np.float32)
    has_mod = spec.module >= 0
    mod_idx = np.where(has_mod, spec.module, 0)
    has_nui = spec.nuisance >= 0
    nui_idx = np.where(has_nui, spec.nuisance, 0)
    log_base = np.log(spec.base)
    for block, start in enumerate(range(0, n, _CHUNK)):
        rng = np.random.default_rng([seed, 3, block])
        act = activities[start:start + _CHUNK]
        m = act.shape[0]
        z = (act - _ACT_MEAN) / _ACT_STD  # standardised module activities
        # Sample-level noise no image can explain: one factor per module, three hidden nuisance
        # factors (confounders shared by some non-module genes), a sequencing-depth factor.
        module_noise = rng.normal(0, 0.3, (m, len(MODULES)))
        nuisance = rng.normal(0, 0.45, (m, 3))
        size = np.exp(rng.normal(0, 0.2, m))
        log_rate = log_base[None, :] + np.log(size)[:, None]
        log_rate += np.where(has_mod, spec.gain * (z[:, mod_idx] + module_noise[:, mod_idx]), 0.0)
        log_rate += np.where(has_nui, nuisance[:, nui_idx], 0.0)
        log_rate += rng.standard_normal((m, g)) * spec.noise_sd[None, :]
        rate = np.exp(np.clip(log_rate, -20, 9))
        rate *= rng.gamma(1.0 / spec.dispersion[None, :], spec.dispersion[None, :], (m, g))
        counts = rng.poisson(rate)
        out[start:start + m] = np.round(np.log1p(counts / size[:, None]), 4)
    return out


def _write_table(path: Path, ids: list[str], paths: list[str] | None, values: np.ndarray | None,
                 genes: list[str]) -> None:
    """Write CSV ID[, path][, genes]; values already rounded to 4 decimals. Fast and deterministic."""
    header = ["ID"] + (["path"] if paths is not None else []) + (list(genes) if values is not None else [])
    with open(path, "w", newline="") as fh:
        fh.write(",".join(header) + "\n")
        for start in range(0, len(ids), _CHUNK):
            stop = min(start + _CHUNK, len(ids))
            cells = None
            if values is not None:
                uniq, inv = np.unique(values[start:stop], return_inverse=True)
                text = np.array([f"{float(v):.4f}".rstrip("0").rstrip(".") for v in uniq], dtype=object)
                cells = text[inv.reshape(stop - start, -1)]
            rows = []
            for i in range(start, stop):
                row = [ids[i]] + ([paths[i]] if paths is not None else [])
                if cells is not None:
                    row.extend(cells[i - start])
                rows.append(",".join(row))
            fh.write("\n".join(rows) + "\n")


def _validate(n_train, n_test, n_genes, seed) -> None:
    problems = []
    for name, val, lo in (("n_train", n_train, 2), ("n_test", n_test, 1), ("n_genes", n_genes, MIN_GENES)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < lo:
            problems.append(Problem(f"--{name.replace('_', '-')}", f"got {val!r}", f"use an integer >= {lo}"))
    if isinstance(n_genes, (int, np.integer)) and n_genes > MAX_GENES:
        problems.append(Problem("--n-genes", f"got {n_genes}", f"use at most {MAX_GENES} genes"))
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        problems.append(Problem("--seed", f"got {seed!r}", "use a non-negative integer"))
    if problems:
        raise MaiError("invalid demo dataset settings", problems)


def _is_demo_folder(out: Path) -> bool:
    try:
        return json.loads((out / "truth.json").read_text()).get("generator") == "mai_core.demo"
    except (OSError, ValueError, AttributeError):
        return False


def _render_batch(folder: str, seed: int, items: list[tuple[str, int, str]]) -> np.ndarray:
    """Render and save tiles ``(split, index, ID)`` into ``folder``; return their activities."""
    from PIL import Image

    folder = Path(folder)
    acts = np.empty((len(items), len(MODULES)))
    for k, (split, i, sample) in enumerate(items):
        # Each tile has its own generator: the result depends only on (seed, split, index).
        rng = np.random.default_rng([seed, 2, 0 if split == "train" else 1, i])
        image, masks, acts[k] = render_tile(rng)
        Image.fromarray(image).save(folder / "images" / f"{sample}.png", compress_level=3)
        np.savez_compressed(folder / "masks" / f"{sample}.npz", **masks)
    return acts


def generate_demo(out, n_train: int = 600, n_test: int = 200, n_genes: int = 500, seed: int = 0,
                  progress: bool = False, workers: int = 1) -> Path:
    """Generate the synthetic demo dataset into folder ``out`` (replaced atomically); return its path.

    ``workers`` > 1 renders tiles in that many processes; the output is identical either way.
    """
    from mai_core.io import atomic_dir, check_replaceable

    _validate(n_train, n_test, n_genes, seed)
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
        raise MaiError("invalid demo dataset settings", [Problem("--workers", f"got {workers!r}",
                                                                 "use an integer >= 1")])
    out = Path(out).expanduser()
    check_replaceable(out, _is_demo_folder, "demo dataset")
    seed = int(seed)
    spec = _gene_catalogue(int(n_genes), np.random.default_rng([seed, 1]))
    splits = [("train", i) for i in range(n_train)] + [("test", i) for i in range(n_test)]
    ids = [f"{split}_{i:05d}" for split, i in splits]
    items = [(split, i, sample) for (split, i), sample in zip(splits, ids)]
    batch = 32
    batches = [items[b:b + batch] for b in range(0, len(items), batch)]
    activities = np.empty((len(splits), len(MODULES)))
    with atomic_dir(out, _is_demo_folder, "demo dataset") as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a normal folder once renamed, not a private temp one
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc="rendering demo tiles", unit="tile")
        try:
            if workers == 1:
                for b, chunk in enumerate(batches):
                    activities[b * batch:b * batch + len(chunk)] = _render_batch(str(tmp), seed, chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            else:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor, as_completed

                ctx = multiprocessing.get_context("spawn")  # safe even when the caller holds threads
                with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx) as pool:
                    futures = {pool.submit(_render_batch, str(tmp), seed, chunk): b
                               for b, chunk in enumerate(batches)}
                    for fut in as_completed(futures):
                        b = futures[fut]
                        acts = fut.result()
                        activities[b * batch:b * batch + len(acts)] = acts
                        if bar is not None:
                            bar.update(len(acts))
        finally:
            if bar is not None:
                bar.close()
        expr = _expression(activities, spec, seed)
        # Like a filtered gene panel: every gene is detected in at least one training tile.
        for j in np.flatnonzero(~(expr[:n_train] > 0).any(axis=0)):
            expr[(j * 7919 + seed) % n_train, j] = round(math.log1p(1.0), 4)
        paths = [f"images/{s}.png" for s in ids]
        tr, te = slice(0, n_train), slice(n_train, None)
        _write_table(tmp / "train.csv", ids[tr], paths[tr], expr[tr], spec.names)
        _write_table(tmp / "test.csv", ids[te], paths[te], None, spec.names)
        _write_table(tmp / "test_truth.csv", ids[te], None, expr[te], spec.names)
        act_lines = ["ID,split," + ",".join(MODULES)]
        for (split, _), sample, row in zip(splits, ids, activities):
            act_lines.append(",".join([sample, split] + [f"{v:.6f}" for v in row]))
        (tmp / "activities.csv").write_text("\n".join(act_lines) + "\n")
        gmt = []
        for mi, m in enumerate(MODULES):
            members = [g for g, gm in zip(spec.names, spec.module) if gm == mi]
            gmt.append("\t".join([m, MODULE_DESCRIPTIONS[m]] + members))
        (tmp / "modules.gmt").write_text("\n".join(gmt) + "\n")
        truth = {
            "generator": "mai_core.demo",
            "version": GENERATOR_VERSION,
            "seed": int(seed),
            "n_train": int(n_train), "n_test": int(n_test), "n_genes": int(n_genes),
            "modules": [{"name": m, "description": MODULE_DESCRIPTIONS[m], "region": MODULE_REGION[m],
                         "activity": MODULE_ACTIVITY[m],
                         "n_genes": int((spec.module == mi).sum())} for mi, m in enumerate(MODULES)],
            "gene_module": {g: (MODULES[m] if m >= 0 else None) for g, m in zip(spec.names, spec.module)},
            "gene_family": dict(zip(spec.names, spec.family)),
            "gene_gain": {g: round(float(v), 4) for g, v in zip(spec.names, spec.gain)},
            "activities": "activities.csv",
            "test_expression": "test_truth.csv",
            "masks": "masks/<ID>.npz (one boolean 224x224 array per module)",
            "expression": "log1p(counts / size factor); counts ~ Poisson(Gamma-mixed rate); "
                          "log rate = log base + gain * (standardised module activity + module noise) "
                          "+ hidden nuisance factors + gene noise",
        }
        (tmp / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return out


def summarize(out) -> str:
    """One paragraph describing a generated demo dataset (from its truth.json)."""
    out = Path(out)
    truth = json.loads((out / "truth.json").read_text())
    mods = ", ".join(f"{m['name']} ({m['n_genes']} genes)" for m in truth["modules"])
    n_free = sum(1 for v in truth["gene_module"].values() if v is None)
    return (f"demo dataset in {out}: {truth['n_train']} train + {truth['n_test']} test tiles, "
            f"{truth['n_genes']} genes, seed {truth['seed']}\n  modules: {mods}; {n_free} genes in no module")


def is_current_demo(out) -> bool:
    """True when ``out`` holds a complete demo dataset made by this generator version."""
    import json as _json

    out = Path(out)
    try:
        truth = _json.loads((out / "truth.json").read_text())
    except (OSError, ValueError):
        return False
    return (out / "train.csv").exists() and truth.get("version") == GENERATOR_VERSION


def ensure_demo(progress: bool = False) -> Path:
    """The workspace's demo dataset folder, generated (deterministically) when absent or outdated."""
    from mai_core.workspace import demo_dir

    out = demo_dir()
    if not is_current_demo(out):
        generate_demo(out, progress=progress)
    return out
