"""End-to-end training engine: train → predict → evaluate, ridge, ensembles, stop/resume, errors.

Tiny settings throughout (timm 'test_efficientnet', random weights, 32-pixel input) so each test stays
within seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mai_core.cli import main
from mai_core.runs import RunDir, read_metrics, read_status

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32", "--batch-size", "16",
        "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAI_WORKSPACE", str(ws))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield ws


@pytest.fixture(scope="module")
def run1(demo_dir, ws):
    out = ws / "runs" / "r1"
    assert main(["train", "--data", str(demo_dir), "--out", str(out), "--epochs", "2", "--seed", "1", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def ridge_run(demo_dir, ws):
    out = ws / "runs" / "ridge"
    assert main(["train", "--data", str(demo_dir), "--out", str(out), "--model", "ridge", "--seed", "1", *TINY]) == 0
    return out


def test_run_directory_layout(run1):
    r = RunDir(run1)
    for p in (r.config_path, r.genes_path, r.grouping_path, r.metrics_path, r.status_path, r.last_checkpoint,
              r.best_checkpoint, r.last_state, r.val_predictions_path, r.log_path):
        assert p.is_file(), p
    status = read_status(r)
    assert status["state"] == "finished" and status["progress"] == 1.0 and status["epoch"] == 2
    assert status["best_val_gene_pcc"] is not None
    m = read_metrics(r)
    assert m["epoch"].tolist() == [1, 2]
    assert np.isfinite(m[["train_loss", "val_loss", "val_gene_pcc", "lr", "imgs_per_s", "time"]].to_numpy()).all()
    cfg = r.read_config()
    assert cfg["model"]["weights_info"]["source"] == "random"
    assert cfg["model"]["backbone"] == "test_efficientnet" and cfg["optim"]["epochs"] == 2
    assert cfg["split"]["n_train"] + cfg["split"]["n_val"] == 120
    genes = r.read_genes()
    assert len(genes) == 60
    grouping = pd.read_csv(r.grouping_path)
    assert set(grouping["group"]) == {"all"} and grouping["gene"].tolist() == genes
    # optimizer/loop state loads without unpickling arbitrary objects
    state = torch.load(r.last_state, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["optimizer"]["state"]


def test_val_predictions_match_a_reloaded_predictor(run1, demo_dir):
    from mai_core.data.dataset import load_dataset
    from mai_core.runs import load_predictor

    r = RunDir(run1)
    vp = r.read_val_predictions()
    genes = r.read_genes()
    assert list(vp.columns) == ["ID"] + [f"pred:{g}" for g in genes] + [f"true:{g}" for g in genes]
    ds = load_dataset(demo_dir)
    rows = [ds.ids.index(i) for i in vp["ID"]]
    np.testing.assert_allclose(vp[[f"true:{g}" for g in genes]].to_numpy(), ds.X[rows], rtol=1e-6)
    pred = load_predictor(run1, device="cpu")
    assert pred.genes == genes and pred.tta_views == 4
    p = pred.predict_images(ds.images("train", rows[:6]))
    assert p.dtype == np.float32 and p.shape == (6, 60)
    np.testing.assert_allclose(p, vp[[f"pred:{g}" for g in genes]].to_numpy()[:6], rtol=1e-4, atol=1e-4)
    # the model maps [0,1] float images to original-unit expression (what Grad-CAM differentiates)
    x = torch.from_numpy(ds.images("train", rows[:2])).permute(0, 3, 1, 2).float() / 255
    direct = pred.model(x).detach().numpy()
    np.testing.assert_allclose(direct, pred.predict_images(ds.images("train", rows[:2]), tta=False), rtol=1e-4, atol=1e-4)


def test_predict_writes_submission_layout(run1, demo_dir, tmp_path):
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(run1), "--csv", str(demo_dir / "test.csv"), "--out", str(out), "--quiet"]) == 0
    sub = pd.read_csv(out, dtype={"ID": str})
    test = pd.read_csv(demo_dir / "test.csv", dtype={"ID": str})
    assert sub["ID"].tolist() == test["ID"].tolist()
    assert list(sub.columns[1:]) == RunDir(run1).read_genes()
    assert np.isfinite(sub.iloc[:, 1:].to_numpy()).all()


def test_predict_works_on_a_folder_the_model_never_saw(run1, demo_dir, tmp_path):
    import shutil

    new = tmp_path / "elsewhere"
    (new / "imgs").mkdir(parents=True)
    test = pd.read_csv(demo_dir / "test.csv", dtype={"ID": str}).head(3)
    for i, rel in enumerate(test["path"]):
        shutil.copy(demo_dir / rel, new / "imgs" / f"p{i}.png")
    pd.DataFrame({"ID": ["a", "b", "c"], "path": [f"imgs/p{i}.png" for i in range(3)]}).to_csv(new / "q.csv", index=False)
    assert main(["predict", "--run", str(run1), "--csv", str(new / "q.csv"), "--out", str(new / "o.csv"), "--quiet"]) == 0
    assert pd.read_csv(new / "o.csv")["ID"].tolist() == ["a", "b", "c"]


def test_predict_refuses_missing_images_without_traceback(run1, tmp_path):
    (tmp_path / "q.csv").write_text("ID,path\nx1,nowhere/a.png\nx2,nowhere/b.png\n")
    proc = subprocess.run([sys.executable, "-m", "mai_core", "predict", "--run", str(run1), "--csv",
                           str(tmp_path / "q.csv"), "--out", str(tmp_path / "o.csv")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "nowhere/a.png" in proc.stderr and "nowhere/b.png" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.csv").exists()


def test_evaluate_reports_metrics_and_writes_json(run1, demo_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run1), "--data", str(demo_dir), "--split", "test", "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "gene_pcc_mean" in printed and "gene_pcc_top50" in printed
    m = json.loads(out.read_text())
    assert m["n_samples"] == 40 and m["n_genes"] == 60
    for k in ("gene_pcc_mean", "gene_pcc_top50", "sample_pcc_raw", "mse"):
        assert isinstance(m[k], float)
    # the val split re-uses the stored validation predictions
    assert main(["evaluate", "--run", str(run1), "--split", "val"]) == 0
    assert "gene_pcc_mean" in capsys.readouterr().out


def test_invalid_loss_weights_exit_2_before_writing(demo_dir, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["train", "--data", str(demo_dir), "--out", str(out), "--alpha", "0.8", "--beta", "0.5", *TINY]) == 2
    err = capsys.readouterr().err
    assert "alpha + beta" in err and "exceeds 1" in err
    assert not out.exists()


def test_refuses_to_overwrite_a_run(run1, demo_dir, capsys):
    assert main(["train", "--data", str(demo_dir), "--out", str(run1), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_ridge_run_works_with_predict_and_evaluate(ridge_run, demo_dir):
    r = RunDir(ridge_run)
    cfg = r.read_config()
    assert cfg["model"]["kind"] == "ridge" and cfg["predict"]["tta"] is False
    m = read_metrics(r)
    assert len(m) == 1 and m["ridge_alpha"].iloc[0] > 0
    from mai_core.runs.predict import evaluate_run

    res = evaluate_run(ridge_run, demo_dir, split="test", progress=False)
    assert res["n_samples"] == 40 and np.isfinite(res["gene_pcc_mean"])


def test_ensemble_predicts_the_mean_of_its_members(run1, ridge_run, ws, demo_dir):
    from mai_core.data.dataset import load_dataset
    from mai_core.runs import load_predictor

    out = ws / "runs" / "ens"
    assert main(["ensemble", "--runs", str(run1), str(ridge_run), "--out", str(out)]) == 0
    ens = load_predictor(out, device="cpu")
    imgs = load_dataset(demo_dir).images("test", range(5))
    members = [load_predictor(p, device="cpu").predict_images(imgs, tta=False) for p in (run1, ridge_run)]
    np.testing.assert_allclose(ens.predict_images(imgs, tta=False), (members[0] + members[1]) / 2, rtol=1e-4, atol=1e-5)
    r = RunDir(out)
    assert r.kind == "ensemble" and read_status(r)["state"] == "finished"
    vp = r.read_val_predictions()
    assert vp["ID"].tolist() == RunDir(run1).read_val_predictions()["ID"].tolist()  # same seed: same split
    # validation-weighted ensemble: weights proportional to member val PCC
    out2 = ws / "runs" / "ens_val"
    assert main(["ensemble", "--runs", str(run1), str(ridge_run), "--out", str(out2), "--weights", "val"]) == 0
    w = [m["weight"] for m in r.__class__(out2).read_config()["members"]]
    assert sum(w) == pytest.approx(1.0)


def test_ensemble_refuses_members_with_different_genes(run1, ws, capsys):
    other = ws / "runs" / "fake"
    other.mkdir(parents=True)
    for name in ("config.yaml", "grouping.csv", "status.json"):
        (other / name).write_bytes((run1 / name).read_bytes())
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "last.safetensors").write_bytes((run1 / "checkpoints" / "last.safetensors").read_bytes())
    (other / "genes.txt").write_text("GENE_A\nGENE_B\n")
    assert main(["ensemble", "--runs", str(run1), str(other), "--out", str(ws / "runs" / "bad_ens")]) == 2
    assert "share their genes" in capsys.readouterr().err
    assert not (ws / "runs" / "bad_ens").exists()


def test_grouped_heads_and_frozen_model(demo_dir, ws, run1):
    from mai_core.genes.grouping import Grouping

    genes = RunDir(run1).read_genes()
    gpath = ws / "groups.csv"
    Grouping(genes[:40], [str(i % 3) for i in range(40)], "test").save(gpath)
    out = ws / "runs" / "frozen"
    assert main(["train", "--data", str(demo_dir), "--out", str(out), "--model", "frozen", "--grouping", str(gpath),
                 "--aug-policy", "none", "--epochs", "15", *TINY]) == 0
    r = RunDir(out)
    g = pd.read_csv(r.grouping_path)
    assert g["gene"].tolist() == genes
    assert sorted(set(g["group"])) == ["0", "1", "2", "ungrouped"]
    assert r.read_config()["grouping"]["n_groups"] == 4
    assert read_status(r)["state"] == "finished"
    assert read_metrics(r)["epoch"].tolist() == list(range(1, 16))  # --epochs applies to the frozen heads
    assert r.best_checkpoint.is_file() and r.last_checkpoint.is_file()
    from mai_core.runs import load_predictor

    p = load_predictor(out, device="cpu")
    assert len(p.model.inner.heads) == 4


def _wait_for(pred, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_sigterm_stops_with_checkpoint_and_resume_finishes(demo_dir, ws, tmp_path):
    out = tmp_path / "stoppable"
    env = dict(os.environ, MAI_WORKSPACE=str(ws), HF_HUB_OFFLINE="1")
    tiny = TINY[:TINY.index("--batch-size")] + ["--batch-size", "8"] + TINY[TINY.index("--batch-size") + 2:]
    proc = subprocess.Popen([sys.executable, "-m", "mai_core", "train", "--data", str(demo_dir), "--out", str(out),
                             "--epochs", "3", "--tta", "off", *tiny], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = _wait_for(lambda: (read_status(out).get("progress") or 0) > 0, 180)
        assert started, "training did not start"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    st = read_status(out)
    assert st["state"] == "stopped" and st["error"] is None
    state = torch.load(RunDir(out).last_state, weights_only=True)
    done_epochs, step = state["epoch"], state["step_in_epoch"]
    assert done_epochs < 3
    assert RunDir(out).last_checkpoint.is_file()
    # resume continues the epoch count and finishes
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    st = read_status(out)
    assert st["state"] == "finished" and st["epoch"] == 3
    assert read_metrics(out)["epoch"].tolist() == [1, 2, 3]
    assert f"resuming at epoch {done_epochs + 1} step {step}" in RunDir(out).read_log()


@pytest.mark.slow
def test_torchrun_two_processes_on_gloo_write_one_run(demo_dir, ws, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to the interpreter")
    out = tmp_path / "ddp"
    env = dict(os.environ, MAI_WORKSPACE=str(ws), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "mai_core", "train",
                           "--data", str(demo_dir), "--out", str(out), "--epochs", "1", "--device", "cpu",
                           "--tta", "off", *TINY], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cpu x2" in RunDir(out).read_log()
    assert read_metrics(out)["epoch"].tolist() == [1]  # rank 0 alone writes the run directory
    st = read_status(out)
    assert st["state"] == "finished"
    cfg = RunDir(out).read_config()
    assert cfg["runtime"]["world_size"] == 2
    # validation predictions were gathered from both ranks: every validation row is present once
    vp = RunDir(out).read_val_predictions()
    assert len(vp) == cfg["split"]["n_val"] and vp["ID"].is_unique


def test_config_precedence_defaults_then_file_then_flags(tmp_path):
    from mai_core.training import resolve_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim:\n  epochs: 5\n  lr: 0.01\nloss:\n  alpha: 0.2\n")
    cfg = resolve_config({"optim": {"epochs": 3}}, cfg_file, device_type="cpu")
    assert cfg["optim"]["epochs"] == 3  # flag beats file
    assert cfg["optim"]["lr"] == 0.01  # file beats default
    assert cfg["loss"]["alpha"] == 0.2 and cfg["loss"]["beta"] == 0.4  # untouched default kept
    assert cfg["model"]["backbone"] == "efficientnet_lite0"  # CPU recipe


def test_config_file_typos_are_reported(tmp_path):
    from mai_core.errors import MaiError
    from mai_core.training import resolve_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim:\n  epoch: 5\nmodle:\n  kind: ridge\n")
    with pytest.raises(MaiError) as exc:
        resolve_config({}, cfg_file, device_type="cpu")
    text = exc.value.render()
    assert "optim.epoch" in text and "modle" in text


def test_split_modes(demo_dir):
    from mai_core.data.dataset import load_dataset
    from mai_core.errors import MaiError
    from mai_core.training import make_split

    ds = load_dataset(demo_dir)
    tr, va, _ = make_split(ds, {"val_fraction": 0.25}, seed=3)
    tr2, va2, _ = make_split(ds, {"val_fraction": 0.25}, seed=3)
    assert len(va) == 30 and not set(tr) & set(va) and (va == va2).all()  # seeded, disjoint
    folds = [make_split(ds, {"folds": 4, "fold": i}, seed=0)[1] for i in range(4)]
    assert sorted(np.concatenate(folds).tolist()) == list(range(120))  # folds partition the data
    with pytest.raises(MaiError) as exc:
        make_split(ds, {"val_sections": "C5"}, seed=0)
    assert "section" in exc.value.render()


def test_split_by_section_holds_out_whole_sections():
    from types import SimpleNamespace

    from mai_core.errors import MaiError
    from mai_core.training import make_split

    df = pd.DataFrame({"ID": [f"s{i}" for i in range(12)], "section": ["C2", "C3", "C4", "C5"] * 3})
    ds = SimpleNamespace(n_train=12, train=df, root=Path("."))
    tr, va, desc = make_split(ds, {"val_sections": "C5,C4"}, seed=0)
    assert set(df["section"].iloc[va]) == {"C4", "C5"} and set(df["section"].iloc[tr]) == {"C2", "C3"}
    with pytest.raises(MaiError) as exc:
        make_split(ds, {"val_sections": "C9"}, seed=0)
    assert "C9" in exc.value.render() and "C2" in exc.value.render()


def test_time_budget_ends_the_run_as_finished(demo_dir, ws, tmp_path):
    out = tmp_path / "budget"
    t0 = time.time()
    assert main(["train", "--data", str(demo_dir), "--out", str(out), "--epochs", "200", "--tta", "off",
                 "--max-train-minutes", "0.01", *TINY]) == 0
    assert time.time() - t0 < 120  # 200 epochs would take far longer
    st = read_status(out)
    assert st["state"] == "finished" and 1 <= st["epoch"] < 200
    assert read_metrics(out)["epoch"].tolist() == list(range(1, st["epoch"] + 1))
    assert "time budget" in RunDir(out).read_log()
    assert RunDir(out).val_predictions_path.is_file()
