"""Neighbour smoothing of predictions: the neighbour search (grids, sections), the weight chosen on the
validation spots at training time, and predict/evaluate applying it only where the input has coordinates."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from mai_core.cli import main
from mai_core.runs.contexthead import CONTEXT_HEAD_FILE, apply_context_head, fit_context_head, load_context_head
from mai_core.runs.neighbours import (choose_weight, neighbour_matrix, section_pitches, smooth, smoothing_facts,
                                      spot_coordinates)

TINY = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32", "--batch-size", "16",
        "--workers", "1", "--quiet", "--epochs", "2", "--seed", "1"]


def _square(nx: int, ny: int, pitch: float = 100.0, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    xy = np.column_stack([gx.ravel(), gy.ravel()]).astype(float) * pitch
    return xy + np.random.default_rng(seed).normal(0, jitter, xy.shape)


def test_square_grid_neighbours_are_the_eight_around_and_never_cross_sections():
    xy = _square(5, 4, jitter=3.0)
    both = np.vstack([xy, xy + 1.0])  # a second section lying on top of the first one
    sections = np.array(["A"] * len(xy) + ["B"] * len(xy))
    nb = neighbour_matrix(both, sections)
    counts = nb.getnnz(axis=1)
    interior = [i for i, (x, y) in enumerate(np.round(xy / 100)) if 0 < x < 4 and 0 < y < 3]
    assert set(counts[interior]) == {8}
    assert counts[0] == 3  # a corner
    rows, cols = nb.nonzero()
    assert (sections[rows] == sections[cols]).all()  # no neighbour from the other section
    assert not (rows == cols).any()
    assert np.allclose(np.asarray(nb.sum(axis=1)).ravel(), 1.0)  # a mean


def test_hexagonal_grid_has_six_neighbours():
    rows = [(x + (0.5 if r % 2 else 0.0), r * np.sqrt(3) / 2) for r in range(6) for x in range(6)]
    xy = np.array(rows) * 100
    nb = neighbour_matrix(xy)
    assert nb.getnnz(axis=1).max() == 6


def test_isolated_spots_keep_their_prediction():
    xy = np.array([[0, 0], [100, 0], [5000, 5000]], dtype=float)
    pred = np.array([[1.0], [3.0], [7.0]], dtype=np.float32)
    out = smooth(pred, neighbour_matrix(xy, pitches={"": 100.0}), 0.5)
    assert out[:, 0].tolist() == [2.0, 2.0, 7.0]


def _smooth_field(xy: np.ndarray, n_genes: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.002, 0.01, (n_genes, 2))
    phase = rng.uniform(0, 2 * np.pi, n_genes)
    return np.sin(xy @ freq.T + phase).astype(np.float32)


def test_the_weight_is_chosen_on_validation_spots():
    xy = _square(14, 14)
    true = _smooth_field(xy)
    noisy = true + np.random.default_rng(1).normal(0, 1.0, true.shape).astype(np.float32)
    nb = neighbour_matrix(xy)
    chosen = choose_weight(noisy, true, nb)
    assert chosen["weight"] >= 0.3  # noisy predictions of a smooth field: neighbours help
    assert chosen["pcc"][chosen["weight"]] > chosen["pcc"][0.0] + 0.05
    assert choose_weight(true, true, nb)["weight"] == 0.0  # exact predictions: nothing to gain

    # at training time only validation spots are used, with the radius of the full grid
    val = np.random.default_rng(2).choice(len(xy), 80, replace=False)
    table = pd.DataFrame({"section": "S1", "px": xy[:, 0], "py": xy[:, 1]})
    facts = smoothing_facts({"smoothing": "auto"}, table, val, noisy[val], true[val])
    assert facts["chosen_on"] == "validation" and facts["weight"] > 0
    assert float(max(facts["val_gene_pcc"], key=facts["val_gene_pcc"].get)) == facts["weight"]
    assert 20 <= facts["val_spots_with_neighbours"] < len(val)

    off = smoothing_facts({"smoothing": "off"}, table, val, noisy[val], true[val])
    assert off["weight"] == 0.0 and "off" in off["note"]
    none = smoothing_facts({"smoothing": "auto"}, table[["section"]], val, noisy[val], true[val])
    assert none["weight"] == 0.0 and "no spot coordinates" in none["note"]


def test_coordinates_come_from_pixels_or_array_indices():
    df = pd.DataFrame({"ID": ["a", "b"], "array_x": [1, 2], "array_y": [3, 3]})
    xy, sections = spot_coordinates(df)
    assert xy.tolist() == [[1, 3], [2, 3]] and list(sections) == ["", ""]
    assert spot_coordinates(pd.DataFrame({"ID": ["a"], "px": [np.nan], "py": [1.0]})) is None
    assert spot_coordinates(pd.DataFrame({"ID": ["a"]})) is None


@pytest.fixture(scope="module")
def spatial_demo(demo_dir, tmp_path_factory):
    """The demo dataset with two sections on a square spot grid; spots laid out so that neighbours have
    similar expression (ordered along the first principal component), as in tissue."""
    out = tmp_path_factory.mktemp("spatial") / "demo_xy"
    shutil.copytree(demo_dir, out)
    df = pd.read_csv(out / "train.csv", dtype={"ID": str})
    genes = [c for c in df.columns if c not in ("ID", "path")]
    x = df[genes].to_numpy(float)
    pc = np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, 0]
    order = np.argsort(pc)
    half = len(df) // 2
    xy = np.zeros((len(df), 2))
    section = np.empty(len(df), dtype=object)
    for s, idx in enumerate((order[:half], order[half:])):
        for k, i in enumerate(idx):  # snake order over a 10-wide grid
            row, col = divmod(k, 10)
            xy[i] = ((col if row % 2 == 0 else 9 - col) * 100.0, row * 100.0)
            section[i] = f"S{s + 1}"
    df.insert(2, "section", section)
    df.insert(3, "px", xy[:, 0])
    df.insert(4, "py", xy[:, 1])
    df.to_csv(out / "train.csv", index=False)
    return out


def _config(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


@pytest.fixture(scope="module")
def fixed_run(spatial_demo, tmp_path_factory):
    """A tiny run on the demo with coordinates, smoothing weight fixed at 0.5."""
    d = tmp_path_factory.mktemp("fixed_run")
    (d / "fixed.yaml").write_text("spatial:\n  context: off\n  smoothing: 0.5\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAI_WORKSPACE", str(d / "ws"))
        assert main(["train", "--data", str(spatial_demo), "--out", str(d / "run"), "--config", str(d / "fixed.yaml"),
                     *TINY]) == 0
    return d / "run"


@pytest.mark.slow
def test_train_chooses_the_weight_on_validation_or_records_why_not(spatial_demo, demo_dir, workspace):
    auto = workspace / "runs" / "auto"
    assert main(["train", "--data", str(spatial_demo), "--out", str(auto), *TINY]) == 0
    sp = _config(auto)["spatial"]
    log = (auto / "log.txt").read_text()
    assert "context head (own + neighbour-mean embedding): validation gene PCC" in log
    assert sp["context_head"] == (sp["context_val_gene_pcc"] > sp["head_val_gene_pcc"])
    assert (auto / CONTEXT_HEAD_FILE).is_file() == sp["context_head"]
    if sp["context_head"]:  # the head already uses the neighbours
        assert sp["weight"] == 0.0 and "smoothing: off (the context head" in log
    else:
        assert sp["chosen_on"] == "validation" and len(sp["val_gene_pcc"]) == 8
        best = max(sp["val_gene_pcc"], key=lambda w: (sp["val_gene_pcc"][w], -float(w)))
        assert sp["weight"] == pytest.approx(float(best) if sp["val_spots_with_neighbours"] >= 20 else 0.0)

    plain = workspace / "runs" / "no_xy"
    assert main(["train", "--data", str(demo_dir), "--out", str(plain), *TINY]) == 0
    assert _config(plain)["spatial"]["weight"] == 0.0 and not _config(plain)["spatial"]["context_head"]
    assert "context head: off (the dataset has no spot coordinates)" in (plain / "log.txt").read_text()
    assert not (plain / CONTEXT_HEAD_FILE).exists()

    off = workspace / "runs" / "off"
    assert main(["train", "--data", str(spatial_demo), "--out", str(off), "--no-spatial-context", *TINY]) == 0
    assert _config(off)["spatial"] == {"context": "off", "smoothing": "off", "weight": 0.0, "context_head": False}


@pytest.mark.slow
def test_predict_and_evaluate_smooth_only_with_coordinates(fixed_run, spatial_demo, demo_dir, tmp_path, capsys):
    assert _config(fixed_run)["spatial"]["weight"] == 0.5
    capsys.readouterr()
    csv = spatial_demo / "train.csv"
    no_xy = spatial_demo / "ids_only.csv"
    pd.read_csv(csv, dtype={"ID": str})[["ID", "path"]].to_csv(no_xy, index=False)
    outs = {}
    for name, src, extra in (("smoothed", csv, []), ("flag_off", csv, ["--no-spatial-context"]),
                             ("no_xy", no_xy, [])):
        outs[name] = tmp_path / f"{name}.csv"
        assert main(["predict", "--run", str(fixed_run), "--csv", str(src), "--out", str(outs[name]), "--quiet",
                     "--device", "cpu", *extra]) == 0
        outs[name + "_msg"] = capsys.readouterr().out
    assert "weight 0.50" in outs["smoothed_msg"]
    assert "turned off" in outs["flag_off_msg"] and "no spot coordinates" in outs["no_xy_msg"]
    raw = pd.read_csv(outs["flag_off"], dtype={"ID": str}).set_index("ID")
    got = pd.read_csv(outs["smoothed"], dtype={"ID": str}).set_index("ID")
    assert np.allclose(pd.read_csv(outs["no_xy"], dtype={"ID": str}).set_index("ID").to_numpy(), raw.to_numpy())
    table = pd.read_csv(csv, dtype={"ID": str})
    want = smooth(raw.to_numpy(np.float32), neighbour_matrix(*spot_coordinates(table)), 0.5)
    assert np.allclose(got.to_numpy(), want, atol=1e-4)
    assert not np.allclose(got.to_numpy(), raw.to_numpy(), atol=1e-3)

    assert main(["evaluate", "--run", str(fixed_run), "--data", str(spatial_demo), "--split", "train", "--quiet",
                 "--device", "cpu"]) == 0
    assert "weight 0.50" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(fixed_run), "--data", str(demo_dir), "--split", "test", "--quiet",
                 "--device", "cpu"]) == 0
    assert "no spot coordinates" in capsys.readouterr().out


@pytest.mark.slow
def test_predict_slide_smooths_over_the_spot_grid(fixed_run, demo_dir, tmp_path):
    import anndata

    from _slide_data import tile_slide, write_pyramid
    from mai_core.data import load_dataset
    from mai_core.runs import load_predictor
    from mai_core.spatial import predict_slide

    tiles = load_dataset(demo_dir).images(indices=range(12))
    img, centres = tile_slide(tiles, cols=4)
    write_pyramid(tmp_path / "slide.tif", img, mpp=0.5, levels=2)
    pd.DataFrame({"id": [f"s{i}" for i in range(12)], "px": centres[:, 0], "py": centres[:, 1]}).to_csv(
        tmp_path / "spots.csv", index=False)
    raw = load_predictor(fixed_run, device="cpu").predict_images(tiles)
    got = {}
    for flag in (True, False):
        out = tmp_path / f"pred_{flag}.h5ad"
        info = predict_slide(fixed_run, tmp_path / "slide.tif", out, spots=tmp_path / "spots.csv", device="cpu",
                             progress=False, spatial=flag)
        got[flag] = anndata.read_h5ad(out)
        assert any(n.startswith("neighbour smoothing:") for n in info["notes"])
    want = smooth(raw, neighbour_matrix(centres.astype(float)), 0.5)
    np.testing.assert_allclose(got[True].X, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[False].X, raw, rtol=1e-4, atol=1e-5)
    assert got[True].uns["mai"]["spatial_smoothing"] == 0.5 and got[False].uns["mai"]["spatial_smoothing"] == 0.0


def test_context_head_learns_from_the_neighbours_embeddings():
    """Expression that depends on the neighbourhood (not the spot alone) is learnt by own ⊕ neighbour mean."""
    from mai_core.models.ridge import fit_ridge, predict_ridge

    xy = _square(16, 16)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(xy), 6)).astype(np.float32)
    nb = neighbour_matrix(xy)
    z = np.asarray(nb @ emb) @ rng.normal(size=(6, 5)) + 0.3 * emb @ rng.normal(size=(6, 5))
    z = (z - z.mean(0)) / z.std(0)
    idx = rng.permutation(len(xy))
    fit, val, test = idx[:150], idx[150:200], idx[200:]
    head = fit_context_head(emb, nb, z, fit, val, np.zeros(5), np.ones(5), pca=0)
    pred = apply_context_head((head["weight"], head["bias"]), emb, nb)
    own = predict_ridge(fit_ridge(emb[fit], z[fit], emb[val], z[val], pca=0), emb)
    from mai_core.metrics import gene_pearson

    with_context, own_only = gene_pearson(z[test], pred[test])[0], gene_pearson(z[test], own[test])[0]
    assert with_context > 0.9 and with_context > own_only + 0.2
    # the validation score is the fit-only map's; the map kept is refitted on fit ∪ val with the same penalty
    fit_only = fit_context_head(emb, nb, z, fit, val, np.zeros(5), np.ones(5), pca=0, refit=False)
    assert head["refit"] and not fit_only["refit"] and head["alpha"] == fit_only["alpha"]
    np.testing.assert_allclose(head["val_pred"], fit_only["val_pred"], atol=1e-5)
    assert np.allclose(fit_only["val_pred"], apply_context_head((fit_only["weight"], fit_only["bias"]), emb, nb)[val],
                       atol=1e-4)
    assert not np.allclose(head["weight"], fit_only["weight"], atol=1e-4)
    both = np.concatenate([fit, val])
    from mai_core.runs.contexthead import context_features

    f = context_features(emb, nb)
    ref = predict_ridge(fit_ridge(f[both], z[both], alphas=(head["alpha"],), pca=0), f)
    np.testing.assert_allclose(pred, ref, atol=1e-3)


def test_an_ensembles_context_head_is_the_weighted_mean_of_its_members_heads():
    from mai_core.runs.contexthead import ensemble_context_head

    rng = np.random.default_rng(3)
    xy = _square(6, 5)
    nb = neighbour_matrix(xy)
    dims, genes = (4, 7), 3
    heads = [(rng.normal(size=(2 * d, genes)).astype(np.float32), rng.normal(size=genes).astype(np.float32))
             for d in dims]
    embs = [rng.normal(size=(len(xy), d)).astype(np.float32) for d in dims]
    weights = [0.25, 0.75]
    want = sum(w * apply_context_head(h, e, nb) for w, h, e in zip(weights, heads, embs))
    got = apply_context_head(ensemble_context_head(heads, [1.0, 3.0]), np.hstack(embs), nb)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_an_ensemble_of_context_runs_predicts_with_its_members_context_heads(spatial_demo, tmp_path, capsys):
    """An ensemble whose members all have context heads predicts spots with coordinates as the weighted mean of
    the members' context-head predictions; when one member has none, it says which and uses the fine-tuned
    heads."""
    from mai_core.runs import load_predictor

    cfg = tmp_path / "on.yaml"
    cfg.write_text("spatial:\n  context: on\n")
    runs = []
    assert TINY[-2:] == ["--seed", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAI_WORKSPACE", str(tmp_path / "ws"))
        for seed, extra in ((1, ["--config", str(cfg)]), (2, ["--config", str(cfg)]), (3, ["--no-spatial-context"])):
            runs.append(tmp_path / f"r{seed}")
            assert main(["train", "--data", str(spatial_demo), "--out", str(runs[-1]), *extra,
                         *TINY[:-1], str(seed)]) == 0
        assert main(["ensemble", "--runs", str(runs[0]), str(runs[1]), "--out", str(tmp_path / "ens")]) == 0
        assert main(["ensemble", "--runs", str(runs[0]), str(runs[2]), "--out", str(tmp_path / "mixed")]) == 0
    assert _config(tmp_path / "ens")["spatial"]["context_head"] is True
    assert _config(tmp_path / "mixed")["spatial"]["context_head"] is False
    said = capsys.readouterr().out  # the ensemble command says whether the heads are used, and why not
    assert "every member has a context head" in said
    assert f"Spatial context: off (no context head in {runs[2]})" in said
    table = pd.read_csv(spatial_demo / "train.csv", dtype={"ID": str})
    paths = [spatial_demo / p for p in table["path"]]
    nb = neighbour_matrix(*spot_coordinates(table))
    members = []
    for r in runs[:2]:
        p = load_predictor(r, device="cpu")
        members.append(apply_context_head(load_context_head(r), p.feature_predictor().predict_paths(paths), nb))
    want = 0.5 * (members[0] + members[1])
    capsys.readouterr()
    got = {}
    for name in ("ens", "mixed"):
        assert main(["predict", "--run", str(tmp_path / name), "--csv", str(spatial_demo / "train.csv"),
                     "--out", str(tmp_path / f"{name}.csv"), "--quiet", "--device", "cpu"]) == 0
        got[name] = pd.read_csv(tmp_path / f"{name}.csv", dtype={"ID": str}).drop(columns="ID").to_numpy()
        got[name + "_msg"] = capsys.readouterr().out
    assert "context head" in got["ens_msg"]
    np.testing.assert_allclose(got["ens"], want, rtol=1e-3, atol=1e-4)
    assert "member r3 has no context head" in got["mixed_msg"]
    plain = load_predictor(tmp_path / "mixed", device="cpu").predict_paths(paths)
    np.testing.assert_allclose(got["mixed"], plain, rtol=1e-3, atol=1e-4)

    # a stored test score belongs to what predicts: a member's context head changing makes it stale
    import os

    from mai_core.runs import test_score_path

    before = {r: test_score_path(r, "data") for r in (tmp_path / "ens", runs[0])}
    head_file = runs[0] / CONTEXT_HEAD_FILE
    st = head_file.stat()
    os.utime(head_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert all(test_score_path(r, "data") != p for r, p in before.items())


@pytest.mark.slow
def test_context_head_is_used_with_coordinates_only(spatial_demo, tmp_path, capsys):
    cfg = tmp_path / "on.yaml"
    cfg.write_text("spatial:\n  context: on\n")
    run = tmp_path / "ctx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAI_WORKSPACE", str(tmp_path / "ws"))
        assert main(["train", "--data", str(spatial_demo), "--out", str(run), "--config", str(cfg), *TINY]) == 0
    assert _config(run)["spatial"]["context_head"] is True
    head = load_context_head(run)
    assert head is not None
    from mai_core.runs import load_predictor

    table = pd.read_csv(spatial_demo / "train.csv", dtype={"ID": str})
    paths = [spatial_demo / p for p in table["path"]]
    pred = load_predictor(run, device="cpu")
    own = pred.predict_paths(paths)
    want = apply_context_head(head, pred.feature_predictor().predict_paths(paths),
                              neighbour_matrix(*spot_coordinates(table)))
    no_xy = spatial_demo / "ids_ctx.csv"
    table[["ID", "path"]].to_csv(no_xy, index=False)
    capsys.readouterr()
    got = {}
    for name, src, extra in (("ctx", spatial_demo / "train.csv", []), ("no_xy", no_xy, []),
                             ("off", spatial_demo / "train.csv", ["--no-spatial-context"])):
        assert main(["predict", "--run", str(run), "--csv", str(src), "--out", str(tmp_path / f"{name}.csv"),
                     "--quiet", "--device", "cpu", *extra]) == 0
        got[name] = pd.read_csv(tmp_path / f"{name}.csv", dtype={"ID": str}).drop(columns="ID").to_numpy()
        got[name + "_msg"] = capsys.readouterr().out
    assert "context head" in got["ctx_msg"] and "no spot coordinates" in got["no_xy_msg"]
    assert "turned off" in got["off_msg"]
    np.testing.assert_allclose(got["ctx"], want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got["no_xy"], own, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got["off"], own, rtol=1e-3, atol=1e-4)
    assert not np.allclose(want, own, atol=1e-3)

    # predict-slide: the head over the spot grid of a slide
    import anndata

    from _slide_data import tile_slide, write_pyramid
    from mai_core.spatial import predict_slide

    from mai_core.data import load_dataset

    tiles = load_dataset(spatial_demo).images(indices=range(12))
    img, centres = tile_slide(tiles, cols=4)
    write_pyramid(tmp_path / "slide.tif", img, mpp=0.5, levels=2)
    pd.DataFrame({"id": [f"s{i}" for i in range(12)], "px": centres[:, 0], "py": centres[:, 1]}).to_csv(
        tmp_path / "spots.csv", index=False)
    info = predict_slide(run, tmp_path / "slide.tif", tmp_path / "s.h5ad", spots=tmp_path / "spots.csv",
                         device="cpu", progress=False)
    a = anndata.read_h5ad(tmp_path / "s.h5ad")
    slide_want = apply_context_head(head, pred.feature_predictor().predict_images(tiles),
                                    neighbour_matrix(centres.astype(float)))
    np.testing.assert_allclose(a.X, slide_want, rtol=1e-3, atol=1e-4)
    assert a.uns["mai"]["context_head"] and any("context head" in n for n in info["notes"])


@pytest.mark.slow
def test_the_apps_submission_and_test_score_predict_as_the_commands_do(fixed_run, spatial_demo, demo_dir, tmp_path,
                                                                       workspace):
    """The Results page's submission file and test score go through predict's and evaluate's paths: the same
    spatial context where the patches have coordinates, progress after every batch."""
    from mai_core.runs import test_score, write_submission_reporting
    from mai_core.runs.predict import evaluate_run

    csv = spatial_demo / "train.csv"
    assert main(["predict", "--run", str(fixed_run), "--csv", str(csv), "--out", str(tmp_path / "cli.csv"),
                 "--quiet", "--device", "cpu"]) == 0
    seen = []
    write_submission_reporting(fixed_run, csv, tmp_path / "app.csv", report=lambda d, t: seen.append((d, t)),
                               device="cpu")
    cli = pd.read_csv(tmp_path / "cli.csv", dtype={"ID": str})
    app = pd.read_csv(tmp_path / "app.csv", dtype={"ID": str})
    assert list(app.columns) == list(cli.columns)
    assert np.allclose(app.drop(columns="ID").to_numpy(), cli.drop(columns="ID").to_numpy(), atol=1e-5)
    assert seen and seen[-1][0] == seen[-1][1] == len(cli)  # the last report covers every patch

    scored = test_score(fixed_run, demo_dir, device="cpu")
    want = evaluate_run(fixed_run, demo_dir, split="test", device="cpu", progress=False)
    assert scored["gene_pcc_mean"] == pytest.approx(want["gene_pcc_mean"]) and scored["n_test"] == 40


def test_a_run_whose_model_gives_no_embeddings_says_why_its_context_head_was_not_used(tmp_path):
    from types import SimpleNamespace

    from mai_core.runs.contexthead import save_context_head, spatial_finish, spatial_model

    save_context_head(tmp_path, np.zeros((8, 3), np.float32), np.zeros(3, np.float32))
    pred = SimpleNamespace(path=tmp_path, config={}, feature_predictor=lambda: None)
    model, head = spatial_model(pred, True, True)
    assert model is pred and head is None
    values = np.ones((2, 3), np.float32)
    coords = (np.array([[0.0, 0.0], [1.0, 0.0]]), np.array(["a", "a"]))
    out, said = spatial_finish(pred, head, values, coords, True)
    assert out is values
    assert said == ("spatial context: off (this model gives no embeddings for its context head); the fine-tuned "
                    "head predicted")
    assert "no spot coordinates" in spatial_finish(pred, None, values, None, True)[1]
    assert "turned off" in spatial_finish(pred, None, values, coords, False)[1]
