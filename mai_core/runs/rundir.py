"""One run-directory layout, shared by the CLI, background jobs and pages.

::

    RUN_DIR/
      config.yaml              fully resolved config (kind: run | ensemble)
      genes.txt                one trained gene per line, output column order
      grouping.csv             the grouping used (single group "all" when none)
      metrics.jsonl            one JSON line per epoch
      status.json              state/epoch/epochs/progress/pid/error/started/updated/eta_s/best_val_gene_pcc
      checkpoints/last.safetensors, best.safetensors, last_state.pt
      val_predictions.parquet  ID + "pred:<gene>" + "true:<gene>" columns
      log.txt

Only light imports here (json, yaml, pandas lazily) so pages can list runs cheaply; torch is imported
by :func:`load_predictor` only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mai_core.errors import MaiError, Problem
from mai_core.io import write_json, write_text
from mai_core.procs import process_alive

STATES = ("queued", "running", "finished", "failed", "stopped")
STATUS_FIELDS = ("state", "epoch", "epochs", "progress", "pid", "error", "started", "updated", "eta_s",
                 "best_val_gene_pcc")
METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "val_gene_pcc", "lr", "imgs_per_s", "time")


class RunDir:
    """Paths and readers of one run (or ensemble) directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(str(self.path.resolve()))

    # -- paths ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def genes_path(self) -> Path:
        return self.path / "genes.txt"

    @property
    def grouping_path(self) -> Path:
        return self.path / "grouping.csv"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / "last.safetensors"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints_dir / "best.safetensors"

    @property
    def last_state(self) -> Path:
        return self.checkpoints_dir / "last_state.pt"

    @property
    def val_predictions_path(self) -> Path:
        return self.path / "val_predictions.parquet"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    # -- readers -------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file() or self.status_path.is_file()

    @property
    def kind(self) -> str:
        """'run' or 'ensemble' (from config.yaml; 'run' when unknown)."""
        try:
            return str(self.read_config().get("kind", "run"))
        except MaiError:
            return "run"

    def read_config(self) -> dict:
        return read_config(self.path)

    def read_status(self) -> dict:
        return read_status(self.path)

    def write_status(self, **fields) -> dict:
        return write_status(self.path, **fields)

    def read_metrics(self):
        return read_metrics(self.path)

    def read_genes(self) -> list[str]:
        if not self.genes_path.is_file():
            raise MaiError(f"{self.path} is not a finished run: genes.txt is missing",
                           hint="train a model first (python -m mai_core train ...)")
        return [g for g in self.genes_path.read_text().splitlines() if g.strip()]

    def read_val_predictions(self):
        """DataFrame with ID, pred:<gene>, true:<gene> columns (None when absent)."""
        import pandas as pd

        if not self.val_predictions_path.is_file():
            return None
        return pd.read_parquet(self.val_predictions_path)

    def read_log(self, tail_chars: int | None = None) -> str:
        if not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(errors="replace")
        return text if tail_chars is None else text[-tail_chars:]

    def model_checkpoint(self) -> Path | None:
        """The checkpoint used for prediction: best when present, else last."""
        for p in (self.best_checkpoint, self.last_checkpoint):
            if p.is_file():
                return p
        return None

    def log(self, message: str) -> None:
        """Append one timestamped line to log.txt."""
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a") as fh:
            fh.write(f"[{stamp}] {message}\n")


def _as_path(run) -> Path:
    return run.path if isinstance(run, RunDir) else Path(run).expanduser()


def read_config(run) -> dict:
    """config.yaml as a dict; MaiError when missing or unreadable."""
    import yaml

    p = _as_path(run) / "config.yaml"
    if not p.is_file():
        raise MaiError(f"{p.parent} is not a run directory: config.yaml is missing",
                       [Problem(str(p), "not found", "pass a folder written by `python -m mai_core train` or `ensemble`")])
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MaiError(f"{p} is not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise MaiError(f"{p} must hold a mapping, found {type(cfg).__name__}")
    return cfg


def write_config(run, config: dict) -> None:
    import yaml

    write_text(_as_path(run) / "config.yaml", yaml.safe_dump(config, sort_keys=False, default_flow_style=False))


def read_status(run) -> dict:
    """status.json with every field present (missing ones None).

    Adds ``stale: True`` when the state says running but the recorded process is gone (killed
    without a chance to write its final state); such a run can be continued with ``train --resume``.
    """
    p = _as_path(run) / "status.json"
    status = {k: None for k in STATUS_FIELDS}
    status["state"] = "unknown"
    if p.is_file():
        try:
            status.update(json.loads(p.read_text()))
        except (json.JSONDecodeError, OSError):
            status["error"] = "status.json is unreadable"
    status["stale"] = bool(status.get("state") == "running" and status.get("pid") and not process_alive(status["pid"]))
    return status


def write_status(run, **fields) -> dict:
    """Merge ``fields`` into status.json (atomically) and stamp ``updated``; returns the new status."""
    path = _as_path(run)
    p = path / "status.json"
    status: dict = {}
    if p.is_file():
        try:
            status = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            status = {}
    if "state" in fields and fields["state"] not in STATES:
        raise ValueError(f"unknown run state {fields['state']!r}")
    status.update(fields)
    status["updated"] = time.time()
    status.pop("stale", None)
    write_json(p, status)
    return status


def append_metrics(run, row: dict) -> None:
    """Append one epoch line to metrics.jsonl (rewritten atomically, so readers never see half a line)."""
    p = _as_path(run) / "metrics.jsonl"
    old = p.read_text() if p.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text(p, old + json.dumps(row, default=float) + "\n")


def truncate_metrics(run, last_epoch: int) -> None:
    """Drop metric lines after ``last_epoch`` (used on resume so the file matches the checkpoint)."""
    p = _as_path(run) / "metrics.jsonl"
    if not p.is_file():
        return
    keep = []
    for ln in p.read_text().splitlines():
        try:
            if json.loads(ln).get("epoch", 0) <= last_epoch:
                keep.append(ln)
        except (json.JSONDecodeError, AttributeError):
            continue  # blank or damaged line (e.g. cut off by a kill): dropped, as read_metrics skips it
    write_text(p, "".join(ln + "\n" for ln in keep))


def read_metrics(run):
    """metrics.jsonl as a DataFrame (columns METRIC_FIELDS at least; empty when no epoch finished)."""
    import pandas as pd

    p = _as_path(run) / "metrics.jsonl"
    rows = []
    if p.is_file():
        for ln in p.read_text().splitlines():
            ln = ln.strip()
            if not ln:
                continue
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue  # a torn line from a foreign writer; skip it
    df = pd.DataFrame(rows)
    for col in METRIC_FIELDS:
        if col not in df.columns:
            df[col] = pd.Series(dtype="float64")
    return df


def list_runs(root: str | os.PathLike | None = None) -> list[RunDir]:
    """Run and ensemble directories directly under ``root`` (default: workspace runs/), newest first."""
    if root is None:
        from mai_core.workspace import runs_dir

        root = runs_dir()
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and RunDir(p).exists()]

    def _mtime(r: RunDir) -> float:
        for p in (r.status_path, r.config_path):
            if p.exists():
                return p.stat().st_mtime
        return 0.0

    runs.sort(key=_mtime, reverse=True)
    return runs


# what a run directory may hold; a folder holding anything else is someone else's
RUN_ENTRIES = ("config.yaml", "genes.txt", "grouping.csv", "metrics.jsonl", "status.json", "checkpoints",
               "val_predictions.parquet", "context_head.npz", "log.txt")


def holds_run(path) -> bool:
    """Whether a folder holds only a training run's files (a run, or an attempt that never got far)."""
    import yaml

    path = Path(path)
    try:
        names = [p.name for p in path.iterdir() if not p.name.startswith(".")]
        if any(n not in RUN_ENTRIES for n in names):
            return False
        if "config.yaml" in names:
            cfg = yaml.safe_load((path / "config.yaml").read_text())
            if not isinstance(cfg, dict) or cfg.get("kind") != "run":
                return False
        if "status.json" in names and not isinstance(json.loads((path / "status.json").read_text()), dict):
            return False
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return True


def has_progress(run) -> bool:
    """Whether a run got as far as an epoch (checkpoints or metrics): starting over would lose work."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    try:
        return (run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir())) or run.metrics_path.exists()
    except OSError:
        return False
