"""Gene selection for CAMs, and what the maps say: CAM similarity between genes, prefix similarity (do
genes sharing a name prefix attend to the same tissue?), faithfulness against planted masks.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mai_core.errors import MaiError, Problem


# ----------------------------------------------------------------------------------------------
# Gene selection and names
# ----------------------------------------------------------------------------------------------


def _unknown(name: str, available: Sequence[str], what: str, source: str) -> Problem:
    lower = {a.lower(): a for a in available}
    close = difflib.get_close_matches(name, list(available), n=4, cutoff=0.6)
    if name.lower() in lower and lower[name.lower()] not in close:
        close.insert(0, lower[name.lower()])
    return Problem(f"{what} {name!r}", f"not in {source}",
                   f"did you mean {', '.join(close)}?" if close else f"pick a {what} listed in {source}")


def gene_family(name: str) -> str:
    """Name family of a gene, by the same rule as prefix clustering (LINC01770 → LINC, AL357054.4 → AL),
    upper-cased; a name without such a prefix (GAPDH) is its own family."""
    from mai_core.genes import gene_prefix as _prefix

    found = _prefix(name)
    return found.upper() if found else name


def gene_families(genes: Sequence[str]) -> list[str]:
    """Name families (see :func:`gene_family`) of these genes, largest first (ties by name)."""
    from collections import Counter

    counts = Counter(gene_family(g) for g in genes)
    return sorted(counts, key=lambda f: (-counts[f], f))


def select_genes(available: Sequence[str], genes: Sequence[str] | None = None, prefix: str | None = None,
                 group: str | None = None, grouping=None, limit: int | None = None) -> list[str]:
    """Genes chosen by explicit names, a name prefix or a group of a Grouping; MaiError on no match."""
    available = list(available)
    known = set(available)
    chosen: list[str] = []
    if genes:
        problems = [_unknown(g, available, "gene", "the run's genes") for g in genes if g not in known]
        if problems:
            raise MaiError(f"{len(problems)} requested gene(s) are not predicted by the run", problems)
        chosen.extend(genes)
    if prefix:
        hits = [g for g in available if g.upper().startswith(prefix.upper())]
        if not hits:
            fams = sorted({gene_family(g) for g in available})
            close = difflib.get_close_matches(prefix.upper(), fams, n=5, cutoff=0.5)
            raise MaiError(f"no gene of the run starts with {prefix!r}",
                           [Problem("--prefix", f"{prefix!r} matches none of {len(available)} genes",
                                    f"did you mean {', '.join(close)}?" if close else
                                    "name families present: " + ", ".join(fams[:20]))])
        chosen.extend(hits)
    if group is not None:
        if grouping is None:
            raise MaiError("a gene group was requested but the run has no grouping")
        members = grouping.members()
        if str(group) not in members:
            raise MaiError(f"group {group!r} not in the run's grouping",
                           [Problem("group", f"{group!r} unknown", "groups: " + ", ".join(list(members)[:20]))])
        chosen.extend(g for g in members[str(group)] if g in known)
    chosen = list(dict.fromkeys(chosen))
    if not chosen:
        raise MaiError("no genes selected", hint="pass --genes G1,G2 or --prefix PREFIX")
    return chosen[:limit] if limit else chosen


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


def _block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return a
    h, w = a.shape[-2] // factor * factor, a.shape[-1] // factor * factor
    a = a[..., :h, :w]
    return a.reshape(a.shape[:-2] + (h // factor, factor, w // factor, factor)).mean(axis=(-3, -1))


def cam_similarity(cams: np.ndarray, genes: Sequence[str] | None = None, factor: int = 4) -> pd.DataFrame:
    """G×G similarity of genes' maps: Pearson correlation per image, averaged over images.

    ``cams`` N×G×H×W (maps are block-averaged by ``factor`` first). Pairs involving a constant map on
    an image skip that image; a pair with no usable image is NaN. The diagonal is 1.
    """
    import pandas as pd

    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim == 3:
        cams = cams[None]
    n, G = cams.shape[:2]
    small = _block_mean(cams, factor).reshape(n, G, -1).astype(np.float64)
    total = np.zeros((G, G))
    count = np.zeros((G, G))
    for i in range(n):
        z = small[i] - small[i].mean(axis=1, keepdims=True)
        norm = np.linalg.norm(z, axis=1)
        ok = norm > 1e-12
        z[ok] /= norm[ok, None]
        c = z @ z.T
        valid = ok[:, None] & ok[None, :]
        total[valid] += c[valid]
        count[valid] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.fill_diagonal(sim, 1.0)
    names = list(genes) if genes is not None else [str(i) for i in range(G)]
    return pd.DataFrame(np.clip(sim, -1, 1), index=names, columns=names)


def prefix_similarity(sim: pd.DataFrame, prefix: Callable[[str], str] = gene_family) -> dict:
    """Mean map similarity of gene pairs sharing a name prefix vs pairs that do not.

    Returns within, between, difference (within − between), pair counts and the prefix groups.
    """
    genes = list(sim.index)
    fam = [prefix(g) for g in genes]
    vals = sim.to_numpy()
    iu = np.triu_indices(len(genes), k=1)
    same = np.array([fam[i] == fam[j] for i, j in zip(*iu)], dtype=bool)
    pair_vals = vals[iu]
    finite = np.isfinite(pair_vals)
    w = pair_vals[same & finite]
    b = pair_vals[~same & finite]
    within = float(w.mean()) if w.size else float("nan")
    between = float(b.mean()) if b.size else float("nan")
    groups: dict[str, list[str]] = {}
    for g, f in zip(genes, fam):
        groups.setdefault(f, []).append(g)
    return {"within": within, "between": between, "difference": within - between,
            "n_within_pairs": int(w.size), "n_between_pairs": int(b.size),
            "groups": {k: v for k, v in groups.items() if len(v) > 1}}


def faithfulness(cams: np.ndarray, masks: np.ndarray, tolerance: int = 8) -> dict:
    """How well maps point at known regions.

    ``cams`` and ``masks`` are N×H×W (or any matching leading shape; masks broadcast over genes when
    given N×H×W for N×G×H×W maps). Per pair:

    - ``energy_ratio`` = (share of the map's total inside the mask) / (mask's share of the area);
      > 1 means the map concentrates on the region;
    - ``inside_outside`` = mean map value inside / mean outside;
    - ``hit`` = the map's maximum lies within ``tolerance`` pixels of the mask (pointing game);
      ``chance`` = fraction of pixels within ``tolerance`` of the mask (hit rate of a random point).

    Pairs with an empty or full mask or an all-zero map are skipped (``n`` used of ``n_pairs``).
    Returns means over pairs (``inside_outside``: median, robust to near-zero outside means) plus
    ``per_pair`` (a DataFrame).
    """
    import pandas as pd
    from scipy import ndimage

    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if masks.shape != cams.shape:
        if cams.ndim == 4 and masks.ndim == 3 and masks.shape[0] == cams.shape[0]:
            masks = np.broadcast_to(masks[:, None], cams.shape)
        else:
            raise ValueError(f"masks {masks.shape} do not match maps {cams.shape}")
    c = cams.reshape((-1,) + cams.shape[-2:])
    m = masks.reshape((-1,) + masks.shape[-2:])
    rows = []
    dist_cache: dict[str, np.ndarray] = {}
    for k in range(c.shape[0]):
        cam, mask = c[k], m[k]
        area = mask.mean()
        total = cam.sum()
        if area == 0 or area == 1 or total <= 0:
            rows.append({"pair": k, "used": False})
            continue
        inside = cam[mask].sum() / total
        mean_in, mean_out = cam[mask].mean(), cam[~mask].mean()
        key = hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()
        dist = dist_cache.get(key)
        if dist is None:
            dist = dist_cache.setdefault(key, ndimage.distance_transform_edt(~mask))
        near = dist <= tolerance
        peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
        rows.append({"pair": k, "used": True, "area": float(area), "energy_inside": float(inside),
                     "energy_ratio": float(inside / area),
                     "inside_outside": float(mean_in / mean_out) if mean_out > 0 else float("inf"),
                     "hit": bool(near[peak]), "chance": float(near.mean())})
    df = pd.DataFrame(rows)
    used = df[df["used"]] if len(df) else df
    if not len(used):
        return {"n": 0, "n_pairs": int(len(df)), "energy_ratio": float("nan"), "energy_ratio_median": float("nan"),
                "inside_outside": float("nan"), "hit_rate": float("nan"), "chance_hit_rate": float("nan"),
                "mask_area": float("nan"), "per_pair": df}
    io_vals = used["inside_outside"].replace(np.inf, np.nan)
    return {"n": int(len(used)), "n_pairs": int(len(df)), "energy_ratio": float(used["energy_ratio"].mean()),
            "energy_ratio_median": float(used["energy_ratio"].median()),
            "inside_outside": float(io_vals.median()),
            "hit_rate": float(used["hit"].mean()), "chance_hit_rate": float(used["chance"].mean()),
            "mask_area": float(used["area"].mean()), "per_pair": df}


def load_masks(data_root, ids: Sequence[str], region: str) -> np.ndarray:
    """Planted region masks of the demo dataset (``masks/<ID>.npz``): bool N×224×224 for ``region``."""
    root = Path(data_root)
    out = []
    for i in ids:
        p = root / "masks" / f"{i}.npz"
        if not p.is_file():
            raise MaiError(f"no region mask for {i!r}", [Problem(str(p), "not found",
                           "faithfulness needs a dataset with known regions (the generated demo)")])
        with np.load(p) as z:
            if region not in z.files:
                raise MaiError(f"mask file {p} has no region {region!r}", hint=f"regions: {', '.join(z.files)}")
            out.append(z[region].astype(bool))
    return np.stack(out)


def gene_modules(data_root) -> dict[str, str | None]:
    """gene → planted module name (None for genes in no module) from a demo dataset's truth.json."""
    p = Path(data_root) / "truth.json"
    if not p.is_file():
        raise MaiError(f"{p} not found", hint="planted modules are known only for the generated demo dataset")
    return dict(json.loads(p.read_text()).get("gene_module", {}))


