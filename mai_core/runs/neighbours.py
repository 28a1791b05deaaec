"""Spatial context for predictions: the neighbours of spots (or slide tiles) on their grid, and smoothing
each prediction towards the mean prediction of its neighbours.

    ŷ'ᵢ = (1 − w)·ŷᵢ + w·mean{ŷⱼ : j a neighbour of i in the same section}

Neighbours are the spots of the same section within ``RADIUS_FACTOR`` (1.6) × the grid pitch (the median distance
to the nearest spot): the 8 surrounding spots of a square grid (ST arrays, slide tiles), the 6 of a
hexagonal one (Visium). A spot without neighbours keeps its prediction. The weight ``w`` is chosen at
training time on the run's validation spots (:func:`choose_weight`) and stored in ``config.yaml`` under
``spatial``; prediction applies it wherever the input carries coordinates.
"""

from __future__ import annotations

import numpy as np

RADIUS_FACTOR = 1.6
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# pixel centres first (every importer and the slide grid write them), array indices as a fallback
COORD_COLUMNS = (("px", "py"), ("array_x", "array_y"))
SECTION_COLUMN = "section"


def spot_coordinates(table) -> tuple[np.ndarray, np.ndarray] | None:
    """(xy float N×2, section labels N) from a table with ``px, py`` (or ``array_x, array_y``) columns and an
    optional ``section`` column; None when the table has no complete coordinates."""
    cols = getattr(table, "columns", ())
    for cx, cy in COORD_COLUMNS:
        if cx in cols and cy in cols:
            try:
                xy = np.column_stack([np.asarray(table[cx], dtype=float), np.asarray(table[cy], dtype=float)])
            except (TypeError, ValueError):
                continue
            if len(xy) and np.isfinite(xy).all():
                sections = (np.asarray(table[SECTION_COLUMN]).astype(str) if SECTION_COLUMN in cols
                            else np.zeros(len(xy), dtype=str))
                return xy, sections
    return None


def grid_pitch(xy: np.ndarray) -> float:
    """Median distance from a spot to its nearest other spot (nan for fewer than two spots)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)
    if len(xy) < 2:
        return float("nan")
    d, _ = cKDTree(xy).query(xy, k=2)
    d = d[:, 1]
    d = d[d > 0]
    return float(np.median(d)) if len(d) else float("nan")


def section_pitches(xy: np.ndarray, sections=None) -> dict[str, float]:
    """Grid pitch of every section (computed on all of its spots)."""
    sections = _sections(sections, len(xy))
    return {s: grid_pitch(xy[sections == s]) for s in np.unique(sections)}


def neighbour_matrix(xy: np.ndarray, sections=None, pitches: dict[str, float] | None = None,
                     factor: float = RADIUS_FACTOR):
    """Row-normalised sparse N×N matrix A: ``A @ pred`` is the mean prediction of each spot's neighbours
    (rows of spots without neighbours are empty). Only spots of the same section are neighbours.
    ``pitches``: the grid pitch per section when ``xy`` is a subset of the spots (e.g. validation spots),
    so that the radius is that of the full grid."""
    from scipy import sparse
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)
    n = len(xy)
    sections = _sections(sections, n)
    rows, cols = [], []
    for s in np.unique(sections):
        idx = np.flatnonzero(sections == s)
        pitch = (pitches or {}).get(s, np.nan)
        if not np.isfinite(pitch):
            pitch = grid_pitch(xy[idx])
        if len(idx) < 2 or not np.isfinite(pitch):
            continue
        tree = cKDTree(xy[idx])
        for i, near in enumerate(tree.query_ball_point(xy[idx], r=factor * pitch)):
            near = [j for j in near if j != i]
            rows.extend([idx[i]] * len(near))
            cols.extend(idx[near])
    a = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    return sparse.diags(inv) @ a


def neighbour_mean(values: np.ndarray, neighbours) -> np.ndarray:
    """Each row's mean over its neighbours (``neighbour_matrix``); rows without neighbours keep their own."""
    values = np.asarray(values, dtype=np.float32)
    has = np.asarray(neighbours.getnnz(axis=1) > 0)
    return np.where(has[:, None], np.asarray(neighbours @ values, dtype=np.float32), values)


def smooth(pred: np.ndarray, neighbours, weight: float) -> np.ndarray:
    """ŷ' = (1 − w)·ŷ + w·(mean of the neighbours' ŷ); spots without neighbours keep ŷ."""
    pred = np.asarray(pred, dtype=np.float32)
    w = float(weight)
    if w <= 0 or neighbours is None or neighbours.nnz == 0:
        return pred
    return ((1 - w) * pred + w * neighbour_mean(pred, neighbours)).astype(np.float32)


def choose_weight(pred: np.ndarray, true: np.ndarray, neighbours, weights=WEIGHTS) -> dict:
    """The weight with the highest mean gene-wise Pearson of the smoothed predictions against ``true``
    (ties go to the smaller weight). Returns {"weight", "pcc": {w: pcc}, "n_with_neighbours"}."""
    from mai_core.metrics import gene_pearson

    scores = {}
    for w in weights:
        mean_pcc, _ = gene_pearson(np.asarray(true, dtype=np.float32), smooth(pred, neighbours, w))
        scores[float(w)] = float(mean_pcc)
    best = max(scores, key=lambda w: (round(scores[w], 6), -w))
    n_with = int(np.count_nonzero(neighbours.getnnz(axis=1))) if neighbours is not None else 0
    return {"weight": best if n_with else 0.0, "pcc": scores, "n_with_neighbours": n_with}


def smoothing_weight(config: dict) -> float:
    """The neighbour-smoothing weight a run's config.yaml records (0 when none)."""
    spatial = (config or {}).get("spatial") or {}
    try:
        return max(0.0, min(1.0, float(spatial.get("weight") or 0.0)))
    except (TypeError, ValueError):
        return 0.0


def _sections(sections, n: int) -> np.ndarray:
    return np.zeros(n, dtype=str) if sections is None else np.asarray(sections).astype(str)


MIN_VALIDATION_SPOTS = 20  # fewer validation spots with validation neighbours: too noisy to choose a weight


def smoothing_facts(setting: dict | None, table, val_idx, pred: np.ndarray, true: np.ndarray) -> dict:
    """What a run records under ``spatial`` once its validation predictions exist.

    ``setting["smoothing"]``: "auto" (choose the weight on the validation spots), "off", or a fixed weight.
    The weight is chosen on the validation spots alone, each smoothed with its validation neighbours
    (their predictions are as unseen as its own; training spots' predictions would be over-fitted), with
    the radius of the full grid. ``table``: the training table (coordinates), ``val_idx`` its validation rows,
    ``pred``/``true`` the validation predictions and truth. Always returns ``weight`` (0 = off) and a
    ``note`` for the log."""
    request = (setting or {}).get("smoothing", "auto")
    if request is False or str(request).lower() == "off":
        return {"smoothing": "off", "weight": 0.0, "note": "neighbour smoothing: off (turned off for this run)"}
    coords = spot_coordinates(table)
    if coords is None:
        return {"smoothing": request, "weight": 0.0,
                "note": "neighbour smoothing: off (the dataset has no spot coordinates px/py or array_x/array_y)"}
    xy, sections = coords
    val_idx = np.asarray(val_idx, dtype=int)
    pitches = section_pitches(xy, sections)
    nb = neighbour_matrix(xy[val_idx], sections[val_idx], pitches=pitches)
    chosen = choose_weight(pred, true, nb)
    facts = {"smoothing": request, "radius_factor": RADIUS_FACTOR, "val_spots_with_neighbours": chosen["n_with_neighbours"],
             "val_gene_pcc": {f"{w:.1f}": round(v, 5) for w, v in chosen["pcc"].items()}}
    if str(request).lower() != "auto":
        w = max(0.0, min(1.0, float(request)))
        return {**facts, "weight": w, "chosen_on": "fixed", "note": f"neighbour smoothing: weight {w:.2f} (fixed)"}
    if chosen["n_with_neighbours"] < MIN_VALIDATION_SPOTS:
        return {**facts, "weight": 0.0, "chosen_on": "validation",
                "note": f"neighbour smoothing: off (only {chosen['n_with_neighbours']} validation spots have "
                        f"validation neighbours; {MIN_VALIDATION_SPOTS} needed to choose a weight)"}
    w = chosen["weight"]
    gain = chosen["pcc"][w] - chosen["pcc"][0.0]
    return {**facts, "weight": w, "chosen_on": "validation",
            "note": f"neighbour smoothing: weight {w:.1f} chosen on {chosen['n_with_neighbours']} validation spots "
                    f"(validation gene PCC {chosen['pcc'][0.0]:.4f} -> {chosen['pcc'][w]:.4f}, {gain:+.4f})"}


def smooth_at(config: dict, coords: tuple[np.ndarray, np.ndarray] | None, pred: np.ndarray,
              enabled: bool = True) -> tuple[np.ndarray, str]:
    """Predictions smoothed with the run's recorded weight at coordinates (xy N×2, sections N or None; e.g. the
    tile centres of a slide: one section, neighbours on the tile grid), and a sentence saying what was done."""
    w = smoothing_weight(config)
    if not enabled:
        return pred, "neighbour smoothing: off (turned off for this call)"
    if w <= 0:
        why = "off for this run" if (config or {}).get("spatial") else "the run records none"
        return pred, f"neighbour smoothing: {why}"
    if coords is None:
        return pred, "neighbour smoothing: off (the input has no spot coordinates px/py or array_x/array_y)"
    nb = neighbour_matrix(*coords)
    n_with = int(np.count_nonzero(nb.getnnz(axis=1)))
    return smooth(pred, nb, w), f"neighbour smoothing: weight {w:.2f} over {n_with} of {len(pred)} spots with neighbours"
