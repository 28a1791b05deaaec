"""Gene-gene correlation: Pearson/Spearman on float32 BLAS, clustered order, block averages, histograms.

Constant genes have no defined correlation: ``constant="nan"`` (default, like ``np.corrcoef``) gives
them NaN rows/columns, ``constant="zero"`` a 0 row with a diagonal 1 (what orderings and networks use).
"""

from __future__ import annotations


import numpy as np

from mai_core.errors import MaiError


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


