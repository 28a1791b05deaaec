"""Pretrained weights in the app: each backbone's weight status in the sidebar with a Pull button (a
background job running ``python -m mai_core weights pull NAME``), the pull offer of the Augmentation Lab,
and the weights line of a run on the Results page."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import streamlit as st

from mai_core.errors import MaiError

STATE_ICON = {"stored": "✅", "hand-placed": "✅", "local": "✅", "hub": "⬇️", "offline": "⛔", "none": "—"}
STATE_TEXT = {"stored": "on this machine", "hand-placed": "on this machine (placed by hand)",
              "local": "on this machine", "hub": "not here — can be pulled", "offline": "not here (offline)",
              "none": "no published weights"}


def _cache_fingerprint() -> tuple:
    """What our weight cache holds now (names, sizes, times) and whether downloads are off: a finished pull
    changes it, so the sidebar shows the new status at once rather than after the cache expires."""
    from mai_core.models.backbones import offline_reason
    from mai_core.workspace import cache_dir

    root = cache_dir() / "weights"
    try:
        files = tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(root)
                             if e.is_file() and e.name.endswith((".safetensors", ".json"))))
    except OSError:
        files = ()
    return str(root), files, bool(offline_reason())


@st.cache_data(show_spinner=False, ttl=10)
def _weight_rows(fingerprint: tuple) -> list[dict]:
    from mai_core.models.backbones import weights_table

    return [r.to_dict() for r in weights_table()]


def weight_rows() -> list[dict]:
    """Status rows of every backbone and metric network (disk checks only; recomputed when our cache changes,
    and every 10 s for the timm/HF caches and packages outside it)."""
    return _weight_rows(_cache_fingerprint())



def pull_jobs_root() -> Path:
    from mai_core.workspace import cache_dir

    return cache_dir() / "weights" / "jobs"


def pull_command(name: str, status_dir: Path) -> list[str]:
    """The command line of a pull job. ``--online``: the button is an explicit request, while the job runner
    marks its jobs offline unless told otherwise (only when this app itself is not offline)."""
    from mai_core.models.backbones import offline_reason

    cmd = [sys.executable, "-m", "mai_core", "weights", "pull", name, "--quiet", "--status-dir", str(status_dir)]
    return cmd + ([] if offline_reason() else ["--online"])


def submit_pull(name: str, data_dir: str):
    """Queue ``weights pull NAME`` as a background job (CPU queue); returns its JobInfo."""
    from mai_core.models.backbones import canonical
    from mai_core.runs import jobs

    key = canonical(name)
    job = f"pull-{re.sub(r'[^A-Za-z0-9._-]+', '-', key)[:50]}-{time.strftime('%H%M%S')}"
    root = pull_jobs_root()
    spec = jobs.TrainSpec(data=str(data_dir), name=job, device="cpu")
    _weight_rows.clear()
    return jobs.submit(spec, runs_root=root, command=pull_command(key, (root / job).resolve()))


def _pull_button(name: str, data_dir: str, key: str, label: str = "Pull") -> None:
    if st.button(label, key=key, help=f"download in the background: python -m mai_core weights pull {name}"):
        try:
            info = submit_pull(name, data_dir)
        except MaiError as exc:
            st.error(exc.render())
            return
        st.session_state["_mai_jobs_notice"] = (info.id, f"Pull of **{name}** queued as job **{info.id}**.")
        st.rerun(scope="app")


def _offline_hint(name: str) -> None:
    st.caption(f"Offline: run `python -m mai_core weights pull {name}` where a network exists and copy the "
               "cache files here, or `python -m mai_core weights import FILE --backbone "
               f"{name}` for a hand-copied file.")


def weights_panel(ds) -> None:
    """Sidebar: every backbone's weight status and licence; pull the missing ones as background jobs.

    Drawn only while open: the status of every backbone needs timm's registry (about 2 s to import)."""
    with st.expander("Backbone weights and licences", expanded=False, key="weights_panel_open",
                     on_change="rerun") as box:
        if not box.open:
            return
        rows = [r for r in weight_rows() if r["kind"] != "metric"]
        ready = sum(r["state"] in ("stored", "hand-placed", "local") for r in rows)
        st.caption(f"{ready} of {len(rows)} backbones have their weights on this machine.")
        for r in rows:
            gated = " · gated" if r["gated"] else ""
            st.markdown(f"{STATE_ICON.get(r['state'], '')} **{r['name']}** — {STATE_TEXT.get(r['state'], r['state'])}"
                        f"  \n:gray[licence {r['licence'] or 'unknown'}{gated}]")
        missing = [r["name"] for r in rows if r["state"] in ("hub", "offline")]
        if not missing:
            return
        choice = st.selectbox("Pull weights for", missing, key="weights_pull_choice")
        row = next(r for r in rows if r["name"] == choice)
        if row["gated"]:
            st.caption(f"Gated: request access on its hub page first and set HF_TOKEN. {row['note']}")
        elif (row["licence"] or "").startswith(("cc-by-nc", "other")):
            st.caption(f"Licence {row['licence']}: non-commercial use only.")
        if row["state"] == "offline":
            _offline_hint(choice)
        else:
            _pull_button(choice, str(ds.root), key="weights_pull_button",
                         label=f"Pull {choice}" + (f" (~{row['est_bytes'] / 1e9:.1f} GB)" if row["est_bytes"] else ""))


def offer_weights_pull(ds, names: list[str], on_ready=None) -> None:
    """Augmentation Lab: pull the metric networks in ``names`` (missing here); ``on_ready`` reloads the metrics."""
    rows = {r["name"]: r for r in weight_rows()}
    cols = st.columns(len(names) + 1)
    for i, name in enumerate(names):
        from mai_core.models.backbones import canonical

        key = canonical(name)
        row = rows.get(key) or {"state": "hub"}
        with cols[i]:
            if row["state"] in ("stored", "hand-placed", "local"):
                st.caption(f"{key}: pulled — press **Use pulled weights**")
            elif row["state"] == "offline":
                _offline_hint(name)
            else:
                _pull_button(name, str(ds.root), key=f"aug_pull_{key}", label=f"Pull {name}")
    if on_ready is not None and cols[-1].button("Use pulled weights", key="aug_pull_reload",
                                                help="reload the metric networks once their pull has finished"):
        _weight_rows.clear()
        on_ready()
        st.rerun()


def weights_caption(run_path) -> str:
    """One line for a run: backbone, where its weights came from, and their licence."""
    from mai_core.runs import read_config

    try:
        cfg = read_config(run_path)
    except MaiError:
        return ""
    if cfg.get("kind") == "ensemble":
        return "Ensemble: each member's weights and licence are in its own run."
    model = cfg.get("model") or {}
    info = model.get("weights_info") or {}
    source = info.get("source", "unknown")
    if source == "random":
        return f"Backbone **{model.get('backbone')}** · weights: **random initialisation** (no pretrained weights)"
    licence = info.get("licence") or "unknown"
    text = (f"Backbone **{model.get('backbone')}** · weights: {source} — `{info.get('origin') or info.get('path')}`"
            f" · licence **{licence}**")
    if licence.startswith(("cc-by-nc", "other")):
        text += " (non-commercial)"
    return text
