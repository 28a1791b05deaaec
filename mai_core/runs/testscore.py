"""Predicting many patches with progress and cancel: the test-split score of a run and submission files.

Both go through the same paths as the ``evaluate`` and ``predict`` commands (``evaluate_run``,
``predict_csv``: the run's TTA and, where the patches have spot coordinates, its spatial context), calling
``report(done, total)`` after every batch; an exception raised by ``report`` (the app's Cancel) stops the
work before the next batch and nothing is written. Test scores are stored under ``cache_dir()/test_scores``
keyed by the run's weights and the dataset's content, so a score is computed once per model and dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mai_core.errors import MaiError
from mai_core.runs.rundir import RunDir


def _noop(done: int, total: int) -> None:
    return None


def _file_stamp(p: Path) -> str:
    try:
        st = p.stat()
    except OSError:
        return f"{p}:-"
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


def _weights_stamp(run: RunDir) -> str:
    """Identity of what a run predicts with: its checkpoint and context head; for an ensemble its config and
    every member's (a member trained again, or its context head changed, changes the stamp)."""
    from mai_core.runs.contexthead import CONTEXT_HEAD_FILE, ensemble_members

    members = ensemble_members(run.path)
    if members:
        return "|".join([_file_stamp(run.config_path)] + [_weights_stamp(RunDir(m)) for m, _ in members])
    ck = run.model_checkpoint()
    return f"{_file_stamp(ck if ck is not None else run.config_path)}|{_file_stamp(run.path / CONTEXT_HEAD_FILE)}"


def test_score_path(run_path, data_fingerprint: str) -> Path:
    from mai_core.workspace import cache_dir

    run = RunDir(run_path)
    key = hashlib.sha1(f"{run.path.resolve()}|{_weights_stamp(run)}|{data_fingerprint}".encode()).hexdigest()[:20]
    return cache_dir() / "test_scores" / f"{run.name}-{key}.json"


def cached_test_score(run_path, data_fingerprint: str) -> dict | None:
    """The stored test score of this run's current weights on this dataset, or None."""
    try:
        path = test_score_path(run_path, data_fingerprint)
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, MaiError):
        return None


def test_score(run_path, data_dir, report=None, device: str = "auto") -> dict:
    """Headline metrics of a run or ensemble on the labelled test split of ``data_dir`` (stored, see module),
    exactly as ``python -m mai_core evaluate --split test`` computes them.

    Raises MaiError when the test split has no known expression or lacks the run's genes.
    """
    from mai_core.data.dataset import load_dataset
    from mai_core.io import write_json
    from mai_core.runs.predict import evaluate_run

    ds = load_dataset(data_dir, check_images=False)
    report = report or _noop
    report(0, ds.n_test)
    m = evaluate_run(run_path, ds.root, split="test", device=device, progress=False, on_progress=report)
    m.update(n_test=ds.n_test)
    write_json(test_score_path(run_path, ds.fingerprint), m)
    return m


def write_submission_reporting(run_path, csv_path, out, report=None, device: str = "auto") -> Path:
    """Predict every row of an ``ID, path`` CSV with a run or ensemble and write the submission atomically,
    exactly as ``python -m mai_core predict`` does."""
    from mai_core.runs.predict import predict_csv

    run = RunDir(run_path)
    if run.model_checkpoint() is None and run.kind != "ensemble":
        raise MaiError(f"run {run.name} has no checkpoint to predict with", hint="wait for it to finish")
    report = report or _noop
    predict_csv(run.path, csv_path, out, device=device, progress=False, on_progress=report)
    return Path(out)
