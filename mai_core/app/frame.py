"""Streamlit helpers shared by ``app.py`` and ``pages/*``: page set-up, dataset choice, cached loaders.

The only module of the library (with ``ui_training``) that imports streamlit; pages stay thin.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import streamlit as st

from mai_core.app.guard import show_error, shown_errors
from mai_core.data.dataset import MAIDataset, collect_problems, load_dataset
from mai_core.errors import MaiError, Problem

DEMO_LABEL = "Demo dataset (embedded)"
# folders (separated like PATH) the app may read datasets and files from, besides the workspace and MAI_DATA
DATA_ROOTS_ENV = "MAI_DATA_ROOTS"


def allowed_roots(ds: MAIDataset | None = None) -> list[Path]:
    """Where paths typed in the app may point: the workspace, the default dataset (``MAI_DATA``), the
    folders listed in ``MAI_DATA_ROOTS`` and, for files, the chosen dataset."""
    from mai_core.workspace import workspace_dir

    roots = [workspace_dir()]
    listed = [os.environ.get("MAI_DATA", "")] + os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep)
    if ds is not None:
        listed.append(str(ds.root))
    for text in listed:
        if text.strip():
            try:
                roots.append(Path(text.strip()).expanduser().resolve())
            except (OSError, ValueError, RuntimeError):
                continue
    return list(dict.fromkeys(roots))


def resolve_typed_path(text: str, what: str, ds: MAIDataset | None = None) -> Path:
    """A path typed in the app, resolved (links followed) and accepted only inside :func:`allowed_roots`.

    Relative paths start at the chosen dataset (or the workspace). MaiError names the path and the
    allowed folders; it never says anything about what the path holds.
    """
    from mai_core.io import check_path_text, shown_path

    text = str(text or "").strip()
    problems = check_path_text(text, what)
    if problems:
        raise MaiError(f"this {what} cannot be used", problems)
    roots = allowed_roots(ds)
    base = Path(ds.root) if ds is not None else roots[0]
    try:
        path = Path(text).expanduser()
        resolved = (path if path.is_absolute() else base / path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise MaiError(f"this {what} cannot be used", [Problem(shown_path(text), f"not a usable path "
                                                               f"({getattr(exc, 'strerror', None) or type(exc).__name__})",
                                                               "check the path")]) from None
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        raise MaiError(f"the {what} is outside the folders this app reads",
                       [Problem(shown_path(text), "not inside " + ", ".join(str(r) for r in roots),
                                f"move it under one of these folders, or start the app with {DATA_ROOTS_ENV} "
                                f"naming its folder (several separated by '{os.pathsep}')")])
    return resolved


def dataset_stamp(path: str) -> tuple:
    root = Path(path)
    stamps = []
    for name in ("train.csv", "test.csv"):
        p = root / name
        stamps.append(p.stat().st_mtime_ns if p.exists() else 0)
    return tuple(stamps)


@st.cache_resource(show_spinner="Loading dataset…", max_entries=4)
def _load_cached(path: str, stamp: tuple) -> MAIDataset:
    return load_dataset(path)


def cached_dataset(path: str | os.PathLike) -> MAIDataset:
    """Load (and validate) a dataset once per file version; shared across sessions and pages."""
    path = str(Path(path).expanduser().resolve())
    return _load_cached(path, dataset_stamp(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _images(path: str, fingerprint: str, split: str, ids: tuple[str, ...]):
    data = cached_dataset(path)
    index = data.index(split)
    return data.images(split, [index[i] for i in ids])


def cached_images(ds: MAIDataset, ids, split: str = "train"):
    """uint8 N×224×224×3 images for these IDs, read from disk once per dataset version."""
    return _images(str(ds.root), ds.fingerprint, split, tuple(ids))


@st.cache_data(show_spinner="Checking dataset…", max_entries=8)
def dataset_problems(path: str, stamp: tuple) -> list[Problem]:
    problems, _, _ = collect_problems(path)
    return problems


@st.cache_resource(show_spinner="Generating the demo dataset (first start only)…")
def _demo_path() -> str:
    from mai_core.data.demo import ensure_demo

    return str(ensure_demo())


def default_dataset_path() -> str:
    env = os.environ.get("MAI_DATA")
    return str(Path(env).expanduser().resolve()) if env else _demo_path()


def sidebar_dataset() -> MAIDataset | None:
    """Dataset chooser in the sidebar; the choice is shared by all pages of the session."""
    default = default_dataset_path()
    if "dataset_path" not in st.session_state:
        st.session_state["dataset_path"] = default
    with st.sidebar:
        st.markdown("### Dataset")
        choice = st.radio("Source", [DEMO_LABEL, "Folder path"], key="dataset_source",
                          index=0 if st.session_state["dataset_path"] == default else 1,
                          label_visibility="collapsed")
        if choice == DEMO_LABEL:
            st.session_state["dataset_path"] = default
        else:
            typed = st.text_input("Dataset folder (contains train.csv)", key="dataset_folder",
                                  value=st.session_state.get("dataset_folder_last", ""),
                                  placeholder="/data/my_dataset")
            if typed:
                try:
                    st.session_state["dataset_path"] = str(resolve_typed_path(typed, "dataset folder"))
                except MaiError as exc:
                    show_error(exc)
                    return None
                st.session_state["dataset_folder_last"] = typed
            else:
                st.info("Type a folder path, or pick the demo dataset.")
                return None
        path = st.session_state["dataset_path"]
        st.caption(f"`{path}`")
    try:
        return cached_dataset(path)
    except MaiError as exc:
        show_error(exc)
        return None


def run_page(page) -> None:
    """Run the navigation's chosen page inside :func:`shown_errors` (``MAI_APP_TIMING=1``: and say how long
    it took on the server's console).

    The native thread pools (BLAS, OpenMP) are first capped at the idle cores: sessions run their pages in
    parallel threads of one process, on a machine that may be busy training.
    """
    import time

    from mai_core.device import cap_native_pools

    t0 = time.perf_counter()
    cap_native_pools()
    _page_started()
    try:
        with shown_errors(f"page {getattr(page, 'title', '?')!r}"):
            page.run()
    finally:  # also when the page stops or reruns itself (Streamlit's signals pass through)
        _page_ended()
        if os.environ.get(TIMING_ENV) == "1":  # one line per run, for operators and bench/pages.py
            print(f"{TIMING_MARK} {getattr(page, 'title', '?')!r} ran in {time.perf_counter() - t0:.3f} s",
                  file=sys.stderr, flush=True)
    warm_imports()


TIMING_ENV = "MAI_APP_TIMING"  # "1": the server console gets a line for every run of a page's script
TIMING_MARK = "[page-timing]"


# The libraries the other pages need, those of the heaviest first visits first (seconds to import on a 2-core
# machine: scikit-learn 2, torch 1.5, timm with torch's compiler stack 3, Grad-CAM with matplotlib 0.5, umap with
# numba 2). Imported once per server process while the server is idle, so the first visit of every other page
# does not wait for them (Grad-CAM's first render with EfficientNet-Lite0: 9.3 s cold, 1.5 s after these).
WARM_MODULES = ("plotly.express", "torch", "lpips", "scipy.cluster.hierarchy", "plotly.subplots",
                "sklearn.decomposition", "sklearn.cluster", "sklearn.metrics", "pyarrow.parquet", "timm",
                "pytorch_grad_cam", "umap")
# Seconds without a page run before the next background import starts. A page's run ends before the browser
# has drawn it: the browser still loads the JavaScript of the page's elements and draws them (about 1 s on 2
# busy cores), and an import started at once took CPU and Python's lock from both (Home's first render in a new
# browser 0.3-0.6 s slower).
WARM_QUIET_S = 2.5
_WARM: dict = {}
_ACTIVITY = {"running": 0, "last_end": 0.0}
_ACTIVITY_LOCK = threading.Lock()
WARM_DONE = "background imports of the pages' libraries done"  # written to the server console


def _page_started() -> None:
    with _ACTIVITY_LOCK:
        _ACTIVITY["running"] += 1


def _page_ended() -> None:
    import time

    with _ACTIVITY_LOCK:
        _ACTIVITY["running"] = max(0, _ACTIVITY["running"] - 1)
        _ACTIVITY["last_end"] = time.monotonic()


def server_idle(quiet_s: float = WARM_QUIET_S) -> bool:
    """Whether no page script is running in any session and none has ended in the last ``quiet_s`` seconds."""
    import time

    with _ACTIVITY_LOCK:
        return _ACTIVITY["running"] == 0 and time.monotonic() - _ACTIVITY["last_end"] >= quiet_s


def warm_imports(modules=WARM_MODULES, quiet_s: float = WARM_QUIET_S) -> None:
    """Import ``modules`` in a background thread of low priority, once per process: each one only once the server
    has been idle for ``quiet_s`` seconds (:func:`server_idle`), so that the import never competes with a page being
    run or drawn. A module that fails to import is skipped: the page that needs it reports it."""
    if _WARM.get("started") or os.environ.get("MAI_APP_WARM", "1") == "0":
        return
    _WARM["started"] = True

    def work() -> None:
        import importlib
        import time

        t0 = time.monotonic()
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # this thread only (Linux)
        except (AttributeError, OSError):
            pass
        for name in modules:
            while not server_idle(quiet_s):
                time.sleep(0.25)
            try:
                importlib.import_module(name)
            except Exception:
                continue
        print(f"{WARM_DONE} in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)

    threading.Thread(target=work, name="mai-warm-imports", daemon=True).start()


def _route_through_app_navigation() -> None:
    """Run a page that Streamlit started from the ``pages/`` folder again, through app.py's navigation.

    Until one session has run app.py's ``st.navigation``, Streamlit routes every run by the ``pages/``
    folder (its older multipage mode) and does not run app.py at all: on a fresh server, a first visitor
    who opens a page URL directly gets the folder's flat page list ("app", "Grad CAM", ...) instead of the
    grouped navigation, for as long as nobody opens the home page. Leaving that mode and rerunning runs
    app.py, which resolves the same page (Streamlit identifies a page by its URL path, the same in both).
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the folder mode
        return
    if getattr(PagesManager, "uses_pages_directory", None):
        PagesManager.uses_pages_directory = False
        st.rerun()


def page_setup(title: str, icon: str = "🧬", require_dataset: bool = True) -> MAIDataset | None:
    """Common page header: page config, sidebar dataset chooser and training form.

    Returns the loaded dataset; when none can be loaded and ``require_dataset`` is set, stops the page.
    """
    _route_through_app_navigation()
    st.set_page_config(page_title=f"{title} · MAI", page_icon=icon, layout="wide")
    st.title(title)
    ds = sidebar_dataset()
    if ds is not None:
        from mai_core.app.training import render_sidebar_training

        render_sidebar_training(ds)
    if ds is None and require_dataset:
        st.stop()
    return ds
