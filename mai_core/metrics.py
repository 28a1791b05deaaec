"""Evaluation metrics for expression prediction (arrays are samples × genes).

- gene-wise Pearson: per gene across samples (the contest score); constant genes (in truth or
  prediction) have no defined correlation: they get NaN in the per-gene vector and are excluded from the
  mean, and their count is reported.
- sample-wise Pearson: per sample across genes, on raw values ("raw") or on per-gene standardised
  values ("standardised", which removes the trivial gene-scale signal).
- MSE, and gene subsets: top-K most variable genes, HEST-style top-50.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _check(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"shape mismatch: truth {y.shape} vs prediction {p.shape}")
    if y.ndim != 2:
        raise ValueError(f"expected a samples × genes matrix, got shape {y.shape}")
    return y, p


def _pearson_along(y: np.ndarray, p: np.ndarray, axis: int) -> np.ndarray:
    yc = y - y.mean(axis=axis, keepdims=True)
    pc = p - p.mean(axis=axis, keepdims=True)
    num = (yc * pc).sum(axis=axis)
    den = np.sqrt((yc * yc).sum(axis=axis) * (pc * pc).sum(axis=axis))
    # Constant vectors: relative test so tiny float noise on a constant column still counts as constant.
    scale_y = np.abs(y).max(axis=axis) + _EPS
    scale_p = np.abs(p).max(axis=axis) + _EPS
    const = (np.sqrt((yc * yc).sum(axis=axis)) <= 1e-9 * scale_y) | (np.sqrt((pc * pc).sum(axis=axis)) <= 1e-9 * scale_p)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    r = np.where(const, np.nan, r)
    return np.clip(r, -1.0, 1.0)


def gene_pearson(y_true, y_pred) -> tuple[float, np.ndarray]:
    """Per-gene Pearson across samples. Returns (mean over defined genes, per-gene vector with NaN)."""
    y, p = _check(y_true, y_pred)
    r = _pearson_along(y, p, axis=0)
    mean = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
    return mean, r


def sample_pearson(y_true, y_pred, standardize: bool = False, reference=None) -> tuple[float, np.ndarray]:
    """Per-sample Pearson across genes.

    ``standardize=True`` first z-scores each gene (with mean/std of ``reference`` if given, else of the
    truth) so that the correlation is not dominated by between-gene scale differences.
    """
    y, p = _check(y_true, y_pred)
    if standardize:
        ref = y if reference is None else np.asarray(reference, dtype=np.float64)
        mu = ref.mean(0)
        sd = ref.std(0)
        sd = np.where(sd > _EPS, sd, 1.0)
        y = (y - mu) / sd
        p = (p - mu) / sd
    r = _pearson_along(y, p, axis=1)
    mean = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
    return mean, r


def mse(y_true, y_pred) -> float:
    y, p = _check(y_true, y_pred)
    return float(np.mean((y - p) ** 2))


def top_variable_genes(X, k: int) -> np.ndarray:
    """Indices of the k genes with highest variance in X (ties broken by index; sorted by variance desc)."""
    X = np.asarray(X, dtype=np.float64)
    var = X.var(axis=0)
    k = int(min(max(k, 0), X.shape[1]))
    order = np.lexsort((np.arange(len(var)), -var))
    return order[:k]


def evaluate_predictions(y_true, y_pred, genes: list[str] | None = None, reference_X=None,
                         top_k: tuple[int, ...] = (50,)) -> dict:
    """All headline metrics as a plain dict (JSON-serialisable).

    ``reference_X`` (usually the training matrix) selects the top-K most variable genes, as in the
    HEST benchmark; without it the truth itself is used.
    """
    y, p = _check(y_true, y_pred)
    mean_g, per_gene = gene_pearson(y, p)
    out = {
        "n_samples": int(y.shape[0]),
        "n_genes": int(y.shape[1]),
        "gene_pcc_mean": mean_g,
        "gene_pcc_median": float(np.nanmedian(per_gene)) if np.isfinite(per_gene).any() else float("nan"),
        "n_constant_genes": int(np.isnan(per_gene).sum()),
        "sample_pcc_raw": sample_pearson(y, p)[0],
        "sample_pcc_standardised": sample_pearson(y, p, standardize=True, reference=reference_X)[0],
        "mse": mse(y, p),
    }
    ref = y if reference_X is None else np.asarray(reference_X)
    for k in top_k:
        if k < y.shape[1]:
            idx = top_variable_genes(ref, k)
            vals = per_gene[idx]
            out[f"gene_pcc_top{k}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    if genes is not None:
        out["per_gene_pcc"] = {g: (None if np.isnan(v) else float(v)) for g, v in zip(genes, per_gene)}
    return out
