"""Background training jobs: a small on-disk queue with one running job per device.

A job is one ``python -m mai_core train ...`` process writing into its run directory. It never runs
inside a Streamlit script thread: it is a separate process in its own session, so it survives page
reloads, navigation and closed tabs, and everyone looking at the workspace sees the same truth.

On disk (``workspace jobs_dir()``)::

    <job id>.json       the job record: command, run dir, device, queue state, process id + start time
    device-<dev>.lock   held by the queue runner of that device while it works
    records.lock        serialises read-modify-write of job records
    runner-<dev>.log    output of the queue runner itself (not of the training)

Lifecycle: :func:`submit` writes a record in state ``queued`` and spawns a queue runner
(``python -m mai_core jobs run-queue --device DEV``). The runner takes the device lock without
waiting (a second runner for the same device exits at once), then starts the oldest queued job of
its device, waits for it, and goes on with the next, until the device's queue is empty. The queue
therefore advances with no page open.

The state shown to users (:func:`job_info`) merges the record with the run's ``status.json``
(written by the training itself: epoch, progress, ETA, best validation PCC). A job whose process has
vanished while ``status.json`` still says running is reported ``failed`` with the reason in words;
the process is identified by pid *and* its start time, so a recycled pid is not mistaken for it.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mai_core.device import device_name
from mai_core.errors import MaiError, Problem
from mai_core.procs import process_alive
from mai_core.runs.jobstore import (TERMINAL, all_records, device_lock, read_record, record_path, records_lock,
                                    update_record, write_record)
from mai_core.runs.queue import error_from_log, exit_reason, log_file_tail, spawn_runner

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_FLOAT32_MAX = 3.4028234663852886e38


def _number(kind, lo=None, hi=None):
    """A value check for one option: a whole number (``int``) or a finite number (``float``) in [lo, hi]."""
    def check(text: str) -> str | None:
        try:
            v = kind(text)
        except (TypeError, ValueError):
            return "expects a whole number" if kind is int else "expects a number"
        if kind is float and not math.isfinite(v):
            return "expects a finite number"
        if kind is float and abs(v) > _FLOAT32_MAX:
            return "expects a number that fits a 32-bit float (at most 3.4e38 in size)"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"expects a value in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        return None
    return check


def _choice(*values):
    def check(text: str) -> str | None:
        return None if text in values else f"expects one of {', '.join(values)}"
    return check


def _pattern(rx: str, what: str):
    compiled = re.compile(rx)

    def check(text: str) -> str | None:
        return None if compiled.fullmatch(text) else f"expects {what}"
    return check


# The `train` options the app's "More train options" field accepts (exact spelling), each with its value
# check (None: a switch without value). Everything else is refused: the dataset, output folder, device and
# resume are the form's own fields, and options that take a file path (--config, --grouping, --aug-policy
# as a file, --weights as a file) cannot be given from a web form.
EXTRA_TRAIN_OPTIONS: dict = {
    "--model": _choice("finetune", "frozen", "ridge"),
    "--backbone": _pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}", "a backbone name (see the Backbone list)"),
    "--weights": _choice("auto", "pretrained", "random"),
    "--epochs": _number(int, 1, 100_000),
    "--batch-size": _number(int, 1, 65_536),
    "--lr": _number(float, 0, 10),
    "--backbone-lr-mult": _number(float, 0, 10),
    "--alpha": _number(float, 0, 1),
    "--beta": _number(float, 0, 1),
    "--pearson": _choice("sample", "gene", "both"),
    "--head": _choice("linear", "mlp"),
    "--pca": _number(int, 0, 100_000),
    "--aug-policy": _pattern(r"(?!.*\.ya?ml$)[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "a policy name (see the policy list)"),
    "--ema": _number(float, 0, 1),
    "--tta": _choice("on", "off", "1", "2", "4", "8"),
    "--train-blocks": _number(int, -1, 1000),
    "--freeze-blocks": _number(int, 0, 1000),
    "--image-size": _number(int, 32, 1024),
    "--val-fraction": _number(float, 0, 0.9),
    "--val-sections": _pattern(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*", "comma-separated section names"),
    "--folds": _number(int, 0, 1000),
    "--fold": _number(int, 0, 1000),
    "--seed": _number(int, 0, 2**32 - 1),
    "--compile": None,
    "--no-spatial-context": None,
    "--workers": _number(int, 0, 64),
    "--max-train-minutes": _number(float, 0, 1e7),
    "--quiet": None,
}


def check_extra_options(tokens: list[str]) -> list[Problem]:
    """Problems with extra ``train`` options (parsed against :data:`EXTRA_TRAIN_OPTIONS`, never guessed)."""
    problems: list[Problem] = []
    i = 0
    tokens = [str(t) for t in tokens]
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        name, eq, value = tok.partition("=")
        shown = name if len(name) <= 40 else name[:40] + "…"
        if not name.startswith("--"):
            problems.append(Problem("more train options", f"'{shown}' is not an option",
                                    "write options as --name value, e.g. --lr 3e-4"))
            continue
        if name not in EXTRA_TRAIN_OPTIONS:
            problems.append(Problem("more train options", f"{shown} is not accepted here",
                                    "use one of " + ", ".join(EXTRA_TRAIN_OPTIONS)
                                    + " (spelled in full; data, run name and device have their own fields)"))
            if not eq and i < len(tokens) and not tokens[i].startswith("-"):
                i += 1  # its value, if it has one: not reported again
            continue
        check = EXTRA_TRAIN_OPTIONS[name]
        if check is None:
            if eq:
                problems.append(Problem("more train options", f"{name} takes no value", f"write just {name}"))
            continue
        if not eq:
            if i >= len(tokens) or (tokens[i].startswith("--")):
                problems.append(Problem("more train options", f"{name} needs a value", f"write {name} VALUE"))
                continue
            value = tokens[i]
            i += 1
        why = check(value)
        if why:
            problems.append(Problem("more train options", f"{name} {why}", "see `python -m mai_core train --help`"))
    return problems


@dataclass
class TrainSpec:
    """What the sidebar form (or a script) asks to train; turned into a ``train`` command line."""

    data: str
    name: str = ""
    backbone: str | None = None
    model: str | None = None  # finetune | frozen | ridge (train's --model)
    epochs: int | None = None
    batch_size: int | None = None
    alpha: float | None = None
    beta: float | None = None
    grouping: str | None = None
    aug_policy: str | None = None
    device: str = "auto"
    extra: list[str] = field(default_factory=list)

    def validate(self) -> None:
        problems = []
        if self.name and not _NAME_RE.match(self.name):
            problems.append(Problem("run name", f"'{self.name}' is not a valid name",
                                    "use letters, digits, '.', '_' or '-' (up to 80, no spaces)"))
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            problems.append(Problem("alpha", f"{self.alpha} is outside [0, 1]", "pick a weight between 0 and 1"))
        if self.beta is not None and not 0 <= self.beta <= 1:
            problems.append(Problem("beta", f"{self.beta} is outside [0, 1]", "pick a weight between 0 and 1"))
        if self.alpha is not None and self.beta is not None and self.alpha + self.beta > 1 + 1e-9:
            problems.append(Problem("loss weights", f"alpha + beta = {self.alpha + self.beta:.2f} exceeds 1",
                                    "lower alpha or beta (the MSE term gets 1 - alpha - beta)"))
        if self.epochs is not None and int(self.epochs) < 1:
            problems.append(Problem("epochs", f"{self.epochs} < 1", "train for at least one epoch"))
        if self.batch_size is not None and int(self.batch_size) < 1:
            problems.append(Problem("batch size", f"{self.batch_size} < 1", "use a batch size of 1 or more"))
        for flag, value in (("--model", self.model), ("--backbone", self.backbone), ("--aug-policy", self.aug_policy)):
            why = EXTRA_TRAIN_OPTIONS[flag](str(value)) if value not in (None, "") else None
            if why:
                problems.append(Problem(flag.lstrip("-"), f"{flag} {why}", "pick a value from the form's list"))
        problems += check_extra_options(self.extra)
        if not Path(self.data).expanduser().is_dir():
            problems.append(Problem("dataset", f"{self.data} is not a folder", "choose an existing dataset"))
        if self.grouping and not Path(self.grouping).expanduser().is_file():
            problems.append(Problem("grouping", f"{self.grouping} not found", "pick a saved grouping or none"))
        if problems:
            raise MaiError("cannot start training", problems)

    def train_args(self, out: Path, device: str) -> list[str]:
        args = ["--data", str(Path(self.data).expanduser().resolve()), "--out", str(out)]
        for flag, value in (("--model", self.model), ("--backbone", self.backbone), ("--epochs", self.epochs),
                            ("--batch-size", self.batch_size), ("--alpha", self.alpha), ("--beta", self.beta),
                            ("--grouping", self.grouping), ("--aug-policy", self.aug_policy)):
            if value is not None and value != "":
                args += [flag, str(value)]
        # --quiet: no progress bars in log.txt; progress is read from status.json instead
        return args + ["--device", device, "--quiet"] + list(self.extra)


def train_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "mai_core", "train", *args]


def _default_name(spec: TrainSpec) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", (spec.backbone or "run"))[:40].strip("-") or "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _name_reusable(name: str, runs_root: Path) -> bool:
    """A run name is free, or names an ended job whose run never got past its start (nothing to lose)."""
    from mai_core.runs.rundir import has_progress, holds_run

    if record_path(name).exists():
        try:
            if job_info(name).is_active:
                return False
        except MaiError:
            return False
    run = runs_root / name
    if not run.exists():
        return True
    return run.is_dir() and holds_run(run) and not has_progress(run)


def _unique_name(base: str, runs_root: Path) -> str:
    taken = {r["id"] for r in all_records()}
    name, i = base, 2
    while name in taken or (runs_root / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


@dataclass
class JobInfo:
    """A job as users see it (record + status.json + process liveness)."""

    id: str
    run_dir: Path
    device: str
    state: str
    epoch: int | None = None
    epochs: int | None = None
    progress: float = 0.0
    eta_s: float | None = None
    best_val_gene_pcc: float | None = None
    error: str | None = None
    pid: int | None = None
    queued_at: float | None = None
    started: float | None = None
    updated: float | None = None
    queue_position: int | None = None
    resumable: bool = False
    command: list[str] = field(default_factory=list)
    phase: str | None = None  # work after the epochs (e.g. the final validation), with its counts
    phase_done: int | None = None
    phase_total: int | None = None

    @property
    def is_active(self) -> bool:
        return self.state in ("queued", "running")

    def as_row(self) -> dict:
        return {"job": self.id, "state": self.state, "device": self.device,
                "epoch": f"{self.epoch or 0}/{self.epochs or '?'}", "progress": round(self.progress, 3),
                "eta_s": self.eta_s, "best_val_gene_pcc": self.best_val_gene_pcc, "error": self.error or ""}


def submit(spec: TrainSpec, runs_root: str | os.PathLike | None = None, *, command: list[str] | None = None,
           spawn: bool = True) -> JobInfo:
    """Queue a training job and make sure its device's queue runner is working.

    It starts right away when its device is free, otherwise waits its turn (state ``queued``).
    ``command`` replaces the ``train`` command line (used to run other programs under the same
    queue); ``spawn=False`` only writes the record.
    """
    from mai_core.workspace import runs_dir

    spec.validate()
    device = device_name(spec.device)
    root = Path(runs_root) if runs_root is not None else runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    with records_lock():
        if spec.name:
            if not _name_reusable(spec.name, root):
                raise MaiError(f"a run named '{spec.name}' already exists",
                               [Problem(str(root / spec.name), "name taken", "choose another run name, "
                                        "or resume that run from the job list")])
            job_id = spec.name
        else:
            job_id = _unique_name(_default_name(spec), root)
        out = (root / job_id).resolve()
        argv = command if command is not None else train_command(spec.train_args(out, device))
        rec = {"id": job_id, "run_dir": str(out), "device": device, "argv": list(argv), "state": "queued",
               "queued_at": time.time(), "seq": uuid.uuid4().hex[:8], "resume": False, "pid": None,
               "pid_start": None, "runner_pid": None, "returncode": None, "started": None, "ended": None,
               "stop_requested": False}
        write_record(rec)
    if spawn:
        spawn_runner(device)
    return job_info(job_id)


def job_info(job_id_or_record) -> JobInfo:
    """Current state of one job (see module docstring for how it is derived)."""
    from mai_core.runs.rundir import RunDir

    rec = job_id_or_record if isinstance(job_id_or_record, dict) else read_record(job_id_or_record)
    run = RunDir(rec["run_dir"])
    status = run.read_status() if run.status_path.is_file() else {}
    info = JobInfo(id=rec["id"], run_dir=run.path, device=rec.get("device", "cpu"), state="queued",
                   queued_at=rec.get("queued_at"), started=rec.get("started"), pid=rec.get("pid"),
                   command=list(rec.get("argv") or []))
    for key in ("epoch", "epochs", "eta_s", "best_val_gene_pcc", "updated", "phase", "phase_done", "phase_total"):
        if status.get(key) is not None:
            setattr(info, key, status[key])
    info.progress = float(status.get("progress") or 0.0)
    rstate = rec.get("state")
    sstate = status.get("state")
    if rstate == "queued":
        info.state = "queued"
        waiting = [r["id"] for r in all_records() if r.get("device") == info.device and r.get("state") == "queued"]
        info.queue_position = waiting.index(rec["id"]) + 1 if rec["id"] in waiting else None
        info.progress = float(status.get("progress") or 0.0) if rec.get("resume") else 0.0
    elif rstate == "cancelled":
        info.state = "stopped"
        info.error = "stopped before it started"
    elif rstate == "launching":
        alive = process_alive(rec.get("runner_pid"))
        info.state = "running" if alive else "failed"
        if not alive:
            info.error = f"queue runner {rec.get('runner_pid')} exited before starting the training (killed?)"
    elif rstate == "running":
        if sstate in TERMINAL:
            info.state = sstate
        elif process_alive(rec.get("pid"), rec.get("pid_start")):
            info.state = "running"
        elif rec.get("runner_pid") and process_alive(rec.get("runner_pid")):
            # the training process just ended; its queue runner is recording how (exit code or signal)
            info.state = "running"
        else:
            info.state = "failed"
            info.error = exit_reason(rec.get("pid"), None, run)
    else:  # done
        if sstate in TERMINAL:
            info.state = sstate
        else:
            info.state = "failed"
            info.error = exit_reason(rec.get("pid"), rec.get("returncode"), run)
    if info.state == "failed" and not info.error:
        info.error = (status.get("error") or error_from_log(log_file_tail(run.log_path))
                      or "failed (no error message found)")
    if info.state == "stopped" and not info.error and status.get("error"):
        info.error = status.get("error")
    if info.state == "finished":
        info.progress = 1.0
        info.eta_s = 0.0
    # `train --resume` continues from checkpoints/last_state.pt (optimizer, schedule, epoch)
    info.resumable = info.state in ("stopped", "failed") and run.last_state.is_file()
    return info


def list_jobs() -> list[JobInfo]:
    """Every known job, oldest first."""
    return [job_info(r) for r in all_records()]


def active_jobs() -> list[JobInfo]:
    return [j for j in list_jobs() if j.is_active]


def stop(job_id: str, force: bool = False, wait_s: float = 0.0) -> JobInfo:
    """Stop a job: a queued one leaves the queue; a running one gets SIGTERM (its process group).

    The training handles SIGTERM by writing a checkpoint and status ``stopped``, so it can be
    resumed. ``force`` sends SIGKILL instead (no checkpoint). ``wait_s`` waits for it to end.
    """
    with records_lock():
        rec = read_record(job_id)
        if rec.get("state") == "queued":
            rec.update(state="cancelled", ended=time.time())
            write_record(rec)
            return job_info(rec)
    info = job_info(rec)
    if info.state != "running":
        raise MaiError(f"job '{job_id}' is not running (state: {info.state})",
                       hint="only queued or running jobs can be stopped")
    pid = rec.get("pid")
    if pid is None:  # still launching: ask again in a moment
        deadline = time.time() + 5
        while pid is None and time.time() < deadline:
            time.sleep(0.1)
            pid = read_record(job_id).get("pid")
        rec = read_record(job_id)
    if pid is None or not process_alive(pid, rec.get("pid_start")):
        return job_info(job_id)
    update_record(job_id, stop_requested=True)
    sig = signal.SIGKILL if force else signal.SIGTERM
    try:
        os.killpg(int(pid), sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise MaiError(f"not allowed to stop process {pid} ({exc})") from None
    deadline = time.time() + wait_s
    while time.time() < deadline and process_alive(pid, rec.get("pid_start")):
        time.sleep(0.1)
    if wait_s:  # let the queue runner record the exit
        end = time.time() + 2
        while time.time() < end and read_record(job_id).get("state") != "done":
            time.sleep(0.05)
    return job_info(job_id)


def resume(job_id: str, spawn: bool = True) -> JobInfo:
    """Queue a stopped (or failed) job again with ``--resume``; it continues from its last checkpoint."""
    with records_lock():
        rec = read_record(job_id)
        info = job_info(rec)
        if info.state not in ("stopped", "failed"):
            raise MaiError(f"job '{job_id}' cannot be resumed (state: {info.state})",
                           hint="only stopped or failed jobs can be resumed")
        if rec.get("state") != "cancelled" and not info.resumable:
            raise MaiError(f"job '{job_id}' has no checkpoint to resume from",
                           [Problem(str(info.run_dir / "checkpoints" / "last_state.pt"), "not found",
                                    "start a new run instead")])
        argv = list(rec["argv"])
        if rec.get("state") != "cancelled" and "--resume" not in argv:
            argv.append("--resume")
        rec.update(state="queued", argv=argv, queued_at=time.time(), resume=rec.get("state") != "cancelled",
                   pid=None, pid_start=None, returncode=None, ended=None, stop_requested=False)
        write_record(rec)
        if info.run_dir.joinpath("status.json").is_file():
            from mai_core.runs.rundir import write_status

            write_status(info.run_dir, state="queued", error=None, eta_s=None)
    if spawn:
        spawn_runner(rec["device"])
    return job_info(job_id)


def forget(job_id: str) -> None:
    """Remove a finished/failed/stopped job from the job list (its run directory stays)."""
    info = job_info(job_id)
    if info.is_active:
        raise MaiError(f"job '{job_id}' is {info.state}", hint="stop it first")
    with records_lock():
        record_path(job_id).unlink(missing_ok=True)


def wait(job_id: str, timeout_s: float = 600, poll_s: float = 0.2) -> JobInfo:
    """Block until the job leaves queued/running (or the timeout passes); returns its last state."""
    end = time.time() + timeout_s
    info = job_info(job_id)
    while info.is_active and time.time() < end:
        time.sleep(poll_s)
        info = job_info(job_id)
    return info


def kick_queues() -> None:
    """Start a runner for every device with queued jobs and no live runner (e.g. after a reboot)."""
    devices = {r["device"] for r in all_records() if r.get("state") == "queued"}
    for dev in devices:
        with device_lock(dev) as free:
            pass
        if free:
            spawn_runner(dev)


def log_tail(job: JobInfo | str, n_lines: int = 30) -> str:
    info = job if isinstance(job, JobInfo) else job_info(job)
    text = log_file_tail(info.run_dir / "log.txt", 20000)
    return "\n".join(text.splitlines()[-n_lines:])
