"""The only writer of a run directory during training: config, genes, grouping, log, status, metrics,
checkpoints and validation predictions (layout: :class:`mai_core.runs.RunDir`).

Only the main process writes; other ``torchrun`` ranks get a recorder whose writes do nothing.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from mai_core.errors import MaiError, Problem
from mai_core.runs.rundir import (RUN_ENTRIES, RunDir, append_metrics, has_progress, holds_run, truncate_metrics,
                                  read_config, write_config, write_status)


@dataclass
class TrainState:
    """What a run has achieved so far: best validation score, epochs done, time spent (across resumes)."""

    best_pcc: float | None = None
    best_epoch: int = 0
    epochs_done: int = 0
    elapsed_before: float = 0.0
    t0: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.t0)

    def improve(self, pcc: float, epoch: int) -> bool:
        """Record ``pcc`` at ``epoch``; True when it is the best so far."""
        if math.isfinite(pcc) and (self.best_pcc is None or pcc > self.best_pcc):
            self.best_pcc, self.best_epoch = pcc, epoch
            return True
        return False


class Recorder:
    def __init__(self, out, is_main: bool = True, echo: bool = True):
        self.run = RunDir(out)
        self.is_main = is_main
        self.echo = echo
        self._last_status = 0.0
        self._began = False  # this attempt has written its running status (failures are recorded from then on)
        self._resume_blob = None

    # -- the target folder -----------------------------------------------------------------------
    def check_target(self, resume: bool, force: bool = False) -> None:
        """Make sure ``out`` may be trained into, before anything is written.

        A new run needs a new or empty folder, or a run that never got past its start (a failed attempt);
        a run with checkpoints or metrics needs ``--resume`` (or ``force`` to start over, which removes its
        run files); any other folder or a file is refused unless ``force`` (mai_core.io.check_replaceable).
        ``resume`` needs a readable ``last_state.pt``; it is loaded here, so a damaged one is reported
        before the run's status changes.
        """
        import shutil

        from mai_core.io import check_replaceable

        r = self.run
        if resume:
            self._resume_blob = self._read_resume_state()
            return
        check_replaceable(r.path, holds_run, "training run", force=force)
        if not r.path.is_dir() or not holds_run(r.path) or not has_progress(r):
            return
        if not force:
            state = r.read_status().get("state", "unknown")
            raise MaiError(f"{r.path} already holds a training run ({state})",
                           [Problem(str(r.path), "checkpoints/metrics exist",
                                    "pass --resume to continue it, --force to start it over, "
                                    "or choose another --out folder")])
        if self.is_main:  # start over: the run's files go, log.txt keeps the history of every attempt
            for name in (e for e in RUN_ENTRIES if e != "log.txt"):
                p = r.path / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()

    def _read_resume_state(self) -> dict:
        import torch

        p = self.run.last_state
        if not p.is_file():
            raise MaiError(f"cannot resume: {p} not found",
                           hint="start a new run without --resume (nothing was checkpointed yet)")
        try:
            blob = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, not a torch file, foreign pickle... (torch raises many types)
            raise MaiError(f"cannot resume: {p} is damaged",
                           [Problem(str(p), f"not a readable training state ({type(exc).__name__})",
                                    "start the run over with --force (or train into a new --out); the "
                                    "weights in checkpoints/*.safetensors are unaffected")]) from None
        missing = [k for k in ("model", "epoch", "torch_rng") if not isinstance(blob, dict) or k not in blob]
        if missing:
            raise MaiError(f"cannot resume: {p} is not a training state of this program",
                           [Problem(str(p), f"lacks {', '.join(missing)}", "start the run over with --force")])
        return blob

    def begin(self, epochs: int) -> None:
        self._began = True
        if self.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.status(force=True, state="running", pid=os.getpid(), error=None, started=time.time(),
                        progress=0.0, epoch=0, epochs=epochs)

    def write_setup(self, config: dict, genes: list[str], grouping) -> None:
        """config.yaml (fully resolved), genes.txt and grouping.csv."""
        if not self.is_main:
            return
        from mai_core.io import write_text

        write_config(self.run, config)
        write_text(self.run.genes_path, "".join(g + "\n" for g in genes))
        grouping.save(self.run.grouping_path)

    def add_facts(self, facts: dict) -> None:
        """Merge facts resolved after training (e.g. the neighbour-smoothing weight) into config.yaml."""
        if not self.is_main:
            return
        from mai_core.training.config import deep_merge

        write_config(self.run, deep_merge(read_config(self.run), facts))

    def context_head(self, head: tuple | None) -> None:
        """Save the context head's (weight, bias), or remove an earlier one that is no longer used."""
        if not self.is_main:
            return
        from mai_core.runs.contexthead import CONTEXT_HEAD_FILE, save_context_head

        if head is None:
            (self.run.path / CONTEXT_HEAD_FILE).unlink(missing_ok=True)
        else:
            save_context_head(self.run.path, *head)

    # -- log, status, metrics --------------------------------------------------------------------
    def log(self, msg: str, echo: bool | None = None) -> None:
        if not self.is_main:
            return
        self.run.log(msg)
        if (self.echo if echo is None else echo) and not self._stdout_is_log():
            print(msg, flush=True)

    def _stdout_is_log(self) -> bool:
        """True when standard output already goes to log.txt (a background job): print nothing twice."""
        import sys

        try:
            out, log = os.fstat(sys.stdout.fileno()), os.stat(self.run.log_path)
        except (OSError, ValueError, AttributeError):
            return False
        return (out.st_dev, out.st_ino) == (log.st_dev, log.st_ino)

    def status(self, force: bool = False, **fields) -> None:
        """Merge ``fields`` into status.json; unforced updates at most once a second."""
        if not self.is_main:
            return
        now = time.time()
        if not force and now - self._last_status < 1.0:
            return
        self._last_status = now
        write_status(self.run, **fields)

    def status_due(self) -> bool:
        return self.is_main and time.time() - self._last_status >= 1.0

    def metrics(self, row: dict) -> None:
        if self.is_main:
            append_metrics(self.run, row)

    def truncate_metrics(self, last_epoch: int) -> None:
        if self.is_main:
            truncate_metrics(self.run, last_epoch)

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, eval_model, raw_model, state: TrainState, epoch_done: int, step_in_epoch: int,
                        global_step: int, optimizer=None, ema=None, best: bool = False) -> None:
        """last.safetensors (+ best.safetensors) from ``eval_model``; last_state.pt to resume from."""
        if not self.is_main:
            return
        import torch

        from mai_core.io import atomic_path
        from mai_core.models.model import save_state

        save_state(eval_model, self.run.last_checkpoint)
        if best:
            save_state(eval_model, self.run.best_checkpoint)
        blob = {
            "epoch": int(epoch_done), "step_in_epoch": int(step_in_epoch), "global_step": int(global_step),
            "model": {k: v.detach().cpu() for k, v in raw_model.state_dict().items()},
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "ema": None if ema is None else {k: v.cpu() for k, v in ema.shadow.items()},
            "best_val_gene_pcc": state.best_pcc, "best_epoch": int(state.best_epoch),
            "torch_rng": torch.get_rng_state(), "elapsed": float(state.elapsed()),
        }
        with atomic_path(self.run.last_state, suffix=".pt") as tmp:
            torch.save(blob, tmp)

    def load_checkpoint(self, raw_model, state: TrainState, optimizer=None, ema=None, device=None) -> dict:
        """Restore model, optimizer, EMA, RNG and progress from last_state.pt; returns the raw blob."""
        import torch

        blob = self._resume_blob if self._resume_blob is not None else self._read_resume_state()
        self._resume_blob = None
        try:
            raw_model.load_state_dict(blob["model"])
        except RuntimeError as exc:  # another architecture (the config changed since the checkpoint)
            raise MaiError(f"cannot resume: {self.run.last_state} belongs to a different model",
                           [Problem(str(self.run.last_state), str(exc).splitlines()[0],
                                    "resume with the run's own settings, or start over with --force")]) from None
        if optimizer is not None and blob.get("optimizer"):
            optimizer.load_state_dict(blob["optimizer"])
        if ema is not None and blob.get("ema"):
            ema.load(blob["ema"], device)
        torch.set_rng_state(blob["torch_rng"])
        state.best_pcc = blob.get("best_val_gene_pcc")
        state.best_epoch = blob.get("best_epoch", 0)
        state.elapsed_before = float(blob.get("elapsed", 0.0))
        return blob

    def save_best(self, model, best_state_dict) -> None:
        """best.safetensors from a state dict held in memory (frozen heads keep the best epoch's weights)."""
        if not self.is_main or best_state_dict is None:
            return
        import copy

        from mai_core.models.model import save_state

        best_model = copy.deepcopy(model)
        best_model.load_state_dict(best_state_dict)
        save_state(best_model, self.run.best_checkpoint)

    def best_or_last_checkpoint(self):
        r = self.run
        return r.best_checkpoint if r.best_checkpoint.is_file() else r.last_checkpoint

    # -- outputs ---------------------------------------------------------------------------------
    def val_predictions(self, ids: list[str], genes: list[str], pred, true) -> None:
        """val_predictions.parquet: ID, pred:<gene>…, true:<gene>…"""
        if not self.is_main:
            return
        import pandas as pd

        from mai_core.io import write_parquet

        frame = pd.concat([pd.DataFrame({"ID": ids}),
                           pd.DataFrame(pred, columns=[f"pred:{g}" for g in genes]),
                           pd.DataFrame(true, columns=[f"true:{g}" for g in genes])], axis=1)
        write_parquet(self.run.val_predictions_path, frame)

    def fail(self, message: str, tb: str | None, state: str = "failed") -> None:
        """Mark the run failed (or stopped) with the message in status.json and the traceback in log.txt.

        Only once this attempt has begun: a refusal before that (a foreign --out folder, a damaged
        checkpoint to resume from, a bad device) leaves the folder exactly as it was.
        """
        if not self.is_main or not self._began:
            return
        try:
            if self.run.path.exists():
                self.run.log(f"{state.upper()}: {message}")
                if tb:
                    self.run.log(tb)
                write_status(self.run, state=state, error=message if state == "failed" else None, eta_s=None)
        except OSError:
            pass
