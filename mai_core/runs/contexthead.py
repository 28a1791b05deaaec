"""A context head: expression from a spot's own embedding ⊕ the mean embedding of its neighbouring spots.

After fine-tuning, the run's backbone embeds every training spot (mean over its TTA views); a ridge map
(standardise → PCA → ridge, :mod:`mai_core.models.ridge`) from ``[own, neighbour mean]`` to the
standardised targets is fitted on the training spots, its penalty chosen on the validation spots, and kept
only when it beats the fine-tuned head on those validation spots. Prediction uses it where the input has
spot coordinates; elsewhere the fine-tuned head predicts as before. A spot without neighbours uses its own
embedding as the neighbour mean. The map is stored in original units: ``pred = [e, m] @ weight + bias``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONTEXT_HEAD_FILE = "context_head.npz"


def context_features(emb: np.ndarray, neighbours) -> np.ndarray:
    """``[own, mean of the neighbours]`` (N×2D); spots without neighbours repeat their own embedding."""
    from mai_core.runs.neighbours import neighbour_mean

    emb = np.asarray(emb, dtype=np.float32)
    return np.hstack([emb, neighbour_mean(emb, neighbours)])


def fit_context_head(emb: np.ndarray, neighbours, z: np.ndarray, fit_idx, val_idx, y_mean, y_std,
                     pca: int = 256) -> dict:
    """Ridge from context features to standardised targets ``z`` (rows ``fit_idx``; penalty on ``val_idx``),
    folded into original units. Returns {"weight", "bias", "alpha", "val_pred" (original units)}."""
    from mai_core.models.ridge import fit_ridge

    f = context_features(emb, neighbours)
    r = fit_ridge(f[fit_idx], z[fit_idx], f[val_idx], z[val_idx], pca=pca)
    std = np.asarray(y_std, dtype=np.float32)
    weight = (r.weight * std[None, :]).astype(np.float32)
    bias = (r.bias * std + np.asarray(y_mean, dtype=np.float32)).astype(np.float32)
    return {"weight": weight, "bias": bias, "alpha": r.alpha, "val_pred": f[val_idx] @ weight + bias}


def save_context_head(run_path, weight: np.ndarray, bias: np.ndarray) -> Path:
    from mai_core.io import atomic_path

    path = Path(run_path) / CONTEXT_HEAD_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, weight=weight, bias=bias)
    return path


def load_context_head(run_path) -> tuple[np.ndarray, np.ndarray] | None:
    path = Path(run_path) / CONTEXT_HEAD_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z["weight"], z["bias"]


def apply_context_head(head: tuple[np.ndarray, np.ndarray], emb: np.ndarray, neighbours) -> np.ndarray:
    weight, bias = head
    return (context_features(emb, neighbours) @ weight + bias).astype(np.float32)


def spatial_model(pred, enabled: bool, has_coords: bool):
    """What predicts under the run's spatial context: ``(predictor, head)`` — the backbone's embedding
    predictor and the context head when the run has one, it is enabled and the input has coordinates;
    otherwise ``(pred, None)`` (the fine-tuned head). Finish with :func:`spatial_finish`."""
    head = load_context_head(pred.path) if pred.path is not None and enabled and has_coords else None
    features = pred.feature_predictor() if head is not None else None
    return (features, head) if features is not None else (pred, None)


def spatial_finish(pred, head, values: np.ndarray, coords, enabled: bool = True,
                   what: str = "spots") -> tuple[np.ndarray, str]:
    """Expression from what :func:`spatial_model`'s predictor returned: the context head applied to the
    embeddings, else the fine-tuned head's values smoothed with the run's recorded neighbour weight; and a
    sentence saying what was done. ``coords``: (xy N×2, sections N or None), or None."""
    from mai_core.runs.neighbours import neighbour_matrix, smooth_at

    if head is not None:
        nb = neighbour_matrix(*coords)
        n_with = int(np.count_nonzero(nb.getnnz(axis=1)))
        return apply_context_head(head, values, nb), (f"spatial context: context head (own + neighbour-mean "
                                                      f"embedding), {n_with} of {len(values)} {what} with neighbours")
    if pred.path is not None and (Path(pred.path) / CONTEXT_HEAD_FILE).is_file():
        why = "turned off for this call" if not enabled else "the input has no spot coordinates px/py or array_x/array_y"
        return values, f"spatial context: off ({why}); the fine-tuned head predicted"
    return smooth_at(pred.config, coords, values, enabled)


def spatial_predict(pred, paths, coords, enabled: bool = True, **kwargs) -> tuple[np.ndarray, str]:
    """Expression for image ``paths`` with the run's spatial context: its context head when the run has one
    and ``coords`` (xy N×2, sections N) are given, else the fine-tuned head, smoothed with the run's
    neighbour weight where it records one. ``kwargs`` go to ``predict_paths``. Returns (values, a sentence
    saying what was done)."""
    model, head = spatial_model(pred, enabled, coords is not None)
    return spatial_finish(pred, head, model.predict_paths(paths, **kwargs), coords, enabled)
