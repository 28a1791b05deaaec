"""Gene structure: correlation, WGCNA fit, clusterings, UMAP cache, grouping CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from mai_core import genes as G
from mai_core.cli import main as cli_main
from mai_core.data.dataset import load_dataset
from mai_core.errors import MaiError
from mai_core.genes.grouping import load_grouping


def planted(n=240, sizes=(15, 12, 10, 8), n_noise=10, seed=0):
    """Samples x genes with independent modules (gene -> module) plus pure-noise genes."""
    rng = np.random.default_rng(seed)
    cols, truth, names = [], {}, []
    for m, size in enumerate(sizes):
        factor = rng.normal(size=n)
        for j in range(size):
            cols.append(rng.uniform(0.7, 1.2) * factor + rng.normal(0, 0.6, n) + 3)
            names.append(f"M{m}G{j}")
            truth[names[-1]] = f"module{m}"
    for j in range(n_noise):
        cols.append(rng.normal(size=n) + 3)
        names.append(f"NOISE{j}")
    X = np.stack(cols, 1).astype(np.float32)
    perm = rng.permutation(X.shape[1])
    return X[:, perm], [names[i] for i in perm], truth


# ----------------------------------------------------------------------------- correlation

def test_pearson_and_spearman_match_reference_with_constant_and_tied_genes():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 25)).astype(np.float32)
    X[:, 4] = np.round(X[:, 4])  # many ties
    X[:, 7] = 3.5  # constant
    X[:, 9] = X[:, 2] * 2 + 1  # perfectly correlated with gene 2
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(X.astype(np.float64), rowvar=False)
    C = G.correlation(X)
    assert C.dtype == np.float32 and C.shape == (25, 25)
    keep = np.ones(25, bool)
    keep[7] = False
    np.testing.assert_allclose(C[np.ix_(keep, keep)], ref[np.ix_(keep, keep)], atol=1e-5)
    assert np.isnan(C[7]).all() and np.isnan(C[:, 7]).all()
    assert C[2, 9] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(C, C.T)

    S = G.correlation(X, method="spearman")
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_s = spearmanr(X.astype(np.float64)).statistic
    np.testing.assert_allclose(S[np.ix_(keep, keep)], ref_s[np.ix_(keep, keep)], atol=1e-5)

    Z = G.correlation(X, constant="zero")
    assert Z[7, 7] == 1.0 and not Z[7, keep].any() and not np.isnan(Z).any()


def test_correlation_rejects_bad_input():
    with pytest.raises(MaiError, match="unknown correlation method"):
        G.correlation(np.ones((5, 3)), method="kendall")
    with pytest.raises(MaiError, match="at least 2 samples"):
        G.correlation(np.ones((1, 3)))
    X = np.ones((5, 3))
    X[0, 0] = np.nan
    with pytest.raises(MaiError, match="NaN"):
        G.correlation(X)


def test_clustered_order_groups_modules_and_block_average_is_exact():
    X, genes, truth = planted()
    C = G.correlation(X)
    order = G.cluster_order(C)
    assert sorted(order.tolist()) == list(range(len(genes)))
    labels = [truth.get(genes[i], "noise") for i in order]
    # each planted module is one contiguous run in the clustered order
    for m in set(truth.values()):
        pos = [i for i, lab in enumerate(labels) if lab == m]
        assert pos[-1] - pos[0] + 1 == len(pos), m

    B, starts = G.block_average(C, max_cells=7)
    assert B.shape == (7, 7) and starts[0] == 0
    stops = list(starts[1:]) + [len(genes)]
    assert B[2, 5] == pytest.approx(C[starts[2]:stops[2], starts[5]:stops[5]].mean(), abs=1e-6)
    small, _ = G.block_average(C, max_cells=1000)
    np.testing.assert_allclose(small, C)  # never upsampled


def test_upper_triangle_histogram_counts_each_pair_once():
    X, _, _ = planted(n=60, sizes=(5, 5), n_noise=3)
    C = G.correlation(X)
    counts, edges = G.upper_triangle_histogram(C, bins=20)
    g = C.shape[0]
    assert counts.sum() == g * (g - 1) // 2
    iu = np.triu_indices(g, 1)
    np.testing.assert_array_equal(counts, np.histogram(C[iu], bins=edges)[0])


# ----------------------------------------------------------------------------- WGCNA

def test_scale_free_fit_curve_and_soft_threshold():
    X, genes, _ = planted(n=200, sizes=(40, 30, 20, 15, 10), n_noise=40)
    fit = G.scale_free_fit(G.correlation(X), betas=range(1, 13))
    assert fit["beta"].tolist() == list(range(1, 13))
    assert ((fit["r2"] >= 0) & (fit["r2"] <= 1)).all()
    assert (np.diff(fit["mean_k"]) < 0).all()  # higher power -> sparser network
    # dense network at beta=1 is far from scale-free; the fit improves as beta grows
    assert fit["signed_r2"].iloc[-1] > fit["signed_r2"].iloc[0] + 0.3
    beta = G.pick_soft_threshold(fit)
    ok = fit[fit["signed_r2"] >= 0.8]
    assert beta == (ok["beta"].min() if len(ok) else fit.loc[fit["signed_r2"].idxmax(), "beta"])


def test_pick_soft_threshold_rule():
    fit = pd.DataFrame({"beta": [1, 2, 3, 4, 5], "signed_r2": [0.1, 0.5, 0.85, 0.9, 0.7]})
    assert G.pick_soft_threshold(fit) == 3
    assert G.pick_soft_threshold(fit, r2_min=0.95) == 4  # none reaches: best one


def test_topological_overlap_matches_definition_and_modules_recover_truth():
    rng = np.random.default_rng(3)
    A = rng.uniform(size=(6, 6))
    A = (A + A.T) / 2
    np.fill_diagonal(A, 0)
    T = G.topological_overlap(A)
    k = A.sum(1)
    for i in range(6):
        for j in range(6):
            if i != j:
                expect = (A[i] @ A[:, j] + A[i, j]) / (min(k[i], k[j]) + 1 - A[i, j])
                assert T[i, j] == pytest.approx(expect, rel=1e-5)
    assert np.allclose(np.diag(T), 1)

    X, genes, truth = planted(n=200, sizes=(15, 12, 10), n_noise=0)
    gr = G.tom_modules(X, genes, n_modules=3, min_size=5)
    assert gr.method == "wgcna" and gr.params["beta"] >= 1
    assert G.grouping_ari(gr, truth) > 0.9


# ----------------------------------------------------------------------------- summaries

def test_gene_summary_and_scale_groups():
    X = np.array([[0, 1, 10, 100, 0], [0, 3, 30, 300, 0], [0.6, 2, 20, 200, 0]], dtype=np.float32)
    s = G.gene_summary(X, list("abcde"))
    assert s["mean"].tolist() == pytest.approx([0.2, 2, 20, 200, 0])
    assert s["zero_fraction"].tolist() == pytest.approx([2 / 3, 0, 0, 0, 1])
    assert s["cv"].iloc[1] == pytest.approx(np.std([1, 3, 2]) / 2)
    assert np.isnan(s["cv"].iloc[4])
    assert s["scale_group"].tolist() == ["very low", "low", "mid", "high", "very low"]
    fixed = G.scale_groups([0.001, 0.05, 0.5, 5], edges=[-2, -1, 0])
    assert fixed.tolist() == ["very low", "low", "mid", "high"]
    with pytest.raises(MaiError):
        G.scale_groups([1.0], edges=[0, -1, 1])


# ----------------------------------------------------------------------------- clusterings

def test_prefix_rules_on_real_gene_names():
    for name, pref in [("AL645608.7", "AL"), ("LINC01770", "LINC"), ("MT-CO1", "MT"), ("RPL13", "RPL"),
                       ("RPS6", "RPS"), ("HLA-DRA", "HLA")]:
        assert G.gene_prefix(name) == pref
    assert G.gene_prefix("GAPDH") is None
    genes = ["RPL13", "RPL3", "RPS6", "RPS19", "MT-CO1", "MT-ND1", "LINC01770", "AL645608.7", "GAPDH", "ACTB"]
    gr = G.prefix_groups(genes, min_size=2)
    got = dict(zip(gr.genes, gr.groups))
    assert got["RPL3"] == "RPL" and got["RPS19"] == "RPS" and got["MT-ND1"] == "MT"
    # single LINC / AL genes (below min size) and names without a prefix are pooled
    assert got["LINC01770"] == got["AL645608.7"] == got["GAPDH"] == "other"
    custom = G.prefix_groups(genes, pattern=r"^([A-Z]{2})", min_size=1)
    assert dict(zip(custom.genes, custom.groups))["RPS6"] == "RP"
    with pytest.raises(MaiError, match="capture group"):
        G.prefix_groups(genes, pattern="^[A-Z]+")


def test_parse_hallmark_gmt(hallmark_gmt):
    sets = G.parse_gmt(hallmark_gmt)
    assert len(sets) == 50
    assert all(name.startswith("HALLMARK_") for name in sets)
    assert "VEGFA" in sets["HALLMARK_HYPOXIA"]
    assert all(len(m) == len(set(m)) and len(m) > 10 for m in sets.values())


def test_malformed_gmt_reports_every_bad_line(tmp_path):
    p = tmp_path / "bad.gmt"
    p.write_text("SET_A\tdesc\tG1\tG2\nSET_B only_two_fields\n\nSET_C\tdesc\t\t\nSET_A\tdesc\tG3\n")
    with pytest.raises(MaiError) as err:
        G.parse_gmt(p)
    where = " ".join(pr.where for pr in err.value.problems)
    assert "line 2" in where and "line 4" in where and "line 5" in where
    assert len(err.value.problems) == 3
    with pytest.raises(MaiError, match="not found"):
        G.parse_gmt(tmp_path / "absent.gmt")
    (tmp_path / "empty.gmt").write_text("\n\n")
    with pytest.raises(MaiError, match="no gene sets"):
        G.parse_gmt(tmp_path / "empty.gmt")


def test_geneset_groups_resolve_overlaps_deterministically():
    sets = {"BIG": ["A", "B", "C", "D"], "SMALL": ["B", "C"], "TIE_B": ["E", "F"], "TIE_A": ["E", "G"]}
    gr = G.geneset_groups(["A", "B", "C", "E", "F", "Z"], sets)
    got = dict(zip(gr.genes, gr.groups))
    assert got == {"A": "BIG", "B": "SMALL", "C": "SMALL", "E": "TIE_A", "F": "TIE_B", "Z": "unassigned"}
    # set size counts the genes present in the data: LONG lists 4 genes but only A is present
    gr2 = G.geneset_groups(["A", "B", "C"], {"LONG": ["A", "X", "Y", "Z"], "SHORT": ["A", "B", "C"]})
    assert dict(zip(gr2.genes, gr2.groups)) == {"A": "LONG", "B": "SHORT", "C": "SHORT"}
    pooled = G.geneset_groups(["A", "B", "C", "E", "F", "Z"], sets, min_size=2)
    assert dict(zip(pooled.genes, pooled.groups))["A"] == "unassigned"
    with pytest.raises(MaiError, match="none of the"):
        G.geneset_groups(["X1", "X2"], sets)


def test_kmeans_is_deterministic_and_recovers_planted_modules():
    X, genes, truth = planted()
    a = G.kmeans_genes(X, genes, k=5, seed=7)
    b = G.kmeans_genes(X, genes, k=5, seed=7)
    assert a.groups == b.groups and a.params == b.params
    assert a.method == "kmeans" and len(set(a.groups)) == 5
    sizes = pd.Series(a.groups).value_counts()
    assert sizes.index[0] == "0" and sizes.is_monotonic_decreasing  # "0" is the largest cluster
    assert G.grouping_ari(a, truth) > 0.9
    with pytest.raises(MaiError, match="out of range"):
        G.kmeans_genes(X, genes, k=1)


def test_kmeans_scan_reports_inertia_and_silhouette():
    X, genes, _ = planted(sizes=(12, 12, 12), n_noise=0)
    scan = G.kmeans_scan(G.gene_profiles(X), ks=range(2, 7))
    assert scan["k"].tolist() == [2, 3, 4, 5, 6]
    assert (np.diff(scan["inertia"]) < 0).all()
    assert scan.loc[scan["silhouette"].idxmax(), "k"] == 3  # three planted modules


def test_kmeans_recovers_demo_modules(demo_dir):
    """k-means on co-expression recovers the demo's planted modules (truth.json / modules.gmt).

    Each demo module is driven by its own, nearly independent image factor, so every planted module
    is a separate co-expression cluster.
    """
    ds = load_dataset(demo_dir, check_images=False)
    truth_json = json.loads((demo_dir / "truth.json").read_text())
    truth = {g: m for g, m in truth_json["gene_module"].items() if m}
    assert truth == G.true_modules(demo_dir)
    n_modules = len(set(truth.values()))
    assert n_modules == 5
    # The module genes, k = number of modules.
    cols = [ds.genes.index(g) for g in truth]
    gr = G.kmeans_genes(ds.X[:, cols], list(truth), k=n_modules, seed=0)
    ari = G.grouping_ari(gr, truth)
    shuffled = np.random.default_rng(0).permutation([truth[g] for g in truth])
    chance = G.adjusted_rand([dict(zip(gr.genes, gr.groups))[g] for g in truth], shuffled)
    assert ari > 0.8 and chance < 0.2, (ari, chance)
    # Every gene (module-free genes too, some sharing hidden non-image factors): the modules still
    # come out as clusters once k leaves room for those factors.
    gr_all = G.kmeans_genes(ds.X, ds.genes, k=n_modules + 3, seed=0)
    assert G.grouping_ari(gr_all, truth) > 0.8


# ----------------------------------------------------------------------------- UMAP

@pytest.mark.slow
def test_umap_is_seeded_and_cached_on_disk(workspace):
    X, genes, truth = planted(n=100, sizes=(10, 10), n_noise=5)
    a = G.umap_embedding(X, n_neighbors=5, seed=3, cache=False)
    b = G.umap_embedding(X, n_neighbors=5, seed=3, cache=False)
    assert a.shape == (len(genes), 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    cached = G.umap_embedding(X, n_neighbors=5, seed=3, fingerprint="fp1")
    files = list((workspace / "cache" / "umap").glob("*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(cached, a)
    np.save(files[0], np.zeros_like(a))  # a later call must read the stored result, not recompute
    assert not G.umap_embedding(X, n_neighbors=5, seed=3, fingerprint="fp1").any()
    G.umap_embedding(X, n_neighbors=6, seed=3, fingerprint="fp1")  # other parameters: another entry
    assert len(list((workspace / "cache" / "umap").glob("*.npy"))) == 2
    with pytest.raises(MaiError, match="n_neighbors"):
        G.umap_embedding(X, n_neighbors=1)


# ----------------------------------------------------------------------------- saving + CLI

def test_save_grouping_to_workspace(workspace):
    gr = G.prefix_groups(["RPL1", "RPL2", "GAPDH"], min_size=2)
    path = G.save_grouping(gr, "my_prefix")
    assert path == workspace / "groupings" / "my_prefix.csv"
    back = load_grouping(path)
    assert back.genes == gr.genes and back.groups == gr.groups and back.method == "prefix"
    with pytest.raises(MaiError, match="invalid grouping name"):
        G.save_grouping(gr, "../escape")


def test_cli_writes_groupings_that_load(demo_dir, tmp_path, capsys):
    out = tmp_path / "km.csv"
    assert cli_main(["genes", "--data", str(demo_dir), "--method", "kmeans", "--k", "4", "--seed", "1",
                     "--out", str(out)]) == 0
    gr = load_grouping(out)
    ds = load_dataset(demo_dir, check_images=False)
    assert gr.genes == ds.genes and len(set(gr.groups)) == 4
    assert gr.method == "kmeans" and gr.params["k"] == 4 and gr.params["seed"] == 1
    printed = capsys.readouterr().out
    assert "4 groups" in printed and str(out) in printed

    assert cli_main(["genes", "--data", str(demo_dir), "--method", "geneset", "--gmt",
                     str(demo_dir / "modules.gmt"), "--out", str(tmp_path / "gs.csv")]) == 0
    gs = load_grouping(tmp_path / "gs.csv")
    truth = G.true_modules(demo_dir)
    assert all(dict(zip(gs.genes, gs.groups))[g] == m for g, m in truth.items())

    assert cli_main(["genes", "--data", str(demo_dir), "--method", "prefix", "--min-size", "3",
                     "--out", str(tmp_path / "px.csv")]) == 0
    px = load_grouping(tmp_path / "px.csv")
    counts = pd.Series(px.groups).value_counts()
    assert (counts.drop("other", errors="ignore") >= 3).all()


@pytest.mark.parametrize("args, message", [
    (["--method", "louvain"], "unknown gene clustering method"),
    (["--method", "geneset"], "needs a gene-set file"),
    (["--method", "geneset", "--gmt", "MISSING.gmt"], "not found"),
    (["--method", "kmeans", "--k", "1000"], "out of range"),
    (["--method", "prefix", "--min-size", "0"], "--min-size"),
])
def test_cli_bad_arguments_exit_2_without_traceback(demo_dir, tmp_path, capsys, args, message):
    out = tmp_path / "g.csv"
    assert cli_main(["genes", "--data", str(demo_dir), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_cli_malformed_gmt_exits_2(demo_dir, tmp_path, capsys):
    bad = tmp_path / "bad.gmt"
    bad.write_text("ONLY_NAME\n")
    assert cli_main(["genes", "--data", str(demo_dir), "--method", "geneset", "--gmt", str(bad),
                     "--out", str(tmp_path / "g.csv")]) == 2
    assert "line 1" in capsys.readouterr().err
