"""Job manager mechanics: queue, one job per device, stop/resume, crash detection, CLI.

These use a tiny stand-in program that follows the training's status protocol (status.json,
checkpoint, SIGTERM -> stopped), so they run in a second; the real training is exercised by
tests/test_pages_results.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mai_core.device import device_name
from mai_core.procs import process_alive, process_start_time
from mai_core.runs import jobs, jobstore
from mai_core.errors import MaiError

FAKE_TRAIN = textwrap.dedent(
    """
    import json, os, signal, sys, time
    args = sys.argv[1:]
    out = args[args.index("--out") + 1]
    epochs = int(args[args.index("--epochs") + 1])
    step = float(args[args.index("--step") + 1])
    fail_at = int(args[args.index("--fail-at") + 1]) if "--fail-at" in args else None
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    def status(**kw):
        p = os.path.join(out, "status.json")
        old = json.load(open(p)) if os.path.exists(p) else {}
        old.update(kw, updated=time.time())
        open(p + ".tmp", "w").write(json.dumps(old)); os.replace(p + ".tmp", p)
    start = 0
    if "--resume" in args:
        start = int(open(os.path.join(out, "checkpoints", "last_state.pt")).read())
        print("resuming from epoch", start, flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    status(state="running", pid=os.getpid(), epoch=start, epochs=epochs, progress=start / epochs)
    for e in range(start + 1, epochs + 1):
        time.sleep(step)
        if fail_at == e:
            print("Traceback (most recent call last):\\n  File x\\nValueError: bad batch shape", flush=True)
            sys.exit(1)
        open(os.path.join(out, "checkpoints", "last_state.pt"), "w").write(str(e))
        status(epoch=e, progress=e / epochs, eta_s=(epochs - e) * step, best_val_gene_pcc=0.1 * e)
        print("epoch", e, flush=True)
        if stopping:
            status(state="stopped")
            print("stopped at epoch", e, flush=True)
            sys.exit(0)
    status(state="finished", progress=1.0)
    """
)


@pytest.fixture()
def fake_train(tmp_path) -> Path:
    p = tmp_path / "fake_train.py"
    p.write_text(FAKE_TRAIN)
    return p


def _submit(workspace, fake_train, name, epochs=3, step=0.1, extra=(), device="cpu"):
    out = workspace / "runs" / name
    cmd = [sys.executable, str(fake_train), "--out", str(out), "--epochs", str(epochs), "--step", str(step), *extra]
    spec = jobs.TrainSpec(data=str(workspace), name=name, device=device)
    return jobs.submit(spec, command=cmd)


def _wait_for(pred, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_job_runs_in_background_and_finishes(workspace, fake_train):
    info = _submit(workspace, fake_train, "a", epochs=3)
    assert info.state in ("queued", "running")
    done = jobs.wait("a", timeout_s=30)
    assert done.state == "finished", done.error
    assert done.progress == 1.0 and done.epoch == 3
    assert "epoch 3" in (workspace / "runs" / "a" / "log.txt").read_text()  # output went to the run's log


def test_second_job_on_same_device_is_queued_then_runs(workspace, fake_train):
    _submit(workspace, fake_train, "first", epochs=4, step=0.4)
    _wait_for(lambda: jobs.job_info("first").state == "running")
    second = _submit(workspace, fake_train, "second", epochs=1, step=0.05)
    assert second.state == "queued" and second.queue_position == 1
    # while the first runs, the second must not have started
    time.sleep(0.5)
    assert jobs.job_info("second").state == "queued"
    assert not (workspace / "runs" / "second" / "status.json").exists()
    assert jobs.wait("second", timeout_s=40).state == "finished"
    first = jobs.job_info("first")
    assert first.state == "finished"
    rec1, rec2 = jobs.read_record("first"), jobs.read_record("second")
    assert rec2["started"] >= rec1["ended"]  # strictly one after the other


def test_stop_then_resume_continues_from_checkpoint(workspace, fake_train):
    _submit(workspace, fake_train, "s", epochs=20, step=0.15)
    _wait_for(lambda: (jobs.job_info("s").epoch or 0) >= 2)
    info = jobs.stop("s", wait_s=10)
    assert info.state == "stopped"
    assert info.resumable
    stopped_at = info.epoch
    assert stopped_at < 20
    with pytest.raises(MaiError):
        jobs.stop("s")  # not running any more
    jobs.resume("s")
    done = jobs.wait("s", timeout_s=40)
    assert done.state == "finished" and done.epoch == 20
    log = (workspace / "runs" / "s" / "log.txt").read_text()
    assert f"resuming from epoch {stopped_at}" in log


def test_killed_process_is_reported_failed_with_reason(workspace, fake_train):
    _submit(workspace, fake_train, "k", epochs=50, step=0.2)
    _wait_for(lambda: (jobs.job_info("k").epoch or 0) >= 1 and jobs.read_record("k").get("pid"))
    pid = jobs.read_record("k")["pid"]
    os.kill(pid, signal.SIGKILL)
    info = _wait_for(lambda: (i := jobs.job_info("k")).state == "failed" and i)
    assert f"process {pid}" in info.error and ("SIGKILL" in info.error or "killed" in info.error)
    # the run's own status tells the same story once the runner has noticed
    status = _wait_for(lambda: (s := json.loads((workspace / "runs" / "k" / "status.json").read_text()))
                       ["state"] == "failed" and s)
    assert "SIGKILL" in status["error"]
    assert info.resumable  # a checkpoint exists: it can be continued


def test_vanished_process_detected_without_runner(workspace, fake_train):
    """Even when nobody waited for the process (runner gone too), a dead pid means failed."""
    run = workspace / "runs" / "ghost"
    (run / "checkpoints").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": 999999, "epoch": 1, "epochs": 3}))
    (run / "log.txt").write_text("epoch 1\nerror: CUDA out of memory\nhint: lower the batch size\n")
    rec = {"id": "ghost", "run_dir": str(run), "device": "cpu", "argv": ["x"], "state": "running",
           "queued_at": 1.0, "pid": 999999, "pid_start": 1, "runner_pid": 999998}
    (jobstore.jobs_root() / "ghost.json").write_text(json.dumps(rec))
    info = jobs.job_info("ghost")
    assert info.state == "failed"
    assert "process 999999 exited without finishing (killed?)" in info.error
    assert "error: CUDA out of memory" in info.error and "lower the batch size" in info.error


def test_pid_reuse_is_not_mistaken_for_the_job(workspace):
    me = os.getpid()
    assert process_alive(me, process_start_time(me))
    assert not process_alive(me, process_start_time(me) + 12345)  # same pid, other process


def test_failed_job_explains_error_in_words(workspace, fake_train):
    _submit(workspace, fake_train, "f", epochs=3, step=0.05, extra=["--fail-at", "2"])
    info = jobs.wait("f", timeout_s=30)
    assert info.state == "failed"
    assert "exited with code 1" in info.error
    assert "ValueError: bad batch shape" in info.error


def test_stop_queued_job_removes_it_from_queue(workspace, fake_train):
    _submit(workspace, fake_train, "long", epochs=20, step=0.2)
    _wait_for(lambda: jobs.job_info("long").state == "running")
    _submit(workspace, fake_train, "waiting", epochs=1, step=0.05)
    assert jobs.stop("waiting").state == "stopped"
    jobs.stop("long", wait_s=10)
    time.sleep(1.0)
    assert not (workspace / "runs" / "waiting" / "status.json").exists()  # never started


def test_bad_specs_are_rejected_with_clear_errors(workspace, fake_train):
    with pytest.raises(MaiError) as e:
        jobs.submit(jobs.TrainSpec(data=str(workspace), name="bad name!", alpha=0.8, beta=0.5), spawn=False)
    text = e.value.render()
    assert "run name" in text and "alpha + beta = 1.30 exceeds 1" in text
    _submit(workspace, fake_train, "dup", epochs=1, step=0.01)
    with pytest.raises(MaiError, match="already exists"):
        jobs.submit(jobs.TrainSpec(data=str(workspace), name="dup"), spawn=False)
    with pytest.raises(MaiError, match="unknown device"):
        device_name("tpu")
    jobs.wait("dup", timeout_s=20)


def test_train_command_line_from_spec(workspace):
    spec = jobs.TrainSpec(data=str(workspace), backbone="efficientnet_lite0", epochs=2, batch_size=8,
                          alpha=0.3, beta=0.2, aug_policy="light", device="cpu")
    args = spec.train_args(Path("/x/run"), "cpu")
    assert args[:4] == ["--data", str(workspace.resolve()), "--out", "/x/run"]
    joined = " ".join(args)
    for part in ("--backbone efficientnet_lite0", "--epochs 2", "--batch-size 8", "--alpha 0.3",
                 "--beta 0.2", "--aug-policy light", "--device cpu"):
        assert part in joined
    assert "--grouping" not in joined


def test_error_from_log_prefers_program_message():
    log = "epoch 1\nTraceback (most recent call last):\n  File 'x'\nRuntimeError: boom\n"
    assert jobs.error_from_log(log) == "RuntimeError: boom"
    log2 = "loading\nerror: dataset /d has 2 problems\n  - train.csv: missing\nhint: run validate\nmore\n"
    assert jobs.error_from_log(log2) == "error: dataset /d has 2 problems\n  - train.csv: missing\nhint: run validate"
    assert jobs.error_from_log("all good\n") is None


def test_cli_list_stop_resume(workspace, fake_train, capsys):
    from mai_core.cli import main

    _submit(workspace, fake_train, "c", epochs=30, step=0.15)
    _wait_for(lambda: (jobs.job_info("c").epoch or 0) >= 1)
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert "c " in out and "running" in out
    assert main(["jobs", "stop", "c", "--wait", "10"]) == 0
    assert "c: stopped (resumable)" in capsys.readouterr().out
    assert main(["jobs", "resume", "c"]) == 0
    capsys.readouterr()
    assert main(["jobs", "stop", "nope"]) == 2
    assert "no job named 'nope'" in capsys.readouterr().err
    jobs.stop("c", wait_s=10)


def test_jobs_on_different_devices_run_side_by_side(workspace, fake_train):
    _submit(workspace, fake_train, "on-cpu", epochs=6, step=0.3, device="cpu")
    other = _submit(workspace, fake_train, "on-gpu", epochs=6, step=0.3, device="cuda:1")
    assert other.device == "cuda:1"
    # each device has its own queue: both run at the same time
    _wait_for(lambda: jobs.job_info("on-cpu").state == "running" and jobs.job_info("on-gpu").state == "running")
    assert jobs.wait("on-cpu", 30).state == "finished" and jobs.wait("on-gpu", 30).state == "finished"


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no process priorities on this system")
@pytest.mark.parametrize("setting, lower", [(None, 10), ("0", 0), ("25", 19)])
def test_jobs_run_at_a_lower_cpu_priority_than_the_app(workspace, fake_train, monkeypatch, setting, lower):
    """A job yields the cores to the app's pages: it runs MAI_JOB_NICE (default 10) steps lower."""
    if setting is None:
        monkeypatch.delenv("MAI_JOB_NICE", raising=False)
    else:
        monkeypatch.setenv("MAI_JOB_NICE", setting)
    probe = fake_train.parent / "probe.py"
    probe.write_text(fake_train.read_text().replace('print("epoch", e, flush=True)',
                                                    'print("epoch", e, "nice", os.nice(0), flush=True)'))
    name = f"nice{lower}"
    _submit(workspace, probe, name, epochs=1, step=0.01)
    assert jobs.wait(name, timeout_s=30).state == "finished"
    log = (workspace / "runs" / name / "log.txt").read_text()
    assert f"epoch 1 nice {min(19, os.nice(0) + lower)}" in log, log
