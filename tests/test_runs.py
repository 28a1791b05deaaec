"""The run-directory layout: status, metrics, config readers and run listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mai_core.errors import MaiError
from mai_core.runs import (RunDir, append_metrics, list_runs, read_config, read_metrics, read_status,
                           truncate_metrics, write_config, write_status)


def test_paths_follow_the_layout(tmp_path):
    r = RunDir(tmp_path / "run1")
    assert r.config_path.name == "config.yaml"
    assert r.genes_path.name == "genes.txt"
    assert r.grouping_path.name == "grouping.csv"
    assert r.metrics_path.name == "metrics.jsonl"
    assert r.status_path.name == "status.json"
    assert r.last_checkpoint.relative_to(r.path).as_posix() == "checkpoints/last.safetensors"
    assert r.best_checkpoint.relative_to(r.path).as_posix() == "checkpoints/best.safetensors"
    assert r.last_state.relative_to(r.path).as_posix() == "checkpoints/last_state.pt"
    assert r.val_predictions_path.name == "val_predictions.parquet"
    assert r.log_path.name == "log.txt"


def test_status_merges_updates_and_stamps_time(tmp_path):
    r = RunDir(tmp_path / "run")
    write_status(r, state="running", epoch=1, epochs=5, pid=os.getpid())
    write_status(r, progress=0.5)
    s = read_status(r)
    assert (s["state"], s["epoch"], s["epochs"], s["progress"]) == ("running", 1, 5, 0.5)
    assert s["updated"] > 0 and s["stale"] is False
    assert s["error"] is None and "eta_s" in s  # every field present
    # no temporary files left behind
    assert sorted(p.name for p in r.path.iterdir()) == ["status.json"]


def test_unknown_state_is_refused(tmp_path):
    with pytest.raises(ValueError):
        write_status(tmp_path, state="sleeping")


def test_running_status_of_dead_process_is_stale(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    write_status(tmp_path, state="running", pid=dead_pid)
    assert read_status(tmp_path)["stale"] is True
    write_status(tmp_path, state="finished")
    assert read_status(tmp_path)["stale"] is False


def test_missing_status_reads_as_unknown(tmp_path):
    s = read_status(tmp_path)
    assert s["state"] == "unknown" and s["progress"] is None


def test_metrics_append_read_and_truncate(tmp_path):
    for e in (1, 2, 3):
        append_metrics(tmp_path, {"epoch": e, "train_loss": 1.0 / e, "val_loss": 0.5, "val_gene_pcc": 0.1 * e,
                                  "lr": 1e-3, "imgs_per_s": 10.0, "time": float(e)})
    df = read_metrics(tmp_path)
    assert df["epoch"].tolist() == [1, 2, 3]
    assert df["val_gene_pcc"].iloc[-1] == pytest.approx(0.3)
    truncate_metrics(tmp_path, 2)
    assert read_metrics(tmp_path)["epoch"].tolist() == [1, 2]


def test_metrics_empty_run_has_the_columns(tmp_path):
    df = read_metrics(tmp_path)
    assert len(df) == 0
    for col in ("epoch", "train_loss", "val_loss", "val_gene_pcc", "lr", "imgs_per_s", "time"):
        assert col in df.columns


def test_torn_metrics_line_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_gene_pcc": 0.2}) + "\n{\"epoch\": 2, \"val")
    assert read_metrics(tmp_path)["epoch"].tolist() == [1]


def test_config_roundtrip_and_missing_config(tmp_path):
    write_config(tmp_path, {"kind": "run", "model": {"backbone": "x"}})
    assert read_config(tmp_path)["model"]["backbone"] == "x"
    assert RunDir(tmp_path).kind == "run"
    with pytest.raises(MaiError) as exc:
        read_config(tmp_path / "nothing")
    assert "config.yaml" in exc.value.render()


def test_list_runs_finds_run_dirs_newest_first(tmp_path):
    for name, t in (("old", 1000), ("new", 2000)):
        write_config(tmp_path / name, {"kind": "run"})
        write_status(tmp_path / name, state="finished")
        os.utime(tmp_path / name / "status.json", (t, t))
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / ".hidden").mkdir()
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["new", "old"]
    assert list_runs(tmp_path / "missing") == []


def test_list_runs_defaults_to_workspace(workspace):
    write_config(workspace / "runs" / "a", {"kind": "ensemble"})
    runs = list_runs()
    assert [r.name for r in runs] == ["a"] and runs[0].kind == "ensemble"


def test_load_predictor_refuses_non_run(tmp_path):
    from mai_core.runs import load_predictor

    with pytest.raises(MaiError):
        load_predictor(tmp_path)
