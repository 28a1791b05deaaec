"""Page-ready summaries: per-gene statistics and scale groups, the correlation overview, gene lists,
group sizes and saving a grouping to the workspace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem
from mai_core.genes.grouping import Grouping
from mai_core.genes.clusters import _check_genes
from mai_core.genes.corrmatrix import _as_matrix, block_average, constant_genes, correlation, correlation_linkage, cut_linkage, linkage_order, upper_triangle_histogram
from mai_core.genes.network import pick_soft_threshold, scale_free_fit


SCALE_GROUP_NAMES = ("very low", "low", "mid", "high")

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

    def blocks_in_box(self, x_range, y_range) -> list[int]:
        """Heatmap blocks (rows and columns) a selection box covers; ranges are in cell-index units, as
        Plotly reports a box on categorical axes (cell i spans i − 0.5 … i + 0.5)."""
        n = len(self.block_labels)
        out: set[int] = set()
        for lo, hi in (x_range, y_range):
            lo, hi = sorted((float(lo), float(hi)))
            first, last = max(0, int(np.floor(lo + 0.5))), min(n - 1, int(np.ceil(hi - 0.5)))
            out.update(range(first, last + 1))
        return sorted(out)

    def genes_in_box(self, x_range, y_range) -> list[str]:
        """Genes of the blocks a selection box covers, in clustered order."""
        return [g for b in self.blocks_in_box(x_range, y_range) for g in self.block_genes(b)]

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


def suggested_grouping_name(grouping: Grouping, source: str | None = None) -> str:
    """A name that says how a grouping was made, e.g. ``kmeans_k8``, ``prefix_min5``, ``geneset_hallmark_min3``.

    ``source``: the gene-set file the grouping came from (its stem goes into gene-set names).
    """
    p = grouping.params or {}
    if grouping.method == "kmeans":
        name = f"kmeans_k{p.get('k', len(set(grouping.groups)))}" + (f"_seed{p['seed']}" if p.get("seed") else "")
    elif grouping.method == "prefix":
        from mai_core.genes.clusters import DEFAULT_PREFIX_PATTERN

        custom = p.get("pattern", DEFAULT_PREFIX_PATTERN) != DEFAULT_PREFIX_PATTERN
        name = f"prefix{'_custom' if custom else ''}_min{p.get('min_size', 1)}"
    elif grouping.method == "geneset":
        stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(str(source or p.get("gmt") or "sets")).stem).strip("_")[:40]
        name = f"geneset_{stem or 'sets'}_min{p.get('min_size', 1)}"
    else:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(grouping.method))[:40] or "grouping"
    return name[:80]


def grouping_path(name: str) -> Path:
    """Where :func:`save_grouping` writes ``name`` (whether or not it exists)."""
    from mai_core.workspace import groupings_dir

    name = str(name or "").strip()
    return groupings_dir() / f"{name[:-4] if name.lower().endswith('.csv') else name}.csv"


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
