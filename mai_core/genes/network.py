"""WGCNA-style co-expression network: soft-threshold scale-free fit, topological overlap, modules.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mai_core.metrics import top_variable_genes
from mai_core.errors import MaiError
from mai_core.genes.grouping import Grouping
from mai_core.genes.clusters import _check_genes, _relabel_by_size
from mai_core.genes.corrmatrix import _as_matrix, _finite, _gram, correlation


# --------------------------------------------------------------------------------------------
# WGCNA-style soft-threshold network
# --------------------------------------------------------------------------------------------

def _scale_free_r2(k: np.ndarray, n_bins: int) -> tuple[float, float]:
    """(R^2, slope) of log10 p(k) ~ log10 k over log-spaced connectivity bins."""
    k = k[k > 0]
    if len(k) < 3:
        return float("nan"), float("nan")
    lk = np.log10(k)
    lo, hi = lk.min(), lk.max()
    if hi - lo < 1e-9:
        return float("nan"), float("nan")
    edges = np.linspace(lo, hi, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, lk, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sums = np.bincount(idx, weights=k, minlength=n_bins)
    keep = counts > 0
    if keep.sum() < 3:
        return float("nan"), float("nan")
    width_k = 10 ** edges[1:] - 10 ** edges[:-1]  # bin widths in k units: p(k) is a density in k
    x = np.log10(sums[keep] / counts[keep])
    y = np.log10(counts[keep] / (len(k) * width_k[keep]))
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (resid ** 2).sum() / ss_tot if ss_tot > 0 else float("nan")
    return float(r2), float(slope)


def scale_free_fit(C: np.ndarray, betas=range(1, 21), n_bins: int = 10) -> pd.DataFrame:
    """Scale-free topology fit of the soft-threshold network ``a_ij = |r_ij|^beta`` for each beta.

    Following Zhang & Horvath (2005): connectivity ``k_i = sum_{j != i} a_ij``; log10 k is cut into
    ``n_bins`` equal-width bins, log10 p(k) (p = bin count / (genes x bin width), a density in k) is
    regressed on log10 of the bins' mean k, and the signed R^2 = -sign(slope) * R^2 rewards the
    decreasing power law of scale-free networks. Columns: beta, r2, slope, signed_r2, mean_k,
    median_k, max_k.
    """
    A = np.abs(_finite(np.asarray(C, dtype=np.float32)))
    np.fill_diagonal(A, 0.0)
    betas = sorted({int(b) for b in betas})
    if not betas or betas[0] < 1:
        raise MaiError(f"soft-threshold powers must be integers >= 1, got {betas}")
    rows = []
    P = np.ones_like(A)
    np.fill_diagonal(P, 0.0)
    prev = 0
    for b in betas:
        for _ in range(b - prev):
            P *= A
        prev = b
        k = P.sum(1, dtype=np.float64)
        r2, slope = _scale_free_r2(k, n_bins)
        signed = -math.copysign(1.0, slope) * r2 if np.isfinite(r2) else float("nan")
        rows.append({"beta": b, "r2": r2, "slope": slope, "signed_r2": signed, "mean_k": float(k.mean()),
                     "median_k": float(np.median(k)), "max_k": float(k.max())})
    return pd.DataFrame(rows)


def pick_soft_threshold(fit: pd.DataFrame, r2_min: float = 0.8) -> int:
    """Lowest beta whose signed R^2 reaches ``r2_min``; the beta with the highest signed R^2 otherwise."""
    ok = fit[fit["signed_r2"] >= r2_min]
    if len(ok):
        return int(ok["beta"].iloc[0])
    vals = fit["signed_r2"].fillna(-np.inf).to_numpy()
    return int(fit["beta"].iloc[int(np.argmax(vals))])


def topological_overlap(A: np.ndarray) -> np.ndarray:
    """TOM_ij = (sum_u a_iu a_uj + a_ij) / (min(k_i, k_j) + 1 - a_ij), with a zero-diagonal adjacency.

    The diagonal of the result is 1.
    """
    A = np.array(A, dtype=np.float32)
    np.fill_diagonal(A, 0.0)
    k = A.sum(1, dtype=np.float64).astype(np.float32)
    L = _gram(np.ascontiguousarray(A))  # A symmetric: A.T @ A == A @ A
    L += A
    L /= np.minimum(k[:, None], k[None, :]) + 1.0 - A
    np.fill_diagonal(L, 1.0)
    return L


def tom_modules(X, genes: list[str], beta: int | None = None, top_n: int = 1000, n_modules: int = 8,
                min_size: int = 10, method: str = "pearson") -> Grouping:
    """WGCNA-style co-expression modules.

    For speed (TOM needs a genes x genes matrix product) only the ``top_n`` most variable genes are
    used; every other gene, and genes in modules smaller than ``min_size``, are "unassigned". The
    soft-threshold power is picked by :func:`pick_soft_threshold` when ``beta`` is None. Modules come
    from average linkage on 1 - TOM, cut into at most ``n_modules`` clusters, and are labelled
    "M1", "M2", ... by decreasing size.
    """
    X = _as_matrix(X)
    _check_genes(X, genes)
    idx = np.sort(top_variable_genes(X, top_n))
    C = correlation(X[:, idx], method=method, constant="zero")
    if beta is None:
        beta = pick_soft_threshold(scale_free_fit(C))
    if int(beta) < 1:
        raise MaiError(f"soft-threshold power must be >= 1, got {beta}")
    tom = topological_overlap(np.abs(C) ** int(beta))
    D = 1.0 - tom.astype(np.float64)
    np.fill_diagonal(D, 0.0)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(idx) >= 2:
        Zl = linkage(squareform(np.clip(D, 0, None), checks=False), method="average")
        sub = fcluster(Zl, t=max(1, int(n_modules)), criterion="maxclust")
    else:
        sub = np.ones(len(idx), dtype=int)
    labels = np.full(len(genes), -1)
    labels[idx] = sub
    names = _relabel_by_size(labels, min_size=min_size, prefix="M", start=1)
    return Grouping(list(genes), names, "wgcna",
                    {"beta": int(beta), "top_n": int(top_n), "n_modules": int(n_modules),
                     "min_size": int(min_size), "correlation": method})


