"""Results science: run table, per-gene/per-cluster PCC, correlation-structure fidelity, comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mai_core.runs import build_ensemble
from mai_core.runs import compare as results
from mai_core.errors import MaiError
from mai_core.genes.grouping import Grouping
from mai_core.runs import RunDir, write_config, write_status


def _modules(n=80, seed=0):
    """Truth with two gene modules (g0-g3 share factor A, g4-g7 share factor B) + an independent gene."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
    y = np.hstack([a + 0.3 * rng.normal(size=(n, 4)), b + 0.3 * rng.normal(size=(n, 4)), rng.normal(size=(n, 1))])
    return y, [f"g{i}" for i in range(y.shape[1])]


def _write_run(root, name, y_true, y_pred, genes, ids=None, *, kind="run", alpha=0.3, beta=0.6,
               grouping=None, state="finished", best=0.5):
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    ids = ids or [f"s{i}" for i in range(len(y_true))]
    cfg = {"kind": kind, "model": {"backbone": "efficientnet_lite0"}, "loss": {"alpha": alpha, "beta": beta},
           "optim": {"epochs": 3}, "grouping": {"path": grouping}}
    write_config(run, cfg)
    write_status(run, state=state, epochs=3, epoch=3, started=1000.0, best_val_gene_pcc=best)
    df = pd.DataFrame({"ID": ids})
    for j, g in enumerate(genes):
        df[f"pred:{g}"] = y_pred[:, j]
        df[f"true:{g}"] = y_true[:, j]
    df.to_parquet(run.val_predictions_path, index=False)
    return run


def test_correlation_fidelity_rewards_kept_structure_not_values():
    y, _ = _modules()
    rng = np.random.default_rng(1)
    assert results.correlation_fidelity(y, y) == pytest.approx(1.0)
    # per-gene rescaling changes every value but keeps all gene-gene correlations
    scaled = y * rng.uniform(0.2, 3.0, size=y.shape[1]) + rng.normal(size=y.shape[1])
    assert results.correlation_fidelity(y, scaled) == pytest.approx(1.0)
    # predictions with the modules destroyed (independent genes) keep nothing
    noise = rng.normal(size=y.shape)
    assert abs(results.correlation_fidelity(y, noise)) < 0.5
    # swapping the module membership of genes scrambles the structure
    swapped = y[:, [0, 1, 4, 5, 2, 3, 6, 7, 8]]
    assert results.correlation_fidelity(y, swapped) < 0.5
    assert results.correlation_fidelity(y, y + 0.5 * rng.normal(size=y.shape)) > results.correlation_fidelity(y, swapped)


def test_correlation_fidelity_ignores_constant_genes_and_handles_tiny_input():
    y, _ = _modules()
    with_const = np.hstack([y, np.ones((len(y), 1))])
    pred = with_const.copy()
    pred[:, -1] = np.arange(len(y))  # prediction varies where truth is constant
    assert results.correlation_fidelity(with_const, pred) == pytest.approx(1.0)
    assert np.isnan(results.correlation_fidelity(y[:, :2], y[:, :2]))
    with pytest.raises(ValueError):
        results.correlation_fidelity(y, y[:, :3])


def test_correlation_matrices_cluster_modules_together():
    y, genes = _modules()
    vp = results.ValPredictions([f"s{i}" for i in range(len(y))], genes, y, y[:, ::-1].copy())
    order, ct, cp = results.correlation_matrices(vp, top_n=50)
    assert sorted(order) == sorted(genes) and ct.shape == cp.shape == (9, 9)
    pos = {g: i for i, g in enumerate(order)}
    mod_a = sorted(pos[g] for g in ("g0", "g1", "g2", "g3"))
    assert mod_a == list(range(mod_a[0], mod_a[0] + 4))  # a module is a contiguous block
    np.testing.assert_allclose(np.diag(ct), 1.0)
    # both matrices follow the same gene order: prediction of gene i is column i reversed
    i0 = order.index("g0")
    i8 = order.index("g8")
    assert cp[i0, i8] == pytest.approx(np.corrcoef(y[:, 8], y[:, 0])[0, 1])
    top3, ct3, _ = results.correlation_matrices(vp, top_n=3)
    assert len(top3) == 3 and ct3.shape == (3, 3)


def test_per_gene_and_cluster_pcc(tmp_path):
    y, genes = _modules()
    rng = np.random.default_rng(2)
    pred = y.copy()
    pred[:, 4:8] = rng.normal(size=(len(y), 4))  # module B predicted badly
    pred[:, 8] = 1.0  # constant prediction
    run = _write_run(tmp_path, "r", y, pred, genes)
    vp = results.load_val_predictions(run)
    assert vp.genes == genes and vp.y_true.shape == (80, 9)
    pg = results.per_gene_pcc(vp)
    assert list(pg["gene"][:4]) == ["g0", "g1", "g2", "g3"] and pg["pcc"][0] == pytest.approx(1.0)
    assert pg["gene"].iloc[-1] == "g8" and np.isnan(pg["pcc"].iloc[-1])
    grouping = Grouping(genes[:8], ["A"] * 4 + ["B"] * 4, "test")
    cl = results.cluster_pcc(pg, grouping).set_index("group")
    assert cl.loc["A", "mean_pcc"] == pytest.approx(1.0)
    assert abs(cl.loc["B", "mean_pcc"]) < 0.4
    assert cl.loc["ungrouped", "n_genes"] == 1
    assert list(cl.index[:1]) == ["A"]


def test_runs_table_reads_config_and_status(tmp_path):
    y, genes = _modules()
    _write_run(tmp_path, "one", y, y, genes, alpha=0.2, beta=0.7, grouping="/x/kmeans8.csv", best=0.61)
    ens = _write_run(tmp_path, "ens", y, y, genes, kind="ensemble")
    write_config(ens, {"kind": "ensemble", "members": ["a", "b"]})
    table = results.runs_table(tmp_path.iterdir()).set_index("name")
    assert table.loc["one", "backbone"] == "efficientnet_lite0"
    assert (table.loc["one", "alpha"], table.loc["one", "beta"]) == (0.2, 0.7)
    assert table.loc["one", "grouping"] == "kmeans8" and table.loc["one", "epochs"] == 3
    assert table.loc["one", "best_val_gene_pcc"] == pytest.approx(0.61)
    assert table.loc["one", "state"] == "finished" and table.loc["one", "time_s"] > 0
    assert table.loc["ens", "kind"] == "ensemble" and table.loc["ens", "backbone"] == "ensemble of 2"


def test_compare_runs_on_common_validation_set(tmp_path):
    y, genes = _modules()
    rng = np.random.default_rng(3)
    good = y + 0.1 * rng.normal(size=y.shape)
    bad = y + 2.0 * rng.normal(size=y.shape)
    ids = [f"s{i}" for i in range(len(y))]
    a = _write_run(tmp_path, "good", y, good, genes, ids)
    # the second run has a shuffled row order and one sample fewer: compared on the shared samples
    perm = rng.permutation(len(y))[:-1]
    b = _write_run(tmp_path, "bad", y[perm], bad[perm], genes, [ids[i] for i in perm])
    cmp = results.compare_runs([a, b], top_k=5).set_index("name")
    assert (cmp["n_val"] == len(y) - 1).all()
    assert cmp.loc["good", "val_gene_pcc"] > cmp.loc["bad", "val_gene_pcc"]
    assert cmp.loc["good", "corr_fidelity"] > cmp.loc["bad", "corr_fidelity"]
    assert "top5_pcc" in cmp.columns


def test_missing_or_malformed_predictions_raise_clear_errors(tmp_path):
    run = RunDir(tmp_path / "empty")
    run.path.mkdir()
    with pytest.raises(MaiError, match="no validation predictions"):
        results.load_val_predictions(run)
    pd.DataFrame({"ID": ["a"], "pred:g": [1.0]}).to_parquet(run.val_predictions_path)
    with pytest.raises(MaiError, match="malformed"):
        results.load_val_predictions(run)
    with pytest.raises(MaiError, match="at least two runs"):
        build_ensemble([run], tmp_path / "e")


def test_build_ensemble_and_compare_with_members(tmp_path):
    y, genes = _modules()
    rng = np.random.default_rng(4)
    members = []
    for k in range(2):
        run = _write_run(tmp_path, f"m{k}", y, y + 1.0 * rng.normal(size=y.shape), genes)
        (run.path / "genes.txt").write_text("".join(g + "\n" for g in genes))
        run.checkpoints_dir.mkdir()
        run.best_checkpoint.write_bytes(b"stand-in")  # the ensemble references checkpoints, never reads them here
        members.append(run)
    ens = build_ensemble(members, tmp_path / "ens", overwrite=False)
    assert ens.kind == "ensemble"
    cmp = results.compare_runs(members + [ens]).set_index("name")
    assert cmp.loc["ens", "kind"] == "ensemble"
    # averaging two independently noisy predictions beats each of them
    assert cmp.loc["ens", "val_gene_pcc"] > cmp.loc[["m0", "m1"], "val_gene_pcc"].max()
    with pytest.raises(MaiError, match="already exists"):
        build_ensemble(members, tmp_path / "ens", overwrite=False)
