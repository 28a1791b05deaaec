"""Gene structure: correlation, co-expression networks, gene clusters and gene embeddings.

Everything works on the training expression matrix ``X`` (samples x genes, float32) and is usable
without Streamlit. Every clustering returns a :class:`mai_core.grouping.Grouping`.

Conventions
-----------
* Correlation is computed with float32 BLAS: columns are standardised (mean and standard deviation
  accumulated in float64) and the Gram matrix ``Z.T @ Z / n`` is formed with a symmetric rank-k
  update. Spearman correlation ranks every column (average ranks for ties) and then does the same.
* Constant genes (standard deviation zero, or below 1e-6 of the mean's magnitude, i.e. below float32
  resolution) have no defined correlation. ``correlation(..., constant="nan")`` (the default, like
  ``np.corrcoef``) gives them NaN rows and columns; ``constant="zero"`` gives them 0 everywhere except
  a diagonal 1, which is what orderings, histograms and networks use (a constant gene is unrelated to
  every other gene).
* k-means treats genes as points: each gene's expression profile across samples is standardised, so
  the squared Euclidean distance between two profiles is ``2 n (1 - r)`` - k-means on these profiles
  groups genes by correlation. Profiles are reduced by PCA (randomised SVD, seeded) to ``n_pcs``
  components before clustering; with 50 components this keeps nearly all of the between-gene
  structure and makes k-means cost independent of the number of samples.
* Group labels from k-means are renumbered by decreasing size ("0" is the largest cluster, ties
  broken by the first member gene's column), so the same data and seed give identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem
from mai_core.grouping import Grouping

UNASSIGNED = "unassigned"
OTHER = "other"
# Leading letters followed by a digit, a dot or a hyphen: AL645608.7 -> AL, LINC01770 -> LINC,
# MT-CO1 -> MT, RPL13 -> RPL, RPS6 -> RPS. Names without such a pattern (GAPDH) have no prefix.
DEFAULT_PREFIX_PATTERN = r"^([A-Za-z]+)[0-9.\-]"
SCALE_GROUP_NAMES = ("very low", "low", "mid", "high")


# --------------------------------------------------------------------------------------------
# correlation
# --------------------------------------------------------------------------------------------

def _as_matrix(X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise MaiError(f"expression must be a 2-D samples x genes matrix, got shape {X.shape}")
    if X.shape[0] < 2:
        raise MaiError(f"correlation needs at least 2 samples, got {X.shape[0]}",
                       hint="add more training rows to the dataset")
    if not np.isfinite(X).all():
        raise MaiError("expression matrix contains NaN or infinite values",
                       hint="load data through mai_core.dataset.load_dataset, which rejects them")
    return X


def constant_genes(X) -> np.ndarray:
    """Boolean mask of genes whose values do not vary (see the module notes)."""
    X = np.asarray(X)
    mean = X.mean(0, dtype=np.float64)
    std = X.std(0, dtype=np.float64)
    return (std == 0) | (std <= 1e-6 * np.abs(mean))


def standardize(X) -> tuple[np.ndarray, np.ndarray]:
    """Columns scaled to mean 0 and unit norm / sqrt(n) (float32), and the constant-gene mask.

    Returns ``(Z, constant)`` with ``Z.T @ Z == correlation`` for varying genes; constant genes'
    columns are all zero.
    """
    X = _as_matrix(X)
    n = X.shape[0]
    mean = X.mean(0, dtype=np.float64)
    Z = np.asarray(X, dtype=np.float32) - mean.astype(np.float32)
    ss = np.square(Z).sum(0, dtype=np.float64)
    std = np.sqrt(ss / n)
    const = (std == 0) | (std <= 1e-6 * np.abs(mean))
    scale = np.where(const, 0.0, 1.0 / np.sqrt(np.where(ss > 0, ss, 1.0)))
    Z *= scale.astype(np.float32)
    return Z, const


def rank_columns(X) -> np.ndarray:
    """Average ranks (1..n) of every column, ties sharing their mean rank, as float32."""
    from scipy.stats import rankdata

    return rankdata(_as_matrix(X), axis=0, method="average").astype(np.float32)


def _gram(Z: np.ndarray) -> np.ndarray:
    """Symmetric ``Z.T @ Z`` via a BLAS rank-k update (half the work of a general product)."""
    from scipy.linalg.blas import ssyrk

    g = Z.shape[1]
    if g == 0:
        return np.zeros((0, 0), np.float32)
    # Z is C-ordered n x g, so Z.T is a Fortran-ordered g x n view: ssyrk(A) = A @ A.T without a copy.
    C = ssyrk(1.0, np.asarray(Z.T, order="F"), trans=0, lower=0)  # upper triangle filled, F-ordered
    C = np.asarray(C).T  # C-ordered, lower triangle filled
    step = 512
    for r0 in range(0, g, step):  # mirror lower -> upper block-wise
        r1 = min(g, r0 + step)
        C[r0:r1, r1:] = C[r1:, r0:r1].T
        blk = C[r0:r1, r0:r1]
        C[r0:r1, r0:r1] = np.tril(blk) + np.tril(blk, -1).T
    return C


def correlation(X, method: str = "pearson", constant: str = "nan") -> np.ndarray:
    """Gene-gene correlation matrix (genes x genes, float32).

    ``method``: "pearson" or "spearman". ``constant``: "nan" (constant genes get NaN rows/columns)
    or "zero" (0 off the diagonal, 1 on it).
    """
    method = str(method).lower()
    if method not in ("pearson", "spearman"):
        raise MaiError(f"unknown correlation method '{method}'", hint="use 'pearson' or 'spearman'")
    if constant not in ("nan", "zero"):
        raise MaiError(f"unknown constant-gene handling '{constant}'", hint="use 'nan' or 'zero'")
    X = _as_matrix(X)
    if method == "spearman":
        X = rank_columns(X)
    Z, const = standardize(X)
    C = _gram(Z)
    np.clip(C, -1.0, 1.0, out=C)
    np.fill_diagonal(C, 1.0)
    if const.any():
        fill = np.nan if constant == "nan" else 0.0
        C[const, :] = fill
        C[:, const] = fill
        if constant == "zero":
            C[const, const] = 1.0
    return C


def _finite(C: np.ndarray) -> np.ndarray:
    if np.isnan(C).any():
        C = np.nan_to_num(C, nan=0.0)
        np.fill_diagonal(C, 1.0)
    return C


def correlation_linkage(C: np.ndarray) -> np.ndarray:
    """Average-linkage hierarchical clustering of genes on the distance 1 - r (scipy linkage matrix)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    C = _finite(np.asarray(C))
    g = C.shape[0]
    if g < 2:
        return np.zeros((0, 4))
    D = 1.0 - C.astype(np.float64)
    np.fill_diagonal(D, 0.0)
    np.clip(D, 0.0, 2.0, out=D)
    return linkage(squareform(D, checks=False), method="average")


def linkage_order(Z: np.ndarray, n: int) -> np.ndarray:
    """Leaf order of a linkage matrix (identity for fewer than 2 genes)."""
    from scipy.cluster.hierarchy import leaves_list

    return np.arange(n) if n < 2 else leaves_list(Z)


def cluster_order(C: np.ndarray) -> np.ndarray:
    """Gene order that puts correlated genes next to each other (average linkage on 1 - r)."""
    return linkage_order(correlation_linkage(C), np.asarray(C).shape[0])


def cut_linkage(Z: np.ndarray, n_clusters: int, n: int) -> np.ndarray:
    """Cluster label (1..n_clusters) per gene from cutting the tree into at most ``n_clusters``."""
    from scipy.cluster.hierarchy import fcluster

    if n < 2:
        return np.ones(n, dtype=int)
    return fcluster(Z, t=max(1, int(n_clusters)), criterion="maxclust")


def block_average(M: np.ndarray, max_cells: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Average a square matrix over contiguous blocks so it has at most ``max_cells`` per side.

    Returns ``(B, starts)``: the block means (NaNs ignored) and the start index of every block
    (block i spans ``starts[i]:starts[i+1]``). Blocks differ in size by at most one.
    """
    M = np.asarray(M, dtype=np.float32)
    g = M.shape[0]
    m = max(1, min(g, int(max_cells)))
    sizes = np.full(m, g // m) + (np.arange(m) < g % m)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    valid = np.isfinite(M)
    vals = np.where(valid, M, 0.0).astype(np.float64)
    s = np.add.reduceat(np.add.reduceat(vals, starts, axis=0), starts, axis=1)
    c = np.add.reduceat(np.add.reduceat(valid.astype(np.float64), starts, axis=0), starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        B = np.where(c > 0, s / np.maximum(c, 1), np.nan).astype(np.float32)
    return B, starts


def upper_triangle_histogram(C: np.ndarray, bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the off-diagonal (upper-triangle) correlations on [-1, 1]; NaNs are skipped."""
    C = np.asarray(C)
    g = C.shape[0]
    edges = np.linspace(-1.0, 1.0, int(bins) + 1)
    counts = np.zeros(int(bins), dtype=np.int64)
    cols = np.arange(g)
    for r0 in range(0, g, 256):
        r1 = min(g, r0 + 256)
        block = C[r0:r1]
        vals = block[cols[None, :] > np.arange(r0, r1)[:, None]]
        vals = vals[np.isfinite(vals)]
        counts += np.histogram(vals, bins=edges)[0]
    return counts, edges


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


def top_variable(X, n: int) -> np.ndarray:
    """Column indices of the ``n`` most variable genes, most variable first (ties by column)."""
    var = np.asarray(X).var(0, dtype=np.float64)
    order = np.lexsort((np.arange(len(var)), -var))
    return order[: max(0, min(int(n), len(var)))]


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
    idx = np.sort(top_variable(X, top_n))
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


# --------------------------------------------------------------------------------------------
# distribution summaries
# --------------------------------------------------------------------------------------------

def scale_groups(mean, edges=None) -> np.ndarray:
    """Scale group per gene from log10(mean): "very low" / "low" / "mid" / "high".

    ``edges`` (three increasing log10-mean thresholds) sets absolute bins; by default the observed
    range of log10 of the positive means is split into four equal-width bins. Genes with mean <= 0
    are "very low".
    """
    mean = np.asarray(mean, dtype=np.float64)
    pos = mean > 0
    out = np.full(len(mean), SCALE_GROUP_NAMES[0], dtype=object)
    if not pos.any():
        return out
    lm = np.log10(mean[pos])
    if edges is None:
        lo, hi = lm.min(), lm.max()
        edges = np.linspace(lo, hi, 5)[1:-1] if hi > lo else np.array([lo - 3, lo - 2, lo - 1])
    edges = np.asarray(edges, dtype=np.float64)
    if edges.shape != (3,) or np.any(np.diff(edges) <= 0):
        raise MaiError(f"scale-group edges must be three increasing log10 values, got {edges.tolist()}")
    out[pos] = np.asarray(SCALE_GROUP_NAMES, dtype=object)[np.searchsorted(edges, lm, side="right")]
    return out


def gene_summary(X, genes: list[str], edges=None) -> pd.DataFrame:
    """Per-gene mean, std, coefficient of variation (std/|mean|, NaN for mean 0), fraction of zeros,
    log10 mean and scale group."""
    X = np.asarray(X)
    _check_genes(X, genes)
    mean = X.mean(0, dtype=np.float64)
    std = X.std(0, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(mean != 0, std / np.abs(mean), np.nan)
        lmean = np.where(mean > 0, np.log10(np.where(mean > 0, mean, 1.0)), np.nan)
    return pd.DataFrame({"gene": list(genes), "mean": mean, "std": std, "cv": cv,
                         "zero_fraction": (X == 0).mean(0), "log10_mean": lmean,
                         "scale_group": scale_groups(mean, edges)})


# --------------------------------------------------------------------------------------------
# clustering
# --------------------------------------------------------------------------------------------

def _check_genes(X: np.ndarray, genes) -> None:
    if len(genes) != X.shape[1]:
        raise MaiError(f"{len(genes)} gene names for {X.shape[1]} expression columns")


def _relabel_by_size(labels: np.ndarray, min_size: int = 1, prefix: str = "", start: int = 0,
                     unassigned: str = UNASSIGNED) -> list[str]:
    """Integer labels -> strings numbered by decreasing size (ties: first member first).

    Negative labels and clusters smaller than ``min_size`` become ``unassigned``.
    """
    labels = np.asarray(labels)
    uniq, first, counts = np.unique(labels, return_index=True, return_counts=True)
    keep = (uniq >= 0) & (counts >= max(1, int(min_size)))
    order = sorted(np.flatnonzero(keep), key=lambda i: (-counts[i], first[i]))
    names = {uniq[i]: f"{prefix}{start + r}" for r, i in enumerate(order)}
    return [names.get(v, unassigned) for v in labels.tolist()]


@dataclass
class GeneProfiles:
    """Standardised gene expression profiles reduced by PCA (genes x n_components)."""

    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    params: dict = field(default_factory=dict)


def gene_profiles(X, n_pcs: int = 50, seed: int = 0) -> GeneProfiles:
    """Genes as points: standardised profiles (see module notes) projected on ``n_pcs`` components.

    Constant genes sit at the origin. Uses seeded randomised SVD, so results are deterministic.
    """
    from sklearn.decomposition import PCA

    Z, _ = standardize(X)
    P = np.ascontiguousarray(Z.T)  # genes x samples, each row has unit norm (or is zero)
    n_comp = max(1, min(int(n_pcs), P.shape[0] - 1, P.shape[1]))
    if P.shape[0] < 3:
        return GeneProfiles(P[:, :n_comp].astype(np.float32), np.ones(n_comp), {"n_pcs": n_comp, "seed": seed})
    solver = "randomized" if n_comp < 0.8 * min(P.shape) else "full"
    # three power iterations resolve the leading components well enough for clustering, at half the
    # cost of sklearn's default
    pca = PCA(n_components=n_comp, svd_solver=solver, random_state=int(seed),
              **({"iterated_power": 3} if solver == "randomized" else {}))
    coords = pca.fit_transform(P).astype(np.float32)
    return GeneProfiles(coords, pca.explained_variance_ratio_, {"n_pcs": n_comp, "seed": int(seed)})


def check_k(k, n_genes: int) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise MaiError(f"number of clusters must be an integer, got {k!r}") from None
    if k < 2 or k > n_genes:
        raise MaiError(f"number of clusters k={k} is out of range",
                       [Problem("k", f"must be between 2 and the number of genes ({n_genes})",
                                "choose a smaller k" if k > n_genes else "use k >= 2")])
    return k


def kmeans_labels(profiles: GeneProfiles, k: int, seed: int = 0, n_init: int = 4) -> tuple[np.ndarray, float]:
    """k-means (k-means++ init, ``n_init`` seeded restarts) on gene profiles: (labels, inertia)."""
    from sklearn.cluster import KMeans

    k = check_k(k, profiles.coords.shape[0])
    km = KMeans(n_clusters=k, n_init=int(n_init), random_state=int(seed), max_iter=300)
    labels = km.fit_predict(profiles.coords)
    return labels, float(km.inertia_)


def kmeans_genes(X, genes: list[str], k: int = 5, seed: int = 0, n_pcs: int = 50, n_init: int = 4,
                 profiles: GeneProfiles | None = None) -> Grouping:
    """Cluster genes by k-means on their standardised expression profiles (module notes).

    Pass precomputed ``profiles`` (from :func:`gene_profiles`) to try several k cheaply.
    """
    if profiles is None:
        X = _as_matrix(X)
        _check_genes(X, genes)
        profiles = gene_profiles(X, n_pcs=n_pcs, seed=seed)
    elif len(genes) != profiles.coords.shape[0]:
        raise MaiError(f"{len(genes)} gene names for {profiles.coords.shape[0]} gene profiles")
    labels, inertia = kmeans_labels(profiles, k, seed=seed, n_init=n_init)
    return Grouping(list(genes), _relabel_by_size(labels), "kmeans",
                    {"k": int(k), "seed": int(seed), "n_pcs": int(profiles.params.get("n_pcs", n_pcs)),
                     "n_init": int(n_init), "inertia": round(inertia, 6)})


def kmeans_scan(profiles: GeneProfiles, ks=range(2, 21), seed: int = 0, n_init: int = 2,
                silhouette_sample: int = 2000, progress: bool = False) -> pd.DataFrame:
    """Inertia and silhouette (Euclidean, on the profiles) for each k, to guide the choice of k.

    The silhouette uses a seeded subsample of ``silhouette_sample`` genes when there are more genes.
    Columns: k, inertia, silhouette.
    """
    from sklearn.metrics import silhouette_score

    n = profiles.coords.shape[0]
    ks = [int(k) for k in ks if 2 <= int(k) <= n - 1]
    it = ks
    if progress:
        from tqdm import tqdm

        it = tqdm(ks, desc="k-means scan", unit="k", leave=False)
    rows = []
    for k in it:
        labels, inertia = kmeans_labels(profiles, k, seed=seed, n_init=n_init)
        if len(np.unique(labels)) > 1:
            sample = min(n, int(silhouette_sample))
            sil = float(silhouette_score(profiles.coords, labels,
                                         sample_size=sample if sample < n else None, random_state=int(seed)))
        else:
            sil = float("nan")
        rows.append({"k": k, "inertia": inertia, "silhouette": sil})
    return pd.DataFrame(rows, columns=["k", "inertia", "silhouette"])


def gene_prefix(name: str, pattern: str = DEFAULT_PREFIX_PATTERN) -> str | None:
    """The prefix captured by the first group of ``pattern`` (None when the name does not match)."""
    m = re.match(pattern, str(name))
    return m.group(1) if m and m.groups() and m.group(1) else None


def _compile_prefix(pattern: str) -> re.Pattern:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise MaiError(f"prefix pattern {pattern!r} is not a valid regular expression ({exc})") from None
    if rx.groups < 1:
        raise MaiError(f"prefix pattern {pattern!r} has no capture group",
                       hint="wrap the prefix part in parentheses, e.g. ^([A-Za-z]+)[0-9.-]")
    return rx


def prefix_groups(genes: list[str], pattern: str = DEFAULT_PREFIX_PATTERN, min_size: int = 5) -> Grouping:
    """Group genes by name prefix (default: leading letters before the first digit/dot/hyphen).

    Genes without a prefix, and prefixes shared by fewer than ``min_size`` genes, go to "other".
    """
    rx = _compile_prefix(pattern)
    pref = []
    for g in genes:
        m = rx.match(str(g))
        pref.append(m.group(1) if m and m.group(1) else None)
    counts = pd.Series([p for p in pref if p is not None], dtype=object).value_counts()
    big = {p for p, c in counts.items() if c >= max(1, int(min_size))}
    groups = [p if p in big else OTHER for p in pref]
    return Grouping(list(genes), groups, "prefix", {"pattern": pattern, "min_size": int(min_size)})


def parse_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a GMT gene-set file: one set per line, ``name <tab> description <tab> gene <tab> gene ...``.

    Blank lines are skipped, empty gene fields (trailing tabs) ignored and repeated genes within a set
    kept once. Raises MaiError listing every malformed line (no tab-separated genes, empty or
    duplicate set name) and when the file is missing, unreadable or holds no set.
    """
    path = Path(path)
    if not path.is_file():
        raise MaiError(f"gene-set file {path} not found", hint="pass a GMT file (e.g. MSigDB's h.all.*.gmt)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MaiError(f"gene-set file {path} is not UTF-8 text ({exc})",
                       hint="a GMT file is plain text: set name, description, genes, tab-separated") from None
    return parse_gmt_text(text, source=str(path))


def parse_gmt_text(text: str, source: str = "GMT") -> dict[str, list[str]]:
    """Parse GMT content (see :func:`parse_gmt`); ``source`` names it in error messages."""
    sets: dict[str, list[str]] = {}
    problems: list[Problem] = []
    for no, line in enumerate(str(text).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        where = f"{source} line {no}"
        name = fields[0].strip()
        genes = [g.strip() for g in fields[2:] if g.strip()]
        if len(fields) < 3:
            problems.append(Problem(where, f"has {len(fields)} tab-separated field(s), expected at least 3",
                                    "write: set name <tab> description <tab> gene <tab> gene ..."))
            continue
        if not name:
            problems.append(Problem(where, "empty gene-set name", "put the set name in the first field"))
            continue
        if not genes:
            problems.append(Problem(where, f"gene set '{name}' lists no genes", "add genes after the description"))
            continue
        if name in sets:
            problems.append(Problem(where, f"gene set '{name}' defined twice", "give every set a unique name"))
            continue
        sets[name] = list(dict.fromkeys(genes))
    if problems:
        raise MaiError(f"gene-set file {source} has {len(problems)} malformed line(s)", problems)
    if not sets:
        raise MaiError(f"gene-set file {source} contains no gene sets",
                       hint="a GMT file has one line per set: name, description, genes, tab-separated")
    return sets


def geneset_groups(genes: list[str], sets: dict[str, list[str]], min_size: int = 1,
                   source: str = "") -> Grouping:
    """Group genes by gene-set membership.

    A gene in several sets goes to the set with the fewest genes present in the data (the most
    specific one); ties go to the alphabetically first set name. Genes in no set, and sets that end up
    with fewer than ``min_size`` genes, are "unassigned". Raises MaiError when no gene is in any set.
    """
    present = set(genes)
    size = {name: len(present.intersection(members)) for name, members in sets.items()}
    rank = {name: (size[name], name) for name in sets}
    best: dict[str, str] = {}
    for name, members in sets.items():
        for g in members:
            if g in present and (g not in best or rank[name] < rank[best[g]]):
                best[g] = name
    if not best:
        example = next(iter(sets.values()))[:3]
        raise MaiError(f"none of the {len(genes)} genes appear in the {len(sets)} gene sets",
                       hint=f"the set file uses names like {example} and the data names like "
                            f"{list(genes)[:3]}: check species and identifier type")
    groups = [best.get(g, UNASSIGNED) for g in genes]
    counts = pd.Series(groups).value_counts()
    small = {gname for gname, c in counts.items() if c < max(1, int(min_size)) and gname != UNASSIGNED}
    groups = [UNASSIGNED if gr in small else gr for gr in groups]
    params = {"min_size": int(min_size), "n_sets": len(sets), "rule": "smallest set, ties by name"}
    if source:
        params["gmt"] = str(source)
    return Grouping(list(genes), groups, "geneset", params)


# --------------------------------------------------------------------------------------------
# comparison with truth
# --------------------------------------------------------------------------------------------

def adjusted_rand(labels_a, labels_b) -> float:
    """Adjusted Rand index of two labelings of the same items (1 = identical partitions)."""
    from sklearn.metrics import adjusted_rand_score

    a, b = list(labels_a), list(labels_b)
    if len(a) != len(b):
        raise MaiError(f"cannot compare labelings of {len(a)} and {len(b)} items")
    return float(adjusted_rand_score(a, b))


def grouping_ari(grouping: Grouping, truth: dict[str, str]) -> float:
    """ARI of a grouping against true gene -> module labels, over the genes present in both."""
    lookup = dict(zip(grouping.genes, grouping.groups))
    common = [g for g in truth if g in lookup]
    if len(common) < 2:
        raise MaiError(f"only {len(common)} gene(s) shared between the grouping and the true modules")
    return adjusted_rand([lookup[g] for g in common], [truth[g] for g in common])


def sets_to_labels(sets: dict[str, list[str]]) -> dict[str, str]:
    """gene -> set name, for sets that do not overlap (a gene in several sets keeps the first)."""
    out: dict[str, str] = {}
    for name, members in sets.items():
        for g in members:
            out.setdefault(g, name)
    return out


def true_modules(root: str | os.PathLike) -> dict[str, str] | None:
    """gene -> module for a dataset that ships its true modules (``modules.gmt``); None otherwise."""
    p = Path(root) / "modules.gmt"
    if not p.is_file():
        return None
    return sets_to_labels(parse_gmt(p))


# --------------------------------------------------------------------------------------------
# UMAP embedding of genes (cached on disk)
# --------------------------------------------------------------------------------------------

def _umap_key(data_key: str, params: dict) -> str:
    h = hashlib.sha1(data_key.encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:20]


def data_key(X) -> str:
    """Content hash of an expression matrix (used when no dataset fingerprint is given)."""
    X = np.ascontiguousarray(X)
    h = hashlib.sha1(f"{X.shape}{X.dtype}".encode())
    h.update(memoryview(X).cast("B"))
    return h.hexdigest()[:16]


def umap_cache_path(fingerprint: str, params: dict) -> Path:
    from mai_core.workspace import cache_dir

    return cache_dir() / "umap" / f"{_umap_key(fingerprint, params)}.npy"


def umap_embedding(X, n_pcs: int = 50, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0,
                   fingerprint: str | None = None, cache: bool = True,
                   profiles: GeneProfiles | None = None) -> np.ndarray:
    """2-D UMAP embedding of genes (genes x 2, float32): standardised profiles -> PCA -> UMAP.

    Seeded and therefore deterministic. With ``cache`` the result is stored under
    ``cache_dir()/umap/<hash of fingerprint + parameters>.npy`` (written atomically) and later calls
    with the same data and parameters load it. ``fingerprint`` defaults to a hash of ``X``.
    """
    if not (isinstance(n_neighbors, (int, np.integer)) and n_neighbors >= 2):
        raise MaiError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}")
    if not 0.0 <= float(min_dist) <= 1.0:
        raise MaiError(f"min_dist must be between 0 and 1, got {min_dist!r}")
    params = {"n_pcs": int(n_pcs), "n_neighbors": int(n_neighbors), "min_dist": float(min_dist),
              "seed": int(seed), "version": 1}
    path = None
    if cache:
        key = fingerprint or data_key(X)
        path = umap_cache_path(key, params)
        if path.is_file():
            try:
                emb = np.load(path)
                if emb.ndim == 2 and emb.shape[1] == 2 and (profiles is None or len(emb) == profiles.coords.shape[0]):
                    return emb
            except (OSError, ValueError):
                pass  # unreadable cache entry: recompute and overwrite
    if profiles is None:
        profiles = gene_profiles(X, n_pcs=n_pcs, seed=seed)
    coords = profiles.coords
    n = coords.shape[0]
    if n < 4:
        emb = np.zeros((n, 2), np.float32)
        emb[:, 0] = np.arange(n)
    else:
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" etc.
            reducer = umap.UMAP(n_components=2, n_neighbors=min(int(n_neighbors), n - 1),
                                min_dist=float(min_dist), random_state=int(seed), init="spectral",
                                n_jobs=1)
            emb = reducer.fit_transform(coords).astype(np.float32)
    if path is not None:
        from mai_core.io import atomic_path

        with atomic_path(path, suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, emb)
    return emb


# --------------------------------------------------------------------------------------------
# page-ready overview
# --------------------------------------------------------------------------------------------

@dataclass
class CorrelationOverview:
    """Everything the correlation view draws, computed once per dataset and method."""

    method: str
    genes: list[str]
    order: np.ndarray  # gene indices in clustered order
    linkage: np.ndarray  # average-linkage tree on 1 - r
    block: np.ndarray  # block-averaged correlation in clustered order (<= max_cells per side)
    block_starts: np.ndarray  # first ordered position of every block
    block_labels: list[str]
    hist_counts: np.ndarray
    hist_edges: np.ndarray
    fit: pd.DataFrame  # scale_free_fit
    beta: int
    n_constant: int

    def block_genes(self, i: int) -> list[str]:
        stops = list(self.block_starts[1:]) + [len(self.order)]
        return [self.genes[j] for j in self.order[self.block_starts[i]:stops[i]]]

    def clusters(self, n_clusters: int) -> dict[str, list[str]]:
        """Cut the tree into at most ``n_clusters`` groups, named by their first gene in display order."""
        labels = cut_linkage(self.linkage, n_clusters, len(self.genes))
        out: dict[str, list[str]] = {}
        for j in self.order:  # display order
            out.setdefault(int(labels[j]), []).append(self.genes[j])
        return {f"{i + 1}: {m[0]}… ({len(m)} genes)": m for i, m in enumerate(out.values())}


def correlation_overview(X, genes: list[str], method: str = "pearson", max_cells: int = 200,
                         betas=range(1, 21), bins: int = 100) -> CorrelationOverview:
    """Correlation, clustered order, block-averaged heatmap, histogram and scale-free fit in one go."""
    X = _as_matrix(X)
    _check_genes(X, genes)
    C = correlation(X, method=method, constant="zero")
    n_const = int(constant_genes(X).sum())
    link = correlation_linkage(C)
    order = linkage_order(link, len(genes))
    B, starts = block_average(C[np.ix_(order, order)], max_cells=max_cells)
    stops = list(starts[1:]) + [len(order)]
    labels = []
    for s, e in zip(starts, stops):
        first, last = genes[order[s]], genes[order[e - 1]]
        labels.append(first if e - s == 1 else f"{first}…{last} ({e - s})")
    counts, edges = upper_triangle_histogram(C, bins=bins)
    fit = scale_free_fit(C, betas=betas)
    return CorrelationOverview(method, list(genes), order, link, B, starts, labels, counts, edges, fit,
                               pick_soft_threshold(fit), n_const)


def parse_gene_list(text: str, genes: list[str]) -> tuple[list[str], list[str]]:
    """Split free text (commas, spaces, newlines) into (known genes in the data, unknown names).

    Matching is exact first, then case-insensitive.
    """
    tokens = [t for t in re.split(r"[\s,;]+", text or "") if t]
    exact = set(genes)
    lower = {g.lower(): g for g in genes}
    known, unknown = [], []
    for t in tokens:
        g = t if t in exact else lower.get(t.lower())
        (known if g else unknown).append(g or t)
    return list(dict.fromkeys(known)), unknown


def group_sizes(grouping: Grouping) -> pd.DataFrame:
    """Group, number of genes and a few example members, largest group first."""
    members = grouping.members()
    rows = [{"group": g, "genes": len(m), "examples": ", ".join(m[:6]) + (" …" if len(m) > 6 else "")}
            for g, m in members.items()]
    df = pd.DataFrame(rows, columns=["group", "genes", "examples"])
    return df.sort_values(["genes", "group"], ascending=[False, True], kind="stable").reset_index(drop=True)


_NAME_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")


def save_grouping(grouping: Grouping, name: str, overwrite: bool = True) -> Path:
    """Write a grouping to the workspace as ``groupings_dir()/<name>.csv`` (atomically); return the path.

    ``name`` may hold letters, digits, ``_ . -`` (no folders), at most 80 characters.
    """
    from mai_core.workspace import groupings_dir

    name = str(name or "").strip()
    if name.lower().endswith(".csv"):
        name = name[:-4]
    if not _NAME_RX.match(name):
        raise MaiError(f"invalid grouping name {name!r}",
                       [Problem("name", "use letters, digits, '_', '.', '-' (starting with a letter or digit, "
                                "at most 80 characters)", "e.g. kmeans_k8")])
    path = groupings_dir() / f"{name}.csv"
    if path.exists() and not overwrite:
        raise MaiError(f"grouping '{name}' already exists at {path}", hint="choose another name")
    return grouping.save(path)
