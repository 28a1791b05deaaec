"""The sidebar training form and job list, drawn on every page by ``ui.page_setup``.

Training runs in background processes (:mod:`mai_core.jobs`), never in the script thread. The job
list is a fragment that refreshes itself every two seconds *only while a job is queued or running*;
once nothing is active it is drawn once per script run and costs nothing while the page sits idle.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import streamlit as st

from mai_core.runs import jobs
from mai_core.app.guard import guarded
from mai_core.errors import MaiError
from mai_core.training import default_config

REFRESH_S = 2.0
REFRESH_KEY = "_mai_jobs_refresh_s"  # session state: the job list's current auto-refresh interval
STATE_BADGE = {"queued": ("gray", "⏳"), "running": ("blue", "▶"), "finished": ("green", "✔"),
               "failed": ("red", "✖"), "stopped": ("orange", "■")}
MAX_JOBS_SHOWN = 6


# ----------------------------------------------------------------------------------------------
# cached lookups (cheap, but not worth repeating on every rerun)
# ----------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False)
def backbone_choices() -> list[tuple[str, str]]:
    """(name, description) of registered backbones, CPU-friendly ones first."""
    from mai_core.models.backbones import list_backbones

    specs = list_backbones(cpu_friendly=True) + list_backbones(cpu_friendly=False)
    return [(s.name, s.description) for s in specs]


@st.cache_data(show_spinner=False, ttl=30)
def policy_choices(data_dir: str) -> list[str]:
    try:
        from mai_core.augment.policy import list_policies

        return list_policies(data_dir=data_dir)
    except MaiError:
        return ["none"]


@st.cache_resource(show_spinner=False)
def device_choices() -> list[str]:
    from mai_core.device import cuda_count

    n = cuda_count()
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(n)]


def grouping_choices() -> dict[str, str | None]:
    """Label -> grouping CSV path (None = no grouping): every saved grouping in the workspace."""
    from mai_core.workspace import groupings_dir

    out: dict[str, str | None] = {"none (one head for all genes)": None}
    for p in sorted(groupings_dir().glob("*.csv")):
        out[p.stem] = str(p)
    return out


# ----------------------------------------------------------------------------------------------
# form
# ----------------------------------------------------------------------------------------------
def _fmt_eta(s) -> str:
    if s is None:
        return "—"
    s = int(round(float(s)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _training_form(ds) -> None:
    # drawn only while open: its choices (backbones, devices, policies) cost time the page need not spend
    with st.expander("New training run", expanded=False, key="train_form_open", on_change="rerun") as box:
        if not box.open:
            return
        backbones = backbone_choices()
        names = [b[0] for b in backbones]
        descriptions = dict(backbones)
        groupings = grouping_choices()
        policies = policy_choices(str(ds.root))
        with st.form("mai_train_form", border=False):
            st.caption(f"Dataset: **{Path(ds.root).name}** — {len(ds.ids)} training patches, "
                       f"{len(ds.genes)} genes")
            backbone = st.selectbox("Backbone", names, key="train_backbone",
                                    help="CPU-friendly backbones are listed first")
            if backbone in descriptions:
                st.caption(descriptions[backbone])
            recipe = default_config("cpu")
            alpha = st.slider("α — MSE weight", 0.0, 1.0, float(recipe["loss"]["alpha"]), 0.05, key="train_alpha")
            beta = st.slider("β — Pearson weight", 0.0, 1.0, float(recipe["loss"]["beta"]), 0.05, key="train_beta",
                             help="The covariance-structure term gets 1 − α − β, so α + β must not exceed 1.")
            grouping = st.selectbox("Gene grouping (cluster-wise heads)", list(groupings), key="train_grouping")
            c1, c2 = st.columns(2)
            epochs = c1.number_input("Epochs", 1, 1000, int(recipe["optim"]["epochs"]), key="train_epochs")
            batch_size = c2.number_input("Batch size", 1, 1024, int(recipe["optim"]["batch_size"]),
                                         key="train_batch_size")
            default_policy = policies.index(recipe["aug"]["policy"]) if recipe["aug"]["policy"] in policies else 0
            policy = st.selectbox("Augmentation policy", policies, index=default_policy, key="train_policy")
            device = st.selectbox("Device", device_choices(), key="train_device",
                                  help="One job runs per device; further jobs wait in a queue.")
            name = st.text_input("Run name (optional)", key="train_name", placeholder="auto: backbone + time")
            with st.expander("Advanced"):
                model_kind = st.selectbox("Model", ["finetune", "frozen", "ridge"], key="train_model",
                                          help="finetune: train backbone + heads; frozen: heads on cached "
                                               "embeddings (fast on CPU); ridge: ridge-regression baseline")
                extra = st.text_input("More `train` options", key="train_extra",
                                      placeholder="--lr 3e-4 --image-size 160 --tta off",
                                      help="any flags of `python -m mai_core train` (see --help)")
            submitted = st.form_submit_button("Start", type="primary", width="stretch", key="train_start")
    if submitted:
        if alpha + beta > 1 + 1e-9:
            st.error(f"α + β = {alpha + beta:.2f} exceeds 1: lower one of them (the covariance term gets "
                     "1 − α − β).")
            return
        try:
            extra_args = shlex.split(extra or "")
        except ValueError as exc:
            st.error(f"More train options: {exc}")
            return
        spec = jobs.TrainSpec(data=str(ds.root), name=name.strip(), backbone=backbone, model=model_kind,
                              extra=extra_args, epochs=int(epochs),
                              batch_size=int(batch_size), alpha=float(alpha), beta=float(beta),
                              grouping=groupings.get(grouping), aug_policy=policy, device=device)
        try:
            info = jobs.submit(spec)
        except MaiError as exc:
            st.error(exc.render())
            return
        where = "started" if info.state == "running" else f"queued (position {info.queue_position})" \
            if info.queue_position else info.state
        st.session_state["_mai_jobs_notice"] = (info.id, f"Job **{info.id}** {where} on {info.device}.")


# ----------------------------------------------------------------------------------------------
# job list
# ----------------------------------------------------------------------------------------------
def _curves(info: jobs.JobInfo) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from mai_core.runs import read_metrics

    m = read_metrics(info.run_dir)
    if m.empty:
        if info.state in ("queued", "running") and not info.phase and (info.epoch or 0) <= 1:
            st.caption("Curves appear after epoch 1.")
        return
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "val gene PCC"))
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["train_loss"], name="train", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["val_loss"], name="val", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["val_gene_pcc"], name="PCC", mode="lines+markers",
                             showlegend=False), 1, 2)
    fig.update_layout(height=190, margin=dict(l=0, r=0, t=24, b=0), legend=dict(orientation="h", y=-0.3),
                      font=dict(size=10))
    fig.update_xaxes(dtick=1, tickformat="d")
    st.plotly_chart(fig, width="stretch", config={"displayModeBar": False}, key=f"job_curves_{info.id}")


def _once(text: str) -> str:
    """Log text with each message once: a line repeating the previous one without its time stamp goes."""
    import re

    out: list[str] = []
    for line in text.splitlines():
        bare = re.sub(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ", "", line)
        if out and (line == out[-1] or bare == re.sub(r"^\[[^\]]*\] ", "", out[-1])):
            continue
        out.append(line)
    return "\n".join(out)


def _badge(state: str) -> str:
    color, icon = STATE_BADGE.get(state, ("gray", "?"))
    return f":{color}-badge[{icon} {state}]"


def _job_row(info: jobs.JobInfo) -> None:
    st.markdown(f"**{info.id}** {_badge(info.state)}")
    if info.state == "queued":
        st.caption(f"waiting for {info.device}" + (f" (position {info.queue_position})" if info.queue_position else ""))
    elif info.state == "running" and info.phase:
        done, total = info.phase_done or 0, info.phase_total or 0
        st.progress(min(done / total, 1.0) if total else 0.0,
                    text=f"{info.phase}: {done:,}/{total:,} patches" if total else str(info.phase))
    elif info.state in ("running", "stopped", "failed"):
        text = f"epoch {info.epoch or 0}/{info.epochs or '?'}"
        if "predict-slide" in info.command:  # a slide prediction counts tiles, not epochs
            text = f"{info.epoch or 0:,}/{info.epochs or 0:,} tiles"
        if info.state == "running":
            text += f" · ETA {_fmt_eta(info.eta_s)}"
        if info.best_val_gene_pcc is not None:
            text += f" · best PCC {info.best_val_gene_pcc:.3f}"
        st.progress(min(max(float(info.progress), 0.0), 1.0), text=text)
    elif info.best_val_gene_pcc is not None:
        st.caption(f"best val gene PCC {info.best_val_gene_pcc:.3f}")
    if info.state == "failed" and info.error:
        st.error(info.error)
    cols = st.columns(2)
    if info.is_active and cols[0].button("Stop", key=f"job_stop_{info.id}", width="stretch",
                                         help="checkpoint and stop (queued: leave the queue)"):
        try:
            jobs.stop(info.id)
        except MaiError as exc:
            st.error(exc.render())
        st.rerun(scope="app")
    if info.resumable and cols[0].button("Resume", key=f"job_resume_{info.id}", width="stretch",
                                         help="continue from the last checkpoint"):
        try:
            jobs.resume(info.id)
        except MaiError as exc:
            st.error(exc.render())
        st.rerun(scope="app")
    if not info.is_active and cols[1].button("Hide", key=f"job_forget_{info.id}", width="stretch",
                                             help="remove from this list (the run stays)"):
        jobs.forget(info.id)
        st.rerun(scope="app")
    if info.state != "queued":
        # drawn only while open: every page run (and every refresh of a live list, in every session) would
        # otherwise read each job's metrics and log and send its curves to the browser again
        with st.expander("Curves and log", key=f"job_details_{info.id}", on_change="rerun") as box:
            if box.open:
                _curves(info)
                st.caption(f"`{info.run_dir}`")
                st.code(_once(jobs.log_tail(info, 25)) or "(empty)", language=None)


def _job_panel(live: bool) -> None:
    infos = jobs.list_jobs()
    active = [j for j in infos if j.is_active]
    if live and not active:
        st.rerun(scope="app")  # everything ended: redraw the page once, then stop refreshing
    if not live and active:
        st.rerun(scope="app")  # a job appeared while this list was idle
    if any(j.state == "queued" for j in active):
        jobs.kick_queues()
    notice = st.session_state.get("_mai_jobs_notice")
    if notice:
        job_id, text = notice if isinstance(notice, tuple) else (None, notice)
        shown_job = next((j for j in infos if j.id == job_id), None)
        st.success(text)
        if shown_job is None or shown_job.state not in ("queued", "running") or shown_job.progress > 0 \
                or shown_job.epoch:
            st.session_state.pop("_mai_jobs_notice", None)  # its card below now tells how it goes
    if not infos:
        st.caption("No training jobs yet.")
        return
    # active jobs first, then the most recently queued
    shown = sorted(infos, key=lambda j: (not j.is_active, -(j.queued_at or 0)))[:MAX_JOBS_SHOWN]
    for info in shown:
        with st.container(border=True):
            _job_row(info)
    if len(infos) > MAX_JOBS_SHOWN:
        st.caption(f"{len(infos) - MAX_JOBS_SHOWN} older jobs: see the Results page or `python -m mai_core jobs list`.")
    if live:
        st.caption(f"updated {time.strftime('%H:%M:%S')}")


@st.fragment(run_every=REFRESH_S)
@guarded
def _job_panel_live() -> None:
    _job_panel(live=True)


@st.fragment
@guarded
def _job_panel_idle() -> None:
    _job_panel(live=False)


def refresh_interval() -> float | None:
    """Seconds between automatic refreshes of the job list: only while some job is queued or running."""
    return REFRESH_S if jobs.active_jobs() else None


def render_sidebar_training(ds) -> None:
    """Training form + job list in the sidebar (called by ``ui.page_setup`` on every page)."""
    with st.sidebar:
        st.markdown("### Training")
        _training_form(ds)
        from mai_core.app.weights import weights_panel

        weights_panel(ds)
        interval = refresh_interval()
        st.session_state[REFRESH_KEY] = interval
        if interval:
            _job_panel_live()
        else:
            _job_panel_idle()
