"""Results-page widgets that watch runs or predict in the background: the page refresh while runs train,
the test-split score of a run, and submission files, each with progress and Cancel.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from mai_core.app.tasks import forget_task, get_task, progress_panel, start_task
from mai_core.app.guard import guarded
from mai_core.errors import MaiError

WATCH_S = 2.0


# ----------------------------------------------------------------------------------------------
# redraw the page when a training run moves on
# ----------------------------------------------------------------------------------------------
def _signature(paths) -> tuple:
    """What the runs table shows that changes while runs train: state, epoch, phase, scores."""
    from mai_core.runs import RunDir

    out = []
    for p in paths:
        status = RunDir(p).read_status()
        out.append((str(p), status.get("state"), status.get("epoch"), status.get("phase"),
                    status.get("best_val_gene_pcc"), status.get("final_val_gene_pcc")))
    return tuple(out)


def watch_runs(table) -> None:
    """While any run of ``table`` is queued or running, check its status every two seconds and redraw the
    page when an epoch ends, a step begins or a run ends; costs nothing once every run has ended."""
    active = [p for p, s in zip(table["path"], table["state"]) if s in ("queued", "running")]
    if not active:
        return
    st.session_state["_mai_runs_seen"] = _signature(table["path"])
    _run_watcher(tuple(table["path"]))


@st.fragment(run_every=WATCH_S)
@guarded
def _run_watcher(paths: tuple) -> None:
    from mai_core.runs import list_runs

    now = _signature(paths)
    known = {str(r.path) for r in list_runs()}
    if now != st.session_state.get("_mai_runs_seen") or not set(paths) <= known:
        st.session_state["_mai_runs_seen"] = now
        st.rerun(scope="app")
    st.caption(f"Runs in progress: this page updates itself (checked {time.strftime('%H:%M:%S')}).")


# ----------------------------------------------------------------------------------------------
# facts of a run
# ----------------------------------------------------------------------------------------------
def run_tta_views(run) -> int:
    """Test-time-augmentation views the run's final predictor averages (1 = off)."""
    from mai_core.models.tta import tta_views

    try:
        return tta_views(run.read_config())
    except (MaiError, OSError, ValueError, TypeError):
        return 1


# ----------------------------------------------------------------------------------------------
# score on the test split
# ----------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=8)
def _has_test_truth(root: str, fingerprint: str) -> bool:
    from mai_core.app.frame import cached_dataset
    from mai_core.data.units import split_truth

    return split_truth(cached_dataset(root), "test") is not None


def _test_truth_available(ds) -> bool:
    return bool(ds.n_test) and _has_test_truth(str(ds.root), ds.fingerprint)


def test_score_panel(run, ds) -> None:
    """The run's gene-PCC on the dataset's test split when a truth exists: stored, or computed on request
    in the background (progress and Cancel)."""
    from mai_core.app.labels import metric_help
    from mai_core.runs import cached_test_score, test_score

    if not _test_truth_available(ds) or (run.model_checkpoint() is None and run.kind != "ensemble"):
        return
    score = cached_test_score(run.path, ds.fingerprint)
    key = f"test_score:{run.path}:{ds.fingerprint}"
    if score is not None:
        st.metric(f"test gene-PCC ({score.get('n_test', '?')} test patches)", f"{score['gene_pcc_mean']:.4f}",
                  help=metric_help("test_gene_pcc"))
        return
    task = progress_panel(key)
    if task is not None and task.ok:
        forget_task(key)
        st.rerun()
    if task is None or not task.running:
        if st.button(f"Score on the test split ({ds.n_test} patches)", key=f"test_score_go_{run.name}",
                     help="Predict the test patches with this run and compare with the known test expression; "
                          "the score is stored, so this runs once per model."):
            start_task(key, f"Scoring {run.name} on the test split", test_score, str(run.path), str(ds.root),
                       unit="patches")
            st.rerun()


# ----------------------------------------------------------------------------------------------
# submission files
# ----------------------------------------------------------------------------------------------
def _submission_work(run_path: str, csv_path: str, out: Path, report) -> bytes:
    from mai_core.runs import write_submission_reporting

    write_submission_reporting(run_path, csv_path, out, report=report)
    return out.read_bytes()


def start_submission(run, csv_path: str) -> None:
    """Predict every row of ``csv_path`` with ``run`` in the background (see :func:`submission_progress`)."""
    from mai_core.workspace import cache_dir

    csv = Path(str(csv_path)).expanduser()
    ck = run.model_checkpoint()
    stamp = (ck or run.config_path).stat().st_mtime_ns if (ck or run.config_path).exists() else 0
    csv_stamp = csv.stat().st_mtime_ns if csv.is_file() else 0
    key = f"submission:{run.path}:{stamp}:{csv}:{csv_stamp}"
    old = get_task(key)
    if old is not None and not old.running and not old.ok:
        forget_task(key)  # failed or cancelled before: start again
    out = cache_dir() / "submissions" / f"{run.name}-{csv.stem}.csv"
    start_task(key, f"Predicting {csv.name} with {run.name}", _submission_work, str(run.path), str(csv), out,
               unit="patches")
    st.session_state["_mai_submission"] = (key, f"submission-{run.name}.csv")
    st.session_state.pop("results_submission", None)


def submission_notice(tab_open: bool) -> None:
    """One line above the Results tabs about the session's submission while its tab is closed (its progress panel
    is drawn only inside the tab): the count so far while it predicts, refreshed every 2 s, then that its file is
    ready or why it stopped."""
    current = st.session_state.get("_mai_submission")
    if tab_open or not current:
        return
    task = get_task(current[0])
    if task is None:
        return
    if task.running:
        _submission_line(current[0])
    else:
        _submission_outcome(task)


@st.fragment(run_every=2.0)
def _submission_line(key: str) -> None:
    task = get_task(key)
    if task is None or not task.running:
        st.rerun()  # the whole page again: the outcome is drawn without this refresh
    of = f" of {task.total:,}" if task.total else ""
    st.caption(f"⏳ {task.label}: {task.done:,}{of} {task.unit} so far; open the **Submission** tab to follow it or "
               "cancel it.")


def _submission_outcome(task) -> None:
    if task.ok:
        st.success(f"{task.label}: done. Open the **Submission** tab to download the file.")
    elif task.cancelled:
        st.info(f"{task.label}: cancelled.")
    else:
        st.warning(f"{task.label} failed; the **Submission** tab says why.")


def submission_progress() -> None:
    """Progress of the current submission; when it is done, its file becomes ``results_submission``."""
    current = st.session_state.get("_mai_submission")
    if not current:
        return
    key, fname = current
    task = progress_panel(key)
    if task is None:
        st.session_state.pop("_mai_submission", None)
    elif task.ok:
        st.session_state["results_submission"] = (fname, task.result)
        st.session_state.pop("_mai_submission", None)
