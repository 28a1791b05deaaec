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
                     pca: int = 256, refit: bool = True) -> dict:
    """Ridge from context features to standardised targets ``z`` (rows ``fit_idx``; penalty on ``val_idx``),
    folded into original units. Returns {"weight", "bias", "alpha", "val_pred" (original units), "refit"}.

    ``val_pred`` always comes from the map fitted on ``fit_idx`` alone, so it is an honest validation score.
    With ``refit`` the map returned is then fitted again on ``fit_idx`` ∪ ``val_idx`` with the chosen penalty:
    the validation spots have done their job (choosing the penalty and deciding whether the head is kept) and
    add a fifth more spots to learn from (``bench/spatial_context.py`` measures the difference)."""
    from mai_core.models.ridge import fit_ridge

    f = context_features(emb, neighbours)
    r = fit_ridge(f[fit_idx], z[fit_idx], f[val_idx], z[val_idx], pca=pca)
    std = np.asarray(y_std, dtype=np.float32)
    mean = np.asarray(y_mean, dtype=np.float32)

    def original_units(fit) -> tuple[np.ndarray, np.ndarray]:
        return (fit.weight * std[None, :]).astype(np.float32), (fit.bias * std + mean).astype(np.float32)

    weight, bias = original_units(r)
    val_pred = f[val_idx] @ weight + bias
    refit = bool(refit and len(val_idx))
    if refit:
        both = np.concatenate([np.asarray(fit_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)])
        weight, bias = original_units(fit_ridge(f[both], z[both], alphas=(r.alpha,), pca=pca))
    return {"weight": weight, "bias": bias, "alpha": r.alpha, "val_pred": val_pred, "refit": refit}


def save_context_head(run_path, weight: np.ndarray, bias: np.ndarray) -> Path:
    from mai_core.io import atomic_path

    path = Path(run_path) / CONTEXT_HEAD_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, weight=weight, bias=bias)
    return path


def load_context_head(run_path) -> tuple[np.ndarray, np.ndarray] | None:
    """A run's context head (weight, bias), or None. For an ensemble: one head over its members' embeddings
    side by side (:class:`mai_core.models.model.EnsembleFeatures`) when every member has one
    (:func:`ensemble_context_head`), else None."""
    path = Path(run_path) / CONTEXT_HEAD_FILE
    if path.is_file():
        with np.load(path) as z:
            return z["weight"], z["bias"]
    members = ensemble_members(run_path)
    if not members:
        return None
    heads = [load_context_head(m) for m, _ in members]
    if any(h is None for h in heads):
        return None
    return ensemble_context_head(heads, [w for _, w in members])


def ensemble_members(run_path, config: dict | None = None) -> list[tuple[Path, float]]:
    """An ensemble directory's (member path, weight) pairs, relative member paths resolved against it; [] for a
    run that is not an ensemble. ``config``: its config.yaml when already read."""
    from mai_core.runs.rundir import RunDir, read_config

    run = RunDir(run_path)
    if config is None and not run.config_path.is_file():
        return []
    cfg = read_config(run) if config is None else config
    if cfg.get("kind") != "ensemble":
        return []
    out = []
    for m in cfg.get("members") or []:
        mp = Path(m["path"])
        out.append(((run.path / mp).resolve() if not mp.is_absolute() else mp, float(m.get("weight", 1.0))))
    return out


def without_context_head(run_paths) -> list[Path]:
    """The runs among ``run_paths`` that have no context head."""
    return [Path(p) for p in run_paths if not (Path(p) / CONTEXT_HEAD_FILE).is_file()]


def ensemble_context_note(run_path) -> str:
    """A sentence on an ensemble's spatial context: whether spots with coordinates are predicted through its
    members' context heads, or which members have none ("" for a run that is not an ensemble)."""
    members = ensemble_members(run_path)
    if not members:
        return ""
    without = [str(m) for m in without_context_head(m for m, _ in members)]
    if not without:
        return ("Spatial context: every member has a context head; spots with coordinates are predicted through "
                "the members' heads, averaged with the ensemble's weights.")
    return (f"Spatial context: off (no context head in {', '.join(without)}); the members' fine-tuned heads "
            "predict.")


def ensemble_context_head(heads, weights) -> tuple[np.ndarray, np.ndarray]:
    """The weighted mean of members' context heads as one linear map on ``context_features`` of the members'
    embeddings side by side: features ``[e_1 … e_k, m_1 … m_k]`` (own embeddings, then neighbour means), so
    member i's own block and neighbour block are placed at its offsets and scaled by its weight."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    dims = [h[0].shape[0] // 2 for h in heads]
    total = sum(dims)
    genes = heads[0][0].shape[1]
    weight = np.zeros((2 * total, genes), dtype=np.float32)
    bias = np.zeros(genes, dtype=np.float64)
    at = 0
    for (hw, hb), d, wi in zip(heads, dims, w):
        weight[at:at + d] = wi * hw[:d]
        weight[total + at:total + at + d] = wi * hw[d:]
        bias += wi * hb
        at += d
    return weight, bias.astype(np.float32)


def apply_context_head(head: tuple[np.ndarray, np.ndarray], emb: np.ndarray, neighbours) -> np.ndarray:
    weight, bias = head
    return (context_features(emb, neighbours) @ weight + bias).astype(np.float32)


def spatial_model(pred, enabled: bool, has_coords: bool):
    """What predicts under the run's spatial context: ``(predictor, head)`` — the backbone's embedding
    predictor and the context head when the run has one, it is enabled and the input has coordinates;
    otherwise ``(pred, None)`` (the fine-tuned head). Finish with :func:`spatial_finish`."""
    head = load_context_head(pred.path) if pred.path is not None and enabled and has_coords else None
    features = pred.feature_predictor() if head is not None else None
    if features is not None and head[0].shape[0] != 2 * len(features.genes):
        from mai_core.errors import MaiError

        raise MaiError(f"the context head of {pred.path} does not fit its model ({head[0].shape[0]} inputs, the "
                       f"model's embeddings give {2 * len(features.genes)})",
                       hint="train the run again, or predict with --no-spatial-context")
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
        if not enabled:
            why = "turned off for this call"
        elif coords is None:
            why = "the input has no spot coordinates px/py or array_x/array_y"
        else:  # spatial_model found no embedding predictor for this model
            why = "this model gives no embeddings for its context head"
        return values, f"spatial context: off ({why}); the fine-tuned head predicted"
    members = ensemble_members(pred.path) if pred.path is not None else []
    if members:
        without = [m.name for m in without_context_head(m for m, _ in members)]
        if not enabled:
            why = "turned off for this call"
        elif coords is None:
            why = "the input has no spot coordinates"
        elif len(without) == 1:
            why = f"member {without[0]} has no context head"
        else:
            why = f"members {', '.join(without)} have no context head"
        return values, f"spatial context: off ({why}); the members' fine-tuned heads predicted"
    return smooth_at(pred.config, coords, values, enabled)


def spatial_predict(pred, paths, coords, enabled: bool = True, **kwargs) -> tuple[np.ndarray, str]:
    """Expression for image ``paths`` with the run's spatial context: its context head when the run has one
    and ``coords`` (xy N×2, sections N) are given, else the fine-tuned head, smoothed with the run's
    neighbour weight where it records one. ``kwargs`` go to ``predict_paths``. Returns (values, a sentence
    saying what was done)."""
    model, head = spatial_model(pred, enabled, coords is not None)
    return spatial_finish(pred, head, model.predict_paths(paths, **kwargs), coords, enabled)
