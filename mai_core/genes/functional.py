"""Functional gene groupings: term clusters from gene-set annotations (with an MDS map of term similarity),
spectral biclustering of genes × spots, and WGCNA hub genes.

* Functional clustering. Annotation terms (GO terms, Hallmark sets: any GMT) are compared by the Jaccard
  similarity of their member genes among the genes of the data; the term × term dissimilarity (1 − Jaccard)
  is laid out in 2-D by metric MDS (the map the Gene Clusters page draws) and cut into clusters by
  average-linkage hierarchical clustering. A gene joins the cluster that holds most of its terms (ties: the
  term with fewest genes in the data, then by name); genes without a term are "unassigned". GO annotations
  are not shipped by any offline package here, so the functions take any GMT; pass a GO GMT (e.g. MSigDB C5)
  when one is on disk.
* Biclustering. scikit-learn's spectral biclustering (Kluger et al. 2003) of the spots × genes matrix finds
  a checkerboard: blocks of genes that are high together in blocks of spots. Its gene labels form a grouping.
* Hub genes. In a WGCNA network (adjacency ``|r|^β``) a gene's intramodular connectivity is the sum of its
  adjacencies to the other genes of its module; the genes with the highest one are the module's hubs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem
from mai_core.genes.clusters import UNASSIGNED, _check_genes, _relabel_by_size
from mai_core.genes.corrmatrix import _as_matrix, correlation
from mai_core.genes.grouping import Grouping


def term_similarity(sets: dict[str, list[str]], genes=None, min_size: int = 3) -> tuple[list[str], np.ndarray]:
    """(term names, term × term Jaccard similarity) over the terms with at least ``min_size`` member genes
    (among ``genes`` when given)."""
    present = None if genes is None else set(genes)
    members = {k: set(v) if present is None else set(v) & present for k, v in sets.items()}
    names = sorted(k for k, v in members.items() if len(v) >= max(1, int(min_size)))
    if len(names) < 2:
        raise MaiError(f"only {len(names)} gene set(s) with at least {min_size} genes of the data",
                       [Problem("gene sets", "too few terms overlap the data",
                                "use a GMT with the data's gene identifiers, or a smaller minimum size")])
    universe = sorted(set().union(*(members[n] for n in names)))
    col = {g: i for i, g in enumerate(universe)}
    M = np.zeros((len(names), len(universe)), dtype=np.float32)
    for i, n in enumerate(names):
        M[i, [col[g] for g in members[n]]] = 1.0
    inter = M @ M.T
    size = M.sum(1)
    union = size[:, None] + size[None, :] - inter
    S = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    np.fill_diagonal(S, 1.0)
    return names, S.astype(np.float64)


def term_mds(similarity: np.ndarray, n_components: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS coordinates (terms × ``n_components``) of the dissimilarity 1 − similarity:
    the top eigenvectors of the double-centred squared dissimilarities, scaled by √eigenvalue. Deterministic
    (each axis oriented so that its largest coordinate is positive)."""
    D = np.clip(1.0 - np.asarray(similarity, dtype=np.float64), 0.0, None)
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0.0)
    n = len(D)
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ (D ** 2) @ J
    vals, vecs = np.linalg.eigh(B)
    order = np.argsort(vals)[::-1][: int(n_components)]
    coords = vecs[:, order] * np.sqrt(np.clip(vals[order], 0.0, None))
    flip = np.sign(coords[np.abs(coords).argmax(0), np.arange(coords.shape[1])])
    coords = coords * np.where(flip == 0, 1.0, flip)
    if coords.shape[1] < int(n_components):
        coords = np.pad(coords, ((0, 0), (0, int(n_components) - coords.shape[1])))
    return coords


def term_clusters(similarity: np.ndarray, n_clusters: int) -> np.ndarray:
    """Average-linkage clusters (1..n) of terms on the dissimilarity 1 − similarity."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    D = np.clip(1.0 - similarity, 0.0, None)
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0.0)
    if len(D) < 2:
        return np.ones(len(D), dtype=int)
    return fcluster(linkage(squareform(D, checks=False), method="average"), t=max(1, int(n_clusters)),
                    criterion="maxclust")


def functional_groups(genes: list[str], sets: dict[str, list[str]], n_clusters: int = 8, min_size: int = 3,
                      source: str = "") -> tuple[Grouping, pd.DataFrame]:
    """Group genes by clusters of annotation terms (module notes).

    Returns the grouping (groups ``F1``, ``F2``, … by decreasing size, genes without a term ``unassigned``) and
    a term table: term, n_genes (in the data), cluster, x, y (the MDS map).
    """
    names, S = term_similarity(sets, genes, min_size)
    labels = term_clusters(S, n_clusters)
    xy = term_mds(S)
    present = set(genes)
    n_in = {n: len(present.intersection(sets[n])) for n in names}
    votes: dict[str, dict[int, int]] = {}
    best_term: dict[str, str] = {}
    for n, c in zip(names, labels):
        for g in sets[n]:
            if g in present:
                votes.setdefault(g, {})
                votes[g][int(c)] = votes[g].get(int(c), 0) + 1
                if g not in best_term or (n_in[n], n) < (n_in[best_term[g]], best_term[g]):
                    best_term[g] = n
    term_cluster = dict(zip(names, labels.tolist()))
    raw = []
    for g in genes:
        v = votes.get(g)
        if not v:
            raw.append(-1)
            continue
        top = max(v.values())
        tied = [c for c, k in v.items() if k == top]
        raw.append(tied[0] if len(tied) == 1 else term_cluster[best_term[g]])
    groups = _relabel_by_size(np.array(raw), prefix="F", start=1)
    order = {int(c): name for c, name in zip(raw, groups) if c >= 0}
    table = pd.DataFrame({"term": names, "n_genes": [n_in[n] for n in names],
                          "cluster": [order.get(int(c), UNASSIGNED) for c in labels],
                          "x": xy[:, 0], "y": xy[:, 1]})
    params = {"n_clusters": int(n_clusters), "min_size": int(min_size), "n_terms": len(names),
              "similarity": "jaccard", "linkage": "average"}
    if source:
        params["gmt"] = str(source)
    return Grouping(list(genes), groups, "functional", params), table


def bicluster_groups(X, genes: list[str], n_clusters: int = 5, seed: int = 0,
                     max_genes: int = 2000) -> tuple[Grouping, np.ndarray]:
    """Spectral biclustering of spots × genes (checkerboard, ``n_clusters`` gene and spot clusters).

    Only the ``max_genes`` most variable genes take part (others are "unassigned"); expression is shifted to
    be positive, as the method's scaling expects. Returns (gene grouping ``B1``.. by size, spot labels).
    """
    from sklearn.cluster import SpectralBiclustering

    from mai_core.metrics import top_variable_genes

    X = _as_matrix(X)
    _check_genes(X, genes)
    k = int(n_clusters)
    if k < 2 or k > min(X.shape):
        raise MaiError(f"number of biclusters {k} is out of range",
                       [Problem("n_clusters", f"must be between 2 and {min(X.shape)}", "choose another number")])
    idx = np.sort(top_variable_genes(X, max_genes))
    sub = X[:, idx].astype(np.float64)
    keep = sub.std(0) > 1e-12
    idx, sub = idx[keep], sub[:, keep]
    sub = sub - sub.min() + 1e-3
    model = SpectralBiclustering(n_clusters=(k, k), method="log", n_components=min(6, min(sub.shape) - 1),
                                 n_best=min(3, k), n_init=3, random_state=int(seed))
    model.fit(sub)
    labels = np.full(len(genes), -1)
    labels[idx] = model.column_labels_
    groups = _relabel_by_size(labels, prefix="B", start=1)
    return (Grouping(list(genes), groups, "bicluster", {"n_clusters": k, "seed": int(seed),
                                                         "max_genes": int(max_genes), "method": "log"}),
            np.asarray(model.row_labels_))


def hub_genes(X, genes: list[str], grouping: Grouping, beta: int = 6, top: int = 5,
              method: str = "pearson") -> pd.DataFrame:
    """Intramodular connectivity of every gene of every module (``unassigned`` excluded).

    Columns: module, gene, k_within (Σ_j |r_ij|^β over the module's other genes), k_scaled (k_within / the
    module's largest), kME (correlation with the module eigengene, first principal component), hub (among the
    module's ``top`` most connected). Sorted by module, then decreasing k_within.
    """
    X = _as_matrix(X)
    _check_genes(X, genes)
    lookup = dict(zip(grouping.genes, grouping.groups))
    pos = {g: i for i, g in enumerate(genes)}
    modules: dict[str, list[int]] = {}
    for g in genes:
        m = lookup.get(g)
        if m is not None and m != UNASSIGNED:
            modules.setdefault(m, []).append(pos[g])
    rows = []
    for m, cols in modules.items():
        if len(cols) < 2:
            continue
        sub = X[:, cols]
        C = correlation(sub, method=method, constant="zero")
        A = np.abs(C) ** int(beta)
        np.fill_diagonal(A, 0.0)
        k = A.sum(1)
        z = sub - sub.mean(0)
        sd = z.std(0)
        z = np.divide(z, sd, out=np.zeros_like(z), where=sd > 1e-12)
        u, _, _ = np.linalg.svd(z, full_matrices=False)
        eig = u[:, 0]
        kme = np.array([np.corrcoef(eig, z[:, j])[0, 1] if sd[j] > 1e-12 else 0.0 for j in range(len(cols))])
        order = np.argsort(-k, kind="stable")
        if kme[order[0]] < 0:  # orient the eigengene with the module's most connected gene
            kme = -kme
        kmax = float(k.max()) if k.max() > 0 else 1.0
        for rank, j in enumerate(order):
            rows.append({"module": m, "gene": genes[cols[j]], "k_within": float(k[j]), "k_scaled": float(k[j] / kmax),
                         "kME": float(kme[j]), "hub": rank < int(top)})
    return pd.DataFrame(rows, columns=["module", "gene", "k_within", "k_scaled", "kME", "hub"])
