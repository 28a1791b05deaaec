"""Functional gene groupings: term similarity, MDS of terms, term clusters, biclustering, WGCNA hub genes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mai_core import genes as G
from mai_core.errors import MaiError


def _sets():
    # two families of overlapping terms (A*, B*) and a term sharing nothing with either
    return {
        "A1": ["g1", "g2", "g3", "g4"], "A2": ["g2", "g3", "g4", "g5"], "A3": ["g1", "g3", "g4", "g5"],
        "B1": ["h1", "h2", "h3", "h4"], "B2": ["h2", "h3", "h4", "h5"],
        "C1": ["k1", "k2", "k3"], "TINY": ["g1", "zz"],
    }


def test_term_similarity_is_jaccard_over_genes_of_the_data():
    genes = ["g1", "g2", "g3", "g4", "g5", "h1", "h2", "h3", "h4", "h5", "k1", "k2", "k3", "other"]
    names, S = G.term_similarity(_sets(), genes, min_size=3)
    assert names == ["A1", "A2", "A3", "B1", "B2", "C1"]  # TINY has one gene in the data
    i, j = names.index("A1"), names.index("A2")
    assert S[i, j] == pytest.approx(3 / 5)  # {g2,g3,g4} of {g1..g5}
    assert S[names.index("A1"), names.index("B1")] == 0.0
    assert np.allclose(np.diag(S), 1.0) and np.allclose(S, S.T)
    with pytest.raises(MaiError):
        G.term_similarity({"X": ["a", "b", "c"]}, ["a", "b", "c"])


def test_classical_mds_reproduces_euclidean_distances():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(12, 2))
    D = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    xy = G.term_mds(1.0 - D)  # similarity = 1 - distance
    D2 = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    assert np.allclose(D, D2, atol=1e-8)
    assert np.array_equal(xy, G.term_mds(1.0 - D))  # deterministic


def test_functional_groups_follow_term_families():
    genes = ["g1", "g2", "g3", "g4", "g5", "h1", "h2", "h3", "h4", "h5", "k1", "k2", "k3", "lonely"]
    grouping, table = G.functional_groups(genes, _sets(), n_clusters=3, min_size=3, source="test.gmt")
    lookup = dict(zip(grouping.genes, grouping.groups))
    assert len({lookup[g] for g in ("g1", "g2", "g3", "g4", "g5")}) == 1
    assert len({lookup[g] for g in ("h1", "h2", "h3", "h4", "h5")}) == 1
    assert lookup["g1"] != lookup["h1"] != lookup["k1"]
    assert lookup["lonely"] == G.UNASSIGNED
    assert lookup["g1"] == "F1"  # largest cluster first
    assert grouping.method == "functional" and grouping.params["gmt"] == "test.gmt"
    assert list(table.columns) == ["term", "n_genes", "cluster", "x", "y"]
    assert table.set_index("term").loc["A1", "cluster"] == lookup["g1"]


def test_functional_groups_on_hallmark(hallmark_gmt):
    sets = G.parse_gmt(hallmark_gmt)
    genes = sorted({g for v in sets.values() for g in v})[:600]
    grouping, table = G.functional_groups(genes, sets, n_clusters=6)
    assert len(table) >= 20 and set(grouping.groups) - {G.UNASSIGNED}
    assert table[["x", "y"]].notna().all().all()


def test_biclustering_recovers_a_planted_checkerboard():
    rng = np.random.default_rng(0)
    n_spots, n_genes = 90, 60
    row = np.repeat([0, 1, 2], 30)
    col = np.repeat([0, 1, 2], 20)
    level = rng.uniform(1, 6, size=(3, 3))
    X = level[row][:, col] + rng.normal(0, 0.3, (n_spots, n_genes))
    genes = [f"G{i}" for i in range(n_genes)]
    grouping, spot_labels = G.bicluster_groups(X, genes, n_clusters=3, seed=0)
    assert G.adjusted_rand(grouping.groups, col) > 0.9
    assert G.adjusted_rand(spot_labels, row) > 0.9
    assert grouping.method == "bicluster"
    with pytest.raises(MaiError):
        G.bicluster_groups(X, genes, n_clusters=1)


def test_hub_genes_rank_the_planted_hub_first():
    rng = np.random.default_rng(1)
    n = 300
    hub = rng.normal(size=n)
    cols = {"HUB": hub}
    for j in range(6):  # each member follows the hub, not each other
        cols[f"M{j}"] = hub + rng.normal(0, 0.8, n)
    cols["X1"], cols["X2"] = rng.normal(size=n), rng.normal(size=n)
    genes = list(cols)
    X = np.stack([cols[g] for g in genes], 1)
    grouping = G.Grouping(genes, ["A"] * 7 + [G.UNASSIGNED] * 2, "custom")
    table = G.hub_genes(X, genes, grouping, beta=2, top=1)
    assert set(table["module"]) == {"A"} and len(table) == 7
    assert table.iloc[0]["gene"] == "HUB" and table.iloc[0]["hub"]
    assert table["hub"].sum() == 1
    assert table.iloc[0]["k_scaled"] == 1.0 and (table["kME"] > 0.5).all()
    # k_within is the sum of |r|^beta to the other module genes
    C = np.corrcoef(X[:, :7].T)
    k_hub = (np.abs(C[0, 1:7]) ** 2).sum()
    assert table.iloc[0]["k_within"] == pytest.approx(k_hub, rel=1e-4)
    assert isinstance(table, pd.DataFrame)
