"""The sidebar training form, job list and Results page, driven through Streamlit's AppTest.

The ``slow`` tests use the real ``python -m mai_core train`` on the demo data with a tiny config
(efficientnet_lite0 at 64 px, no test-time augmentation, 1-3 epochs).
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from mai_core.runs import jobs
from mai_core.runs import RunDir, read_metrics, write_config, write_status
from mai_core.app.tasks import get_task
from mai_core.app.training import REFRESH_KEY

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "4_Results.py")
FAST = ["--image-size", "64", "--tta", "off", "--val-fraction", "0.2"]


@pytest.fixture()
def app_env(demo_dir, workspace, monkeypatch):
    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return workspace


def _page(open_form: bool = False) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.run()
    assert not at.exception, at.exception
    if open_form:  # the sidebar's training form is drawn once the user opens it
        assert not [w for w in at.slider if w.key == "train_alpha"]
        at.session_state["train_form_open"] = True
        at.run()
        assert not at.exception, at.exception
    return at


def _fake_run(root: Path, name: str, y, pred, genes, state="finished", kind="run", best=0.4) -> RunDir:
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    write_config(run, {"kind": kind, "model": {"backbone": "resnet18"}, "loss": {"alpha": 0.5, "beta": 0.5},
                       "optim": {"epochs": 2}, "grouping": {"path": None}})
    write_status(run, state=state, epoch=2, epochs=2, best_val_gene_pcc=best, started=time.time() - 60)
    for e in (1, 2):
        with open(run.metrics_path, "a") as fh:
            fh.write(json.dumps({"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_gene_pcc": 0.2 * e}) + "\n")
    df = pd.DataFrame({"ID": [f"s{i}" for i in range(len(y))]})
    for j, g in enumerate(genes):
        df[f"pred:{g}"], df[f"true:{g}"] = pred[:, j], y[:, j]
    df.to_parquet(run.val_predictions_path, index=False)
    pd.DataFrame({"gene": genes, "group": ["A" if j % 2 else "B" for j in range(len(genes))]}).to_csv(
        run.grouping_path, index=False)
    return run


def test_results_page_without_runs_explains_what_to_do(app_env):
    at = _page(open_form=True)
    assert any("No runs yet" in i.value for i in at.info)
    assert at.session_state[REFRESH_KEY] is None  # nothing running: the job list does not auto-refresh
    assert any(b.label == "Start" for b in at.button)


def test_results_page_shows_runs_metrics_and_structure(app_env):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(30, 12))
    genes = [f"G{i}" for i in range(12)]
    _fake_run(app_env / "runs", "good", y, y + 0.2 * rng.normal(size=y.shape), genes, best=0.9)
    _fake_run(app_env / "runs", "bad", y, rng.normal(size=y.shape), genes, best=0.1)
    at = _page()
    table = at.dataframe[0].value
    assert set(table["name"]) == {"good", "bad"}
    assert set(table["state"]) == {"finished"}
    assert {"backbone", "loss α / β", "grouping", "epochs", "best val PCC", "final val PCC", "test PCC",
            "time"} <= set(table.columns)
    assert table.set_index("name").loc["good", "best val PCC"] == "0.9000"  # scores as words, no None
    assert "None" not in table.astype(str).to_numpy()
    # details of the first (newest) run: PCC summary, cluster table, scatter
    assert any(m.label.startswith("final val gene-PCC") for m in at.metric)
    assert any(m.label == "best val gene-PCC (1 view, during training)" for m in at.metric)
    frames = [d.value for d in at.dataframe]
    assert any("mean_pcc" in f.columns and set(f["group"]) == {"A", "B"} for f in frames)
    # only the selected tab is computed: the other tabs' tables are not there yet
    assert not any("correlation fidelity" in f.columns or "pathway" in f.columns for f in frames)
    # correlation structure: the fidelity number per selected run
    at.session_state["results_tab"] = "Correlation structure"  # the user opens the tab
    at.run()
    assert not at.exception, at.exception
    frames = [d.value for d in at.dataframe]
    fid = next(f for f in frames if "correlation fidelity" in f.columns)
    assert len(fid) == 1 and np.isfinite(fid["correlation fidelity"].iloc[0])
    assert not any("mean_pcc" in f.columns for f in frames)
    # strategies of the selected run, read from its config
    at.session_state["results_tab"] = "Compare & ensemble"
    at.run()
    strat = next(f for f in (d.value for d in at.dataframe) if "pathway" in f.columns)
    assert len(strat) == 1 and strat["loss"].iloc[0] == "MSE 0.5 + Pearson 0.5"
    at.session_state["results_tab"] = "Run details"
    at.run()
    at.selectbox(key="results_run").set_value("good").run()
    assert not at.exception
    gene_pcc = next(m for m in at.metric if m.label.startswith("final val gene-PCC"))
    assert float(gene_pcc.value) > 0.8


def test_bad_loss_weights_are_refused_in_the_form(app_env):
    at = _page(open_form=True)
    at.slider(key="train_alpha").set_value(0.8)
    at.slider(key="train_beta").set_value(0.5)
    at.button(key="train_start").click().run()
    assert any("exceeds 1" in e.value for e in at.error)
    assert jobs.list_jobs() == []


def _wait(pred, timeout, poll=0.5):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s")


@pytest.mark.slow
def test_sidebar_job_runs_to_completion_and_appears_in_results(app_env):
    at = _page(open_form=True)
    at.selectbox(key="train_backbone").set_value("efficientnet_lite0")
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_batch_size").set_value(16)
    at.selectbox(key="train_device").set_value("cpu")
    at.text_input(key="train_name").set_value("e2e")
    at.text_input(key="train_extra").set_value(" ".join(FAST))
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    assert at.session_state[REFRESH_KEY] == 2.0  # live job list while the job is active
    assert any("e2e" in s.value for s in at.success)
    run = RunDir(app_env / "runs" / "e2e")
    seen = set()

    def progressed():
        st_ = run.read_status()
        if st_.get("state") == "running":
            seen.add(round(float(st_.get("progress") or 0), 3))
        return st_.get("state") in ("finished", "failed", "stopped") and st_

    final = _wait(progressed, 600, poll=0.2)
    assert final["state"] == "finished", run.read_log()[-2000:]
    assert len(seen) >= 2 and min(seen) < max(seen)  # progress advanced while it ran
    assert jobs.job_info("e2e").state == "finished"
    at.run()
    assert not at.exception
    assert at.session_state[REFRESH_KEY] is None  # finished: no auto-refresh any more
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["e2e", "state"] == "finished" and table.loc["e2e", "backbone"] == "efficientnet_lite0"
    assert np.isfinite(float(table.loc["e2e", "best val PCC"]))
    assert len(read_metrics(run.path)) == 1
    assert any(m.label.startswith("final val gene-PCC") for m in at.metric)
    # submission for the dataset's test.csv, predicted by the finished run
    at.session_state["results_tab"] = "Submission"
    at.run()
    at.selectbox(key="results_sub_run").set_value("e2e")
    at.button(key="results_sub_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # the prediction runs in the background with a count and Cancel; the page shows the file when it ends
    key, _ = at.session_state["_mai_submission"]
    task = _wait(lambda: (t := get_task(key)) is not None and not t.running and t, 600)
    assert task.ok, task.error
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    fname, data = at.session_state["results_submission"]
    sub = pd.read_csv(io.BytesIO(data))
    test_ids = pd.read_csv(Path(os.environ["MAI_DATA"]) / "test.csv")["ID"].astype(str).tolist()
    assert fname == "submission-e2e.csv" and sub["ID"].astype(str).tolist() == test_ids
    assert list(sub.columns[1:]) == run.read_genes() and np.isfinite(sub.iloc[:, 1:].to_numpy()).all()


@pytest.mark.slow
def test_real_training_queue_stop_kill_and_resume(app_env, demo_dir):
    def spec(name, epochs):
        return jobs.TrainSpec(data=str(demo_dir), name=name, backbone="efficientnet_lite0", epochs=epochs,
                              batch_size=16, device="cpu", extra=list(FAST))

    jobs.submit(spec("long", 3))
    _wait(lambda: jobs.job_info("long").state == "running" and (jobs.job_info("long").progress or 0) > 0, 300)
    queued = jobs.submit(spec("next", 1))
    assert queued.state == "queued"  # one job per device

    # stop: graceful, checkpoint written, resumable; the queued job then starts by itself
    stopped = jobs.stop("long", wait_s=120)
    assert stopped.state == "stopped" and stopped.resumable
    assert RunDir(stopped.run_dir).last_state.is_file()
    assert jobs.wait("next", timeout_s=600).state == "finished"

    # resume continues; a kill -9 in the middle is reported as failed with the reason
    jobs.resume("long")
    _wait(lambda: jobs.read_record("long").get("pid") and jobs.job_info("long").state == "running", 120)
    time.sleep(2)
    os.kill(jobs.read_record("long")["pid"], signal.SIGKILL)
    failed = _wait(lambda: (i := jobs.job_info("long")).state == "failed" and i, 60)
    assert "killed by SIGKILL" in failed.error
    assert failed.resumable

    jobs.resume("long")
    done = jobs.wait("long", timeout_s=600)
    assert done.state == "finished", done.error
    m = read_metrics(done.run_dir)
    assert sorted(m["epoch"].astype(int)) == [1, 2, 3]  # every epoch once, despite stop + kill


def _notice_script():
    import streamlit as st

    from mai_core.app.results import submission_notice

    submission_notice(st.session_state.get("tab_open", False))


def test_a_submission_predicting_behind_a_closed_tab_is_announced_above_the_tabs():
    import threading

    from mai_core.app.tasks import forget_task, start_task

    release = threading.Event()

    def work(report):
        for i in range(1000):
            report(i, 40)
            if release.wait(0.05):
                return b"ID\n"
        return b""

    key = "submission:test-notice"
    forget_task(key)
    start_task(key, "Predicting test.csv with r1", work, unit="patches")
    try:
        at = AppTest.from_function(_notice_script, default_timeout=30)
        at.session_state["_mai_submission"] = (key, "submission-r1.csv")
        at.run()
        said = " ".join(c.value for c in at.caption)
        assert "Predicting test.csv with r1:" in said and "of 40 patches so far" in said and "Submission" in said
        at.session_state["tab_open"] = True  # the tab draws its own progress panel: no second line
        at.run()
        assert not at.caption and not at.success
        release.set()
        _wait(lambda: not get_task(key).running, 30, poll=0.05)
        at.session_state["tab_open"] = False
        at.run()
        assert not at.exception
        assert [s.value for s in at.success] == ["Predicting test.csv with r1: done. Open the **Submission** tab to "
                                                 "download the file."]
    finally:
        release.set()
        forget_task(key)
