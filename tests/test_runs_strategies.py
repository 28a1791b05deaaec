"""The strategies table of a set of runs reads what each run did from its config.yaml."""

from __future__ import annotations

from mai_core.runs import RunDir, strategies_table, write_config, write_status


def _run(root, name, cfg, best=0.4):
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    write_config(run, {"kind": "run", **cfg})
    write_status(run, state="finished", epochs=3, epoch=3, started=1000.0, best_val_gene_pcc=best)
    return run


def test_strategy_columns_come_from_each_config(tmp_path):
    a = _run(tmp_path, "mse", {"model": {"kind": "finetune", "backbone": "efficientnet_lite0"},
                               "loss": {"alpha": 1.0, "beta": 0.0}, "aug": {"policy": "flips_rot90"},
                               "optim": {"epochs": 8}, "predict": {"tta": True}})
    b = _run(tmp_path, "all", {"model": {"kind": "frozen", "backbone": "efficientnet_lite2"},
                               "loss": {"alpha": 0.4, "beta": 0.4, "pearson": "gene",
                                        "pathway_gmt": "/x/h.all.v7.0.symbols.gmt", "pathway_weight": 2.0,
                                        "coexp_weight": 0.1},
                               "grouping": {"path": "/g/prefix_kmeans5.csv"}, "frozen": {"epochs": 60},
                               "predict": {"tta": 4}}, best=0.55)
    c = _run(tmp_path, "floor", {"model": {"kind": "ridge", "backbone": "efficientnet_lite0"}})
    ens = RunDir(tmp_path / "ens")
    ens.path.mkdir()
    write_config(ens, {"kind": "ensemble", "members": [str(a.path), str(b.path)], "val_gene_pcc": 0.6})
    t = strategies_table([a, b.path, c, ens], test_scores={"all": 0.5}).set_index("name")
    assert t.loc["mse", "loss"] == "MSE" and t.loc["mse", "grouping"] == "one head"
    assert t.loc["mse", "augmentation"] == "flips_rot90" and t.loc["mse", "tta"] == "8 views"
    assert t.loc["mse", "epochs"] == 8
    assert t.loc["all", "loss"].startswith("MSE 0.4 + Pearson 0.4 + covariance 0.2")
    assert t.loc["all", "pathway"] == "h.all.v7.0.symbols ×2, co-loss 0.1"
    assert t.loc["all", "grouping"] == "prefix_kmeans5" and t.loc["all", "tta"] == "4 views"
    assert t.loc["all", "epochs"] == 60 and t.loc["all", "test_gene_pcc"] == 0.5
    assert t.loc["all", "best_val_gene_pcc"] == 0.55
    assert t.loc["floor", "loss"] == "closed-form ridge"
    assert t.loc["ens", "model"] == "ensemble of 2"
    assert t.loc["ens", "backbone"] == "efficientnet_lite0 + efficientnet_lite2"
