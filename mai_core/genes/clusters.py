"""Gene clusters: k-means on standardised gene profiles (K scan), name prefixes, gene sets (GMT), and
agreement with known modules (ARI). Every clustering returns a :class:`~mai_core.genes.grouping.Grouping`.

k-means treats genes as points: each profile is standardised, so squared distance is ``2n(1 - r)`` and
k-means groups genes by correlation. Profiles are reduced by seeded randomised PCA to ``n_pcs`` components
first; labels are renumbered by decreasing size so the same data and seed give identical files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem
from mai_core.genes.grouping import Grouping
from mai_core.genes.corrmatrix import _as_matrix, standardize



UNASSIGNED = "unassigned"
OTHER = "other"
# Leading letters followed by a digit, a dot or a hyphen: AL645608.7 -> AL, LINC01770 -> LINC,
# MT-CO1 -> MT, RPL13 -> RPL, RPS6 -> RPS. Names without such a pattern (GAPDH) have no prefix.
DEFAULT_PREFIX_PATTERN = r"^([A-Za-z]+)[0-9.\-]"
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


