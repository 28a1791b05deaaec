"""The queue runner: one detached process per device that runs its queued jobs one after another.

:func:`spawn_runner` starts ``python -m mai_core jobs run-queue --device DEV`` in its own session; the
runner takes the device lock without waiting (a second runner for the same device exits at once), starts
the oldest queued job of its device, waits for it, records how it ended, and goes on with the next until
the device's queue is empty. :func:`exit_reason` puts a process's end into words.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from mai_core.device import device_name
from mai_core.errors import MaiError
from mai_core.procs import process_start_time
from mai_core.runs.jobstore import (TERMINAL, all_records, device_lock, device_slug, jobs_root, read_record,
                                    records_lock, update_record, write_record)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


_EXC_RE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?$")


def error_from_log(text: str) -> str | None:
    """The error of a failed run in words, from the tail of its log.

    Prefers the program's own ``error: ...`` message (with its problem lines and hint); falls back to
    the last exception line of a traceback (``ValueError: ...``); None when nothing looks like an error.
    """
    lines = [ln.rstrip() for ln in text.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error: "):
            out = [lines[i]]
            for ln in lines[i + 1:i + 8]:
                if ln.startswith("  - ") or ln.startswith("hint: "):
                    out.append(ln)
                else:
                    break
            return "\n".join(out)
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i].strip()
        if ln and _EXC_RE.match(ln) and not ln.startswith("Traceback"):
            return ln
    return None


def log_file_tail(path: Path, n_chars: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - n_chars))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def spawn_runner(device: str) -> int:
    """Start a detached queue runner for ``device`` (it exits at once if one is already working)."""
    log = jobs_root() / f"runner-{device_slug(device)}.log"
    with open(log, "a") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mai_core", "jobs", "run-queue", "--device", device],
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=child_env())
    return proc.pid


def job_nice() -> int:
    """How much lower than the app's the CPU priority of a job is: ``MAI_JOB_NICE`` (0–19), 10 by default.

    A job shares the CPU cores with the app that started it; at a lower priority it takes every core the app
    and its users leave idle, and gives them back as soon as a page has work to do, so pages stay responsive
    while a model trains. It changes nothing on a machine with cores to spare (or for the GPU's own work).
    """
    try:
        return min(19, max(0, int(os.environ.get("MAI_JOB_NICE", "10"))))
    except ValueError:
        return 10


def _lower_priority() -> None:
    """Runs in the job's process before it starts (the queue runner has no other threads)."""
    try:
        os.nice(job_nice())
    except OSError:
        pass


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    # make `python -m mai_core` resolve to this very package, whatever the caller's working folder
    import mai_core

    pkg_root = str(Path(mai_core.__file__).resolve().parents[1])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _next_queued(device: str) -> dict | None:
    for rec in all_records():
        if rec.get("device") == device and rec.get("state") == "queued":
            return rec
    return None


def run_queue(device: str, poll_s: float = 0.0) -> int:
    """Work through the queue of ``device``; returns the number of jobs run by this runner.

    Holds ``device-<dev>.lock`` while working, so at most one job runs per device. After releasing
    it, looks once more: a job queued while it was letting go is picked up (by it or a new runner).
    """
    device = device_name(device)
    n = 0
    while True:
        with device_lock(device) as owned:
            if not owned:
                return n  # another runner owns this device; it will pick our job up
            while True:
                with records_lock():
                    rec = _next_queued(device)
                    if rec is not None:
                        rec.update(state="launching", runner_pid=os.getpid())
                        write_record(rec)
                if rec is None:
                    break
                _run_one(rec)
                n += 1
        if _next_queued(device) is None:
            return n
        if poll_s:
            time.sleep(poll_s)


def _run_one(rec: dict) -> None:
    from mai_core.runs.rundir import RunDir

    run = RunDir(rec["run_dir"])
    run.path.mkdir(parents=True, exist_ok=True)
    if run.status_path.is_file() and run.read_status().get("state") in TERMINAL:
        # a resumed run: its status still tells the previous attempt's end until training starts
        run.write_status(state="queued", error=None, eta_s=None)
    with open(run.log_path, "a") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"[{stamp}] job {rec['id']}: {' '.join(rec['argv'])}\n")
        log.flush()
        try:
            proc = subprocess.Popen(rec["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, env=child_env(),
                                    preexec_fn=_lower_priority if hasattr(os, "nice") else None)
        except OSError as exc:
            update_record(rec["id"], state="done", returncode=-1, ended=time.time(),
                           launch_error=f"could not start the training process: {exc}")
            _mark_failed(run, f"could not start the training process: {exc}")
            return
        update_record(rec["id"], state="running", pid=proc.pid, pid_start=process_start_time(proc.pid),
                       started=time.time())
        rc = proc.wait()
    with records_lock():
        try:
            current = read_record(rec["id"])
        except MaiError:
            return  # forgotten meanwhile
        if current.get("pid") != proc.pid or current.get("state") != "running":
            return  # already re-queued (resumed) by someone: that attempt owns the record now
        current.update(state="done", returncode=rc, ended=time.time())
        write_record(current)
        if run.read_status().get("state") not in TERMINAL:
            _mark_failed(run, exit_reason(proc.pid, rc, run))


def exit_reason(pid, rc: int | None, run) -> str:
    if rc is None:
        what = f"process {pid} exited without finishing (killed?)"
    elif rc < 0:
        what = f"process {pid} was killed by {_signal_name(-rc)} before finishing"
    else:
        what = f"process {pid} exited with code {rc} without finishing"
    err = error_from_log(log_file_tail(run.log_path))
    return f"{what}; {err}" if err else what


def _mark_failed(run, reason: str) -> None:
    try:
        run.write_status(state="failed", error=reason)
    except OSError:
        pass


