"""Predicting many patches with progress and cancel: the test-split score of a run and submission files.

Both predict in chunks through :meth:`Predictor.predict_paths` and call ``report(done, total)`` after every
chunk; an exception raised by ``report`` (the app's Cancel) stops the work before the next chunk and
nothing is written. Test scores are stored under ``cache_dir()/test_scores`` keyed by the run's weights and
the dataset's content, so a score is computed once per model and dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mai_core.errors import MaiError
from mai_core.runs.rundir import RunDir

CHUNK = 32  # patches per progress step


def _noop(done: int, total: int) -> None:
    return None


def predict_paths_reporting(predictor, paths, report=None, chunk: int = CHUNK) -> np.ndarray:
    """``predictor.predict_paths`` over ``paths`` in chunks, calling ``report(done, total)`` after each."""
    report = report or _noop
    paths = list(paths)
    out = np.empty((len(paths), len(predictor.genes)), dtype=np.float32)
    report(0, len(paths))
    for s in range(0, len(paths), chunk):
        out[s:s + chunk] = predictor.predict_paths(paths[s:s + chunk], batch_size=chunk)
        report(min(s + chunk, len(paths)), len(paths))
    return out


def _weights_stamp(run: RunDir) -> str:
    """Identity of the weights a run predicts with (checkpoint, or config for ensembles)."""
    ck = run.model_checkpoint()
    p = ck if ck is not None else run.config_path
    st = p.stat()
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


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
    """Headline metrics of a run or ensemble on the labelled test split of ``data_dir`` (stored, see module).

    Raises MaiError when the test split has no known expression or lacks the run's genes.
    """
    from mai_core.data.dataset import load_dataset
    from mai_core.io import write_json
    from mai_core.metrics import evaluate_predictions
    from mai_core.runs.predict import labelled_split, load_predictor

    ds = load_dataset(data_dir, check_images=False)
    ids, paths, X, genes, ref = labelled_split(ds.root, "test")
    predictor = load_predictor(run_path, device=device)
    missing = [g for g in predictor.genes if g not in genes]
    if missing:
        raise MaiError(f"the dataset lacks {len(missing)} gene(s) the model predicts (e.g. {missing[:5]})",
                       hint="score on the dataset the run was trained on")
    col = {g: i for i, g in enumerate(genes)}
    sel = [col[g] for g in predictor.genes]
    pred = predict_paths_reporting(predictor, paths, report)
    m = evaluate_predictions(X[:, sel], pred, None, reference_X=ref[:, sel])
    m.update(split="test", n_test=len(ids), tta_views=int(predictor.tta_views), run=str(RunDir(run_path).path))
    write_json(test_score_path(run_path, ds.fingerprint), m)
    return m


def write_submission_reporting(run_path, csv_path, out, report=None, device: str = "auto") -> Path:
    """Predict every row of an ``ID, path`` CSV with a run or ensemble and write the submission atomically."""
    import pandas as pd

    from mai_core.data.dataset import read_id_path_csv
    from mai_core.io import write_csv
    from mai_core.runs.predict import load_predictor

    run = RunDir(run_path)
    if run.model_checkpoint() is None and run.kind != "ensemble":
        raise MaiError(f"run {run.name} has no checkpoint to predict with", hint="wait for it to finish")
    df, paths = read_id_path_csv(csv_path)
    predictor = load_predictor(run.path, device=device)
    values = predict_paths_reporting(predictor, paths, report)
    frame = pd.concat([df[["ID"]].reset_index(drop=True), pd.DataFrame(values, columns=predictor.genes)], axis=1)
    write_csv(out, frame, float_format="%.6g")
    return Path(out)
