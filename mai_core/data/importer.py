"""Import real spatial-transcriptomics sections (H&E image + spot table + counts) into MAI format.

One section is three files:

- the full-resolution H&E image (JPEG/PNG/TIFF), decoded once;
- a spot table (tab- or comma-separated, with header) with columns ``x``, ``y`` (array position),
  ``pixel_x``, ``pixel_y`` (spot centre in image pixels, x = column, y = row) and optionally
  ``selected`` (1 = under tissue; when the column is absent every row counts as selected);
- a counts table (``.tsv``/``.csv``, optionally gzipped): one row per spot, first column the spot id
  ``f"{x}x{y}"``, one column per gene with raw counts (a genes x spots table is transposed automatically).

For every selected spot that has counts, a 224x224 patch centred on the spot is cut out of the image
(parts outside the image are padded with white) and saved as ``DIR/images/<section>/<spot>.png``
(or ``.jpg``, quality 95). ``DIR/train.csv`` gets one row per spot: ``ID`` = ``<section>_<spot>``,
``path``, metadata ``section``, ``px``, ``py`` (integer patch centre), ``array_x``, ``array_y``, then genes.

Folder layout and appending. Besides the MAI files, the output folder keeps the raw counts of every
imported section in ``DIR/slides/<section>.npz`` and the dataset settings in ``DIR/slides/manifest.json``.
``train.csv`` is regenerated from these on every import, so that

- several sections in one folder share one gene table: the union of their genes, a gene missing from a
  section is 0 there; columns keep the order they already had, new genes are appended alphabetically;
- re-importing a section replaces its rows (and images) instead of duplicating them;
- normalisation and gene selection are dataset-wide and computed over all sections together
  (``top_genes`` ranks genes by variance over the combined, normalised table).

Normalisation (``norm``): ``log1p_cp10k`` (default) = ``log1p(counts / spot total * 10,000)``,
``cp10k`` = ``counts / spot total * 10,000``, ``log1p`` = ``log1p(counts)``, ``raw`` = counts.
The spot total is the sum over every gene in the counts table (before gene selection).

Gene selection: ``genes`` (a list or a file with one gene per line) fixes the exact columns, in that
order; genes of the list that no section measured are kept as all-zero columns and reported (so a
published panel is reproduced column for column); a list sharing no gene with the data is rejected.
``top_genes=N`` keeps the N most variable genes after normalisation. Both are remembered in the
manifest: an import that passes neither keeps the folder's current selection; ``all_genes=True``
clears it. ``norm`` is remembered the same way (changing it re-normalises every section).

Order of writes (a failure never leaves train.csv pointing at a missing image): patches (each file
atomically), section counts, manifest, then train.csv atomically, then removal of images that a
re-imported section no longer uses. One import at a time per folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mai_core.data.dataset import ID_COL, PATH_COL
from mai_core.data.images import PATCH_SIZE
from mai_core.data.sections import DEFAULT_MIN_MATCH, Section, stage_st
from mai_core.data.slideimage import DEFAULT_MAX_PIXELS
from mai_core.data.stfiles import check_section_name, examples, progress_iter, read_gene_list
from mai_core.data.wsi import iter_patches
from mai_core.errors import MaiError, Problem
from mai_core.io import atomic_path
from mai_core.metrics import top_variable_genes

NORMS = ("log1p_cp10k", "log1p", "raw", "cp10k")
DEFAULT_NORM = "log1p_cp10k"
IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg"}
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 encodes ~3x faster than 6 for ~10% larger files
HER2ST_SECTIONS = ("C2", "C3", "C4", "C5")
STORE_DIR = "slides"
MANIFEST = "manifest.json"


def normalize_counts(values: np.ndarray, norm: str = DEFAULT_NORM, totals: np.ndarray | None = None) -> np.ndarray:
    """Normalise a spots x genes count matrix (float64 result).

    ``totals`` (per spot) defaults to the row sums; spots with a zero total give zeros under cp10k norms.
    """
    if norm not in NORMS:
        raise MaiError("unknown normalisation", [Problem("--norm", f"'{norm}'", f"choose one of {', '.join(NORMS)}")])
    x = np.asarray(values, dtype=np.float64)
    if norm == "raw":
        return x.copy()
    if norm == "log1p":
        return np.log1p(x)
    tot = x.sum(1) if totals is None else np.asarray(totals, dtype=np.float64)
    scaled = np.divide(x * 1e4, tot[:, None], out=np.zeros_like(x), where=tot[:, None] > 0)
    return np.log1p(scaled) if norm == "log1p_cp10k" else scaled



# --------------------------------------------------------------------------------------------------
# Output folder state
# --------------------------------------------------------------------------------------------------

def _store(out: Path) -> Path:
    return out / STORE_DIR


def read_manifest(out) -> dict | None:
    path = _store(Path(out)) / MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaiError("import manifest is corrupt", [Problem(str(path), f"not valid JSON ({exc})",
                                                              "import the sections again into a new folder")]) from None
    m.setdefault("sections", {})
    m.setdefault("gene_order", [])
    return m


def _save_section_store(out: Path, section: str, spots: list[str], genes: list[str], values: np.ndarray,
                        meta: dict[str, np.ndarray]) -> None:

    target = _store(out) / f"{section}.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, spots=np.asarray(spots, dtype=str), genes=np.asarray(genes, dtype=str),
                                counts=values, **meta)


def _load_section_store(out: Path, section: str) -> dict[str, np.ndarray]:
    path = _store(out) / f"{section}.npz"
    if not path.is_file():
        raise MaiError("imported section data is missing", [Problem(
            str(path), f"section '{section}' is listed in the manifest but its counts file is gone",
            f"re-import section {section}")])
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _patch_geometry(st: Section, patch_mpp: float | None) -> tuple[int, float | None]:
    """(level-0 pixels read per patch, mpp of the written patches) for a section."""
    if st.slide is None:
        return PATCH_SIZE, st.patches_mpp
    if patch_mpp is None:
        return PATCH_SIZE, st.mpp
    if st.mpp is None:
        raise MaiError("cannot resample patches: the section's resolution is unknown", [Problem(
            f"section {st.name}", "no µm-per-pixel in the slide metadata and none estimated from the spots",
            "pass --mpp (µm per pixel of the image), or leave out --patch-mpp to keep the native resolution")])
    return max(8, int(round(PATCH_SIZE * patch_mpp / st.mpp))), float(patch_mpp)


def _write_patches(out: Path, st: Section, ext: str, progress: bool, read_size: int) -> tuple[list[str], int]:
    """Write one image per spot (each atomically); returns (relative paths, number padded)."""
    from PIL import Image

    folder = out / "images" / st.name
    folder.mkdir(parents=True, exist_ok=True)
    rels = [f"images/{st.name}/{s}{ext}" for s in st.spots]
    padded = 0
    if st.slide is not None:
        half = read_size // 2
        x0, y0 = st.centres[:, 0] - half, st.centres[:, 1] - half
        padded = int(((x0 < 0) | (y0 < 0) | (x0 + read_size > st.slide.width) |
                      (y0 + read_size > st.slide.height)).sum())
        batches = iter_patches(st.slide, st.centres, read_size, PATCH_SIZE)
    else:
        batches = ((np.arange(i, min(i + 64, len(st.spots))), st.patches[i:i + 64])
                   for i in range(0, len(st.spots), 64))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(st.spots), desc=f"{st.name}: patches", unit="patch", leave=False)
    for idx, patches in batches:
        for i, patch in zip(idx, patches):
            with atomic_path(out / rels[i], suffix=ext) as tmp:
                im = Image.fromarray(np.ascontiguousarray(patch))
                if im.size != (PATCH_SIZE, PATCH_SIZE):
                    im = im.resize((PATCH_SIZE, PATCH_SIZE), Image.BILINEAR)
                if ext == ".png":
                    im.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
                else:
                    im.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return rels, padded


# --------------------------------------------------------------------------------------------------
# Building train.csv from the imported sections
# --------------------------------------------------------------------------------------------------

def _selection_label(m: dict) -> str:
    if m.get("genes"):
        return f"gene list ({len(m['genes'])} genes)"
    if m.get("top_genes"):
        return f"top {m['top_genes']} most variable genes"
    return "all genes"


def build_train_table(out, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """The combined train table of every section imported into ``out`` (settings from its manifest)."""
    out = Path(out)
    m = read_manifest(out)
    if not m or not m["sections"]:
        raise MaiError("nothing imported yet", [Problem(str(out), "no imported sections",
                                                        "run import-slide for at least one section")])
    norm = m.get("norm", DEFAULT_NORM)
    parts = []
    for name in progress_iter(list(m["sections"]), progress, desc="normalising sections", unit="section", leave=False):
        z = _load_section_store(out, name)
        parts.append((name, z))
    present = set()
    for _, z in parts:
        present.update(z["genes"].tolist())
    union = [g for g in m["gene_order"] if g in present]
    union += sorted(present - set(union))
    col = {g: j for j, g in enumerate(union)}
    n = sum(len(z["spots"]) for _, z in parts)
    X = np.zeros((n, len(union)), dtype=np.float64)
    meta = {k: [] for k in (ID_COL, PATH_COL, "section", "px", "py", "array_x", "array_y")}
    r = 0
    for name, z in parts:
        k = len(z["spots"])
        cols = np.array([col[g] for g in z["genes"].tolist()], dtype=np.int64)
        X[r:r + k, cols] = normalize_counts(z["counts"], norm)
        ext = m["sections"][name].get("ext", ".png")
        spots = z["spots"].tolist()
        meta[ID_COL] += [f"{name}_{s}" for s in spots]
        meta[PATH_COL] += [f"images/{name}/{s}{ext}" for s in spots]
        meta["section"] += [name] * k
        meta["px"] += z["px"].tolist()
        meta["py"] += z["py"].tolist()
        meta["array_x"] += z["array_x"].tolist()
        meta["array_y"] += z["array_y"].tolist()
        r += k
    info: dict = {"genes_absent": [], "selection": _selection_label(m), "norm": norm}
    if m.get("genes"):
        panel = m["genes"]
        absent = [g for g in panel if g not in col]
        if len(absent) == len(panel):
            raise MaiError("no gene of the gene list is in the data", [Problem(
                "--genes", f"none of {len(panel)} listed genes (e.g. {examples(panel, 3)}) was measured; "
                f"data genes e.g. {examples(union, 3)}", "check the gene naming (symbols vs Ensembl ids)")])
        genes = panel
        Xs = np.zeros((n, len(panel)), dtype=np.float64)
        for j, g in enumerate(panel):
            if g in col:
                Xs[:, j] = X[:, col[g]]
        info["genes_absent"] = absent
    elif m.get("top_genes"):
        k = min(int(m["top_genes"]), len(union))
        idx = np.sort(top_variable_genes(X, k))
        genes, Xs = [union[i] for i in idx], X[:, idx]
        if k < int(m["top_genes"]):
            info["top_genes_capped"] = k
    else:
        genes, Xs = union, X
    frame = pd.DataFrame(meta)
    frame["px"] = frame["px"].astype(np.int64)
    frame["py"] = frame["py"].astype(np.int64)
    for c in ("array_x", "array_y"):
        v = frame[c].to_numpy()
        if np.all(v == np.round(v)):
            frame[c] = v.astype(np.int64)
    table = pd.concat([frame, pd.DataFrame(Xs.astype(np.float32), columns=genes)], axis=1)
    info["gene_order"] = union
    info["n_genes"] = len(genes)
    return table, info


def _resolve_settings(m: dict | None, norm, genes, top_genes, all_genes) -> tuple[dict, list[str]]:
    """New dataset-wide settings from the call and the stored manifest; returns (settings, notes)."""
    notes = []
    old = m or {}
    chosen = [x for x in (genes is not None, top_genes is not None, bool(all_genes)) if x]
    if len(chosen) > 1:
        raise MaiError("conflicting gene selection", [Problem(
            "--genes/--top-genes/--all-genes", "more than one given", "pass at most one of them")])
    if norm is None:
        norm = old.get("norm", DEFAULT_NORM)
    elif norm not in NORMS:
        raise MaiError("unknown normalisation", [Problem("--norm", f"'{norm}'", f"choose one of {', '.join(NORMS)}")])
    elif m and m.get("sections") and old.get("norm", DEFAULT_NORM) != norm:
        notes.append(f"normalisation changed from {old.get('norm')} to {norm}: every section re-normalised")
    if genes is not None:
        if isinstance(genes, (str, os.PathLike)):
            genes = read_gene_list(genes)
        else:
            genes = list(dict.fromkeys(str(g).strip() for g in genes if str(g).strip()))
            if not genes:
                raise MaiError("gene list is empty", [Problem("genes", "no gene names", "list at least one gene")])
        sel = {"genes": genes, "top_genes": None}
    elif top_genes is not None:
        try:
            k = int(top_genes)
        except (TypeError, ValueError):
            k = 0
        if k < 1 or float(top_genes) != k:
            raise MaiError("invalid --top-genes", [Problem("--top-genes", f"{top_genes!r}", "give a whole number >= 1")])
        sel = {"genes": None, "top_genes": k}
    elif all_genes:
        sel = {"genes": None, "top_genes": None}
    else:
        sel = {"genes": old.get("genes"), "top_genes": old.get("top_genes")}
        if m and m.get("sections") and (sel["genes"] or sel["top_genes"]):
            notes.append(f"gene selection kept from earlier imports: {_selection_label(sel)}")
    return {"norm": norm, **sel}, notes


def _check_out(out: Path) -> dict | None:
    if out.exists() and not out.is_dir():
        raise MaiError("output is not a folder", [Problem(str(out), "exists and is a file", "pass a folder for --out")])
    m = read_manifest(out)
    if m is None and (out / "train.csv").exists():
        raise MaiError("output folder holds a dataset not made by import-slide", [Problem(
            str(out / "train.csv"), "exists, but there is no slides/manifest.json next to it",
            "import into an empty or new folder (import-slide regenerates train.csv from the imported sections)")])
    return m


def _commit(out: Path, m: dict, progress: bool, stale: dict[str, set[str]]) -> dict:
    """Write train.csv from the manifest's sections, then drop images no row uses any more."""
    from mai_core.data.dataset import write_dataset

    table, info = build_train_table(out, progress=progress)
    if progress:
        print(f"writing {out / 'train.csv'} ({len(table)} rows x {info['n_genes']} genes) ...", flush=True)
    write_dataset(out, table)
    used = set(table[PATH_COL])
    removed = 0
    for folder_files in stale.values():
        for rel in folder_files:
            if rel not in used and (out / rel).is_file():
                (out / rel).unlink()
                removed += 1
    info.update(rows=len(table), stale_images_removed=removed,
                sections=list(m["sections"]))
    return info


def _ingest(out: Path, m: dict, st: Section, image_format: str, progress: bool,
            patch_mpp: float | None) -> tuple[dict, set[str]]:
    """Write one staged section's images and counts and record it in the manifest ``m`` (not saved)."""
    ext = IMAGE_FORMATS[image_format]
    read_size, written_mpp = _patch_geometry(st, patch_mpp)
    folder = out / "images" / st.name
    replaced = st.name in m["sections"]
    old_files = set()
    if folder.is_dir():
        old_files = {f"images/{st.name}/{p.name}" for p in folder.iterdir()
                     if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    rels, padded = _write_patches(out, st, ext, progress, read_size)
    _save_section_store(out, st.name, st.spots, st.genes, st.values, {
        "px": st.centres[:, 0], "py": st.centres[:, 1],
        "array_x": st.array_xy[:, 0], "array_y": st.array_xy[:, 1]})
    new_genes = sorted(set(st.genes) - set(m["gene_order"]))
    m["gene_order"] = list(m["gene_order"]) + new_genes
    m["sections"][st.name] = {**st.sources, "ext": ext, "spots": len(st.spots), "min_counts": st.min_counts,
                              "platform": st.platform, "mpp": st.mpp, "mpp_source": st.mpp_source,
                              "patch_mpp": written_mpp, "patch_px": PATCH_SIZE, "read_px": read_size,
                              "patch_um": None if written_mpp is None else round(PATCH_SIZE * written_mpp, 3),
                              "imported": time.strftime("%Y-%m-%dT%H:%M:%S")}
    summary = {"section": st.name, "spots": len(st.spots), "genes_in_section": len(st.genes),
               "padded": int(padded), "replaced": replaced, "skipped": st.skipped, "notes": list(st.notes),
               "image_format": image_format, "mpp": st.mpp, "mpp_source": st.mpp_source,
               "patch_mpp": written_mpp, "read_px": read_size}
    return summary, old_files - set(rels)


def import_sections(stagers, out, norm=None, genes=None, top_genes=None, all_genes: bool = False,
                    image_format: str = "png", progress: bool = False, patch_mpp: float | None = None) -> dict:
    """Import sections into the MAI folder ``out``: ``stagers`` are (name, callable returning a Section).

    Each section is read and checked completely before any of its files is written; a later section's
    error publishes the earlier ones first (and says so). ``patch_mpp`` resamples every patch to that
    resolution (224 px = 224 × patch_mpp µm); default: each section's native resolution.
    """
    from mai_core.data.mpp import check_mpp
    from mai_core.io import write_json

    t0 = time.perf_counter()
    out = Path(out).expanduser()
    if image_format not in IMAGE_FORMATS:
        raise MaiError("unknown image format", [Problem("image_format", f"'{image_format}'",
                                                        f"choose one of {', '.join(IMAGE_FORMATS)}")])
    if patch_mpp is not None:
        patch_mpp = check_mpp(patch_mpp, "--patch-mpp")
    m = _check_out(out)
    settings, notes = _resolve_settings(m, norm, genes, top_genes, all_genes)
    names = [check_section_name(name) for name, _ in stagers]
    if len(set(names)) != len(names):
        raise MaiError("a section is listed twice", [Problem("sections", f"{names}", "list each section once")])
    if not stagers:
        raise MaiError("no section to import", [Problem("sections", "empty", "name at least one section")])
    m = m or {"format": 1, "sections": {}, "gene_order": []}
    m.update(settings)
    sections, stale = [], {}
    for (_, stage), name in zip(stagers, names):
        try:
            st = stage()
            if settings.get("genes") and not set(settings["genes"]) & (set(st.genes) | set(m["gene_order"])):
                st.close()
                raise MaiError("no gene of the gene list is in the data", [Problem(
                    "--genes", f"none of {len(settings['genes'])} listed genes (e.g. "
                    f"{examples(settings['genes'], 3)}) is in section {name} (genes e.g. {examples(st.genes, 3)})",
                    "check the gene naming (symbols vs Ensembl ids)")])
            if patch_mpp is not None:
                _patch_geometry(st, patch_mpp)
        except MaiError as exc:
            if sections:  # earlier sections of this call are in place: publish them before failing
                _commit(out, m, progress, stale)
                exc.hint = (exc.hint + " " if exc.hint else "") + \
                    f"sections {', '.join(s['section'] for s in sections)} were imported before this error"
            raise
        try:
            summary, stale[name] = _ingest(out, m, st, image_format, progress, patch_mpp)
        finally:
            st.close()
        del st
        sections.append(summary)
        write_json(_store(out) / MANIFEST, m)
    info = _commit(out, m, progress, stale)
    info.update(out=str(out), train_csv=str(out / "train.csv"), imported=sections, notes=notes,
                seconds=round(time.perf_counter() - t0, 2))
    info.pop("gene_order", None)
    return info


def dataset_resolution(root) -> dict:
    """The resolution of a dataset's patches from its import manifest.

    ``{"mpp": median patch µm/px or None, "patch_px", "patch_um", "spot_pitch_um", "platform",
    "sections": {name: mpp}, "spread": max/min - 1}``; ``mpp`` is None for datasets not made by an
    importer (e.g. the synthetic demo) or whose sections have unknown resolution.
    """
    from mai_core.data.mpp import PLATFORMS

    try:
        m = read_manifest(root)
    except MaiError:
        m = None
    out = {"mpp": None, "patch_px": PATCH_SIZE, "patch_um": None, "spot_pitch_um": None, "platform": None,
           "sections": {}, "spread": None}
    if not m or not m.get("sections"):
        return out
    per = {k: v.get("patch_mpp") for k, v in m["sections"].items()}
    out["sections"] = per
    known = [float(v) for v in per.values() if v]
    platforms = {v.get("platform") for v in m["sections"].values()}
    if len(platforms) == 1 and next(iter(platforms)) in PLATFORMS:
        out["platform"] = next(iter(platforms))
        out["spot_pitch_um"] = PLATFORMS[out["platform"]].pitch_um
    if known and len(known) == len(per):
        out["mpp"] = float(np.median(known))
        out["patch_um"] = round(PATCH_SIZE * out["mpp"], 3)
        out["spread"] = round(max(known) / min(known) - 1, 4)
    return out


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def import_slide(image, spots, counts, section: str, out, norm: str | None = None,
                 genes: Sequence[str] | str | os.PathLike | None = None, top_genes: int | None = None,
                 all_genes: bool = False, min_counts: float = 1, image_format: str = "png",
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False,
                 min_match: float = DEFAULT_MIN_MATCH, mpp: float | None = None,
                 patch_mpp: float | None = None) -> dict:
    """Import one legacy-ST section into the MAI folder ``out`` (created, or appended to); see the module docstring.

    ``norm``, ``genes``/``top_genes``/``all_genes`` left at None/False keep the folder's stored settings
    (new folder: ``log1p_cp10k``, all genes). ``min_counts``: spots with a smaller total are skipped.
    ``min_match``: the least fraction of spots under tissue that must have a counts row. ``mpp``: µm per
    pixel of the image (default: metadata, else the spot grid). ``patch_mpp``: resample patches to it.
    ``image_format``: "png" or "jpeg" (quality 95). Returns a summary dict: ``rows``, ``n_genes``,
    ``sections``, ``imported`` (per section: spots, padded, replaced, skipped reasons, mpp), ``genes_absent``
    (listed genes no section measured, kept as zeros), ``notes``, ``seconds``.
    """
    def stage():
        return stage_st(image, spots, counts, section, min_counts=min_counts, min_match=min_match,
                        max_pixels=max_pixels, mpp=mpp, progress=progress)

    return import_sections([(section, stage)], out, norm, genes, top_genes, all_genes, image_format, progress,
                           patch_mpp)


def her2st_files(shared_dir, section: str) -> dict:
    """Paths of one HER2ST section (``S.jpg``, ``S_selection.tsv``, ``S.tsv.gz``) under ``shared_dir``."""
    d = Path(shared_dir).expanduser()
    if (d / "her2st").is_dir():
        d = d / "her2st"
    return {"image": d / f"{section}.jpg", "spots": d / f"{section}_selection.tsv",
            "counts": d / f"{section}.tsv.gz", "section": section}


def import_her2st(shared_dir, out, sections: Sequence[str] = HER2ST_SECTIONS, top_genes: int | None = None,
                  norm: str | None = None, genes=None, image_format: str = "png", progress: bool = False) -> dict:
    """Import HER2ST sections (default C2-C5) from ``shared_dir`` (the data folder or its her2st/) into ``out``.

    train.csv is written once, after the last section.
    """
    stagers = []
    for s in sections:
        f = her2st_files(shared_dir, s)
        stagers.append((s, lambda f=f: stage_st(f["image"], f["spots"], f["counts"], f["section"], progress=progress)))
    return import_sections(stagers, out, norm, genes, top_genes, False, image_format, progress)


def format_summary(info: dict) -> str:
    """Human-readable summary of an import (printed by the CLI)."""
    lines = []
    for s in info["imported"]:
        sk = s["skipped"]
        verb = "re-imported (its previous rows were replaced)" if s["replaced"] else "imported"
        lines.append(f"section {s['section']}: {verb}: {s['spots']} spots, {s['genes_in_section']} genes measured")
        if sk["no_counts"]:
            lines.append(f"  skipped {sk['no_counts']} selected spot(s) without a counts row "
                         f"(e.g. {examples(sk['no_counts_examples'], 5)})")
        if sk["below_min_counts"]:
            lines.append(f"  skipped {sk['below_min_counts']} spot(s) below --min-counts "
                         f"(e.g. {examples(sk['below_min_counts_examples'], 5)})")
        if sk["not_selected"]:
            lines.append(f"  ignored {sk['not_selected']} spot(s) not under tissue (selected != 1)")
        if sk["counts_rows_not_selected"]:
            lines.append(f"  ignored {sk['counts_rows_not_selected']} counts row(s) of spots not selected")
        if s["padded"]:
            lines.append(f"  {s['padded']} patch(es) reach past the image border: padded with white")
        if s.get("mpp"):
            size = f"{s['read_px']} px resampled to 224" if s["read_px"] != 224 else "224 px"
            lines.append(f"  resolution {s['mpp']:.4g} µm/px ({s['mpp_source']}); patches {size} = "
                         f"{224 * s['patch_mpp']:.0f} µm")
        for note in s["notes"]:
            lines.append(f"  note: {note}")
    for note in info["notes"]:
        lines.append(f"note: {note}")
    if info.get("genes_absent"):
        lines.append(f"warning: {len(info['genes_absent'])} listed gene(s) measured in no section, kept as "
                     f"all-zero columns: {examples(info['genes_absent'], 8)}")
    if info.get("top_genes_capped"):
        lines.append(f"note: only {info['top_genes_capped']} genes available for --top-genes")
    if info.get("stale_images_removed"):
        lines.append(f"removed {info['stale_images_removed']} image(s) no longer used")
    lines.append(f"{info['train_csv']}: {info['rows']} spots from {len(info['sections'])} section(s) "
                 f"({', '.join(info['sections'])}), {info['n_genes']} genes ({info['selection']}), "
                 f"norm {info['norm']} [{info['seconds']:.1f} s]")
    return "\n".join(lines)
