import streamlit as st

from mai_core import app as ui

ds = ui.page_setup("Slide viewer", icon="🗺️", require_dataset=False)

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from mai_core import explain, spatial  # noqa: E402
from mai_core.errors import MaiError, Problem  # noqa: E402
from mai_core.runs import jobs, list_runs  # noqa: E402
from mai_core.workspace import cache_dir  # noqa: E402

MAX_CAM_GENES = 8
COLOUR_SCALES = ["Viridis", "Magma", "Inferno", "Cividis", "Plasma", "Blues", "RdBu_r"]
TTA_CHOICES = [1, 2, 4, 8]


# ---------------------------------------------------------------------------------------------- cached loads
def stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(show_spinner="Loading the slide prediction…", max_entries=4)
def load_map(path: str, mtime: int) -> spatial.SlideMap:
    return spatial.load_slide_map(path)


@st.cache_data(show_spinner=False, max_entries=4)
def thumb_uri(path: str, mtime: int) -> str:
    return spatial.thumbnail_uri(load_map(path, mtime).thumb)


@st.cache_data(show_spinner="Clustering spots…", max_entries=8)
def clusters(path: str, mtime: int, k: int) -> np.ndarray:
    return spatial.spot_clusters(load_map(path, mtime).X, k)


# one shared object per view (not a copy per rerun): the chart keeps its identity, so a click survives the rerun
@st.cache_resource(show_spinner="Drawing the map…", max_entries=16)
def figure(path: str, mtime: int, kind: str, name: str | None, k: int, side_by_side: bool, opacity: float,
           scale: str, outline: bool, shared: bool):
    sm = load_map(path, mtime)
    layer = spatial.map_layer(sm, kind, name, clusters(path, mtime, k) if kind == "cluster" else None)
    both = side_by_side and layer.measured is not None
    fig = spatial.map_figure(sm, layer.values, layer.title, layer.unit,
                             measured=layer.measured if side_by_side else None, categorical=layer.categorical,
                             opacity=opacity, colorscale=scale, outline_labels=outline, shared_range=shared,
                             thumb_uri=thumb_uri(path, mtime),
                             agreement=spatial.section_agreement(sm, name) if both else None,
                             measured_title=f"{name} — measured" if both else None)
    return fig, spatial.payload_bytes(fig)


@st.cache_data(show_spinner="Reading the spot's patch…", max_entries=64)
def spot_patch(path: str, mtime: int, i: int) -> np.ndarray:
    return load_map(path, mtime).spot_patch(i)


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def explainer(run_path: str, run_key: str) -> explain.CamExplainer:
    return explain.CamExplainer.from_run(run_path, device="auto", disk_cache=cache_dir() / "gradcam")


@st.cache_data(show_spinner="Computing Grad-CAM…", max_entries=32)
def cams(path: str, mtime: int, i: int, genes: tuple[str, ...], run_path: str, run_key: str):
    patch = spot_patch(path, mtime, i)
    result = explainer(run_path, run_key).explain(patch[None], list(genes), method="gradcam")
    return result.cams[0], result.predicted[0]


# ---------------------------------------------------------------------------------------------- start a prediction
def usable_runs():
    return [r for r in list_runs() if r.genes_path.is_file() and
            (r.model_checkpoint() is not None or r.kind == "ensemble")]


def typed(text: str, what: str) -> str | None:
    return str(ui.resolve_typed_path(text, what, ds)) if text.strip() else None


def start_form() -> None:
    runs = usable_runs()
    if not runs:
        st.info("No trained runs yet: train one from **Training** in the sidebar, then predict a slide with it.")
        return
    with st.form("sv_start"):
        c1, c2 = st.columns(2)
        run_name = c1.selectbox("Run", [r.name for r in runs], key="sv_run")
        image = c2.text_input("Slide image (SVS, NDPI, MRXS, TIFF, JPEG, PNG…)", key="sv_image",
                              placeholder="/data/slides/section.svs")
        c3, c4, c5 = st.columns(3)
        spots = c3.text_input("Spot positions (optional)", key="sv_spots",
                              help="legacy-ST selection TSV, Visium tissue_positions.csv or CSV id,px,py; "
                                   "empty: a grid over the tissue")
        counts = c4.text_input("Measured counts (optional)", key="sv_counts",
                               help="ST counts table, 10x .h5 or .h5ad: shown beside the prediction")
        labels = c5.text_input("Pathologist labels (optional)", key="sv_labels",
                               help="table with a spot id (or x, y / pixel_x, pixel_y) and a 'label' column")
        c6, c7, c8, c9 = st.columns(4)
        grid_um = c6.number_input("Grid step µm (0 = run's spot pitch)", 0.0, 2000.0, 0.0, 10.0, key="sv_grid")
        mpp = c7.number_input("Slide µm/px (0 = from the slide)", 0.0, 10.0, 0.0, 0.01, key="sv_mpp",
                              format="%.3f")
        tta = c8.selectbox("TTA views", TTA_CHOICES, key="sv_tta", help="dihedral views averaged per tile")
        device = c9.selectbox("Device", ["auto", "cpu"] + [f"cuda:{i}" for i in range(cuda_devices())], key="sv_device")
        submitted = st.form_submit_button("Predict in the background", type="primary")
    if not submitted:
        return
    try:
        if not image.strip():
            raise MaiError("no slide image", [Problem("slide image", "empty", "type the path of a slide")])
        run = next(r for r in runs if r.name == run_name)
        info = spatial.submit_slide_job(run.path, typed(image, "slide image"), spots=typed(spots, "spot file"),
                                        counts=typed(counts, "counts file"), labels=typed(labels, "labels file"),
                                        mpp=mpp or None, grid_um=grid_um or None, tta=int(tta), device=device)
    except MaiError as exc:
        ui.show_error(exc)
        return
    st.session_state["_mai_jobs_notice"] = (info.id, f"slide prediction {info.id} queued")
    st.session_state["sv_follow"] = info.id
    st.rerun()


@st.cache_resource(show_spinner=False)
def cuda_devices() -> int:
    from mai_core.device import cuda_count

    return cuda_count()


def slide_jobs() -> list[jobs.JobInfo]:
    return [j for j in jobs.list_jobs() if spatial.is_slide_job(j.command)]


def job_cards(active_only: bool) -> None:
    shown = [j for j in slide_jobs() if j.is_active or not active_only]
    for info in sorted(shown, key=lambda j: -(j.queued_at or 0))[:4]:
        with st.container(border=True):
            c1, c2 = st.columns([4, 1])
            if info.state == "running":
                done, total = int(info.epoch or 0), int(info.epochs or 0)
                eta = f" · ETA {ui.fmt_duration(info.eta_s)}" if info.eta_s else ""
                c1.progress(min(max(float(info.progress), 0.0), 1.0),
                            text=f"**{info.id}** · {done:,}/{total:,} tiles{eta}" if total else f"**{info.id}** starting…")
            else:
                c1.markdown(f"**{info.id}** · {info.state}" + (f" — {info.error}" if info.error else ""))
            if info.is_active and c2.button("Stop", key=f"sv_stop_{info.id}"):
                try:
                    jobs.stop(info.id)
                except MaiError as exc:
                    ui.show_error(exc)
                st.rerun()


@st.fragment(run_every=2.0)
@ui.guarded
def live_jobs() -> None:
    if not any(j.is_active for j in slide_jobs()):
        st.rerun(scope="app")  # finished: list the new prediction
    job_cards(active_only=True)


# ---------------------------------------------------------------------------------------------- choose a prediction
predictions = spatial.list_predictions()
running = [j for j in slide_jobs() if j.is_active]
with st.expander("Predict a slide in the background", expanded=not predictions and not running):
    start_form()
if running:
    live_jobs()

if not predictions:
    st.info(f"No slide predictions yet in `{spatial.slides_dir()}`. Start one above, or from a terminal: "
            "`python -m mai_core predict-slide --run RUN --image SLIDE [--spots SPOTS]` (it writes there by default).")
    st.stop()

names = {f"{p.name} · {time.strftime('%Y-%m-%d %H:%M', time.localtime(p.modified))} · {p.size / 1e6:.1f} MB":
         p for p in predictions}
choice = st.selectbox("Slide prediction", list(names), key="sv_prediction")
path = names[choice].path
mtime = stamp(path)
try:
    sm = load_map(str(path), mtime)
except MaiError as exc:
    ui.show_error(exc)
    st.stop()
except (OSError, ValueError, KeyError) as exc:
    ui.show_error(MaiError("cannot read this slide prediction", [Problem(
        str(path), type(exc).__name__, "predict the slide again (the file may be incomplete or not from predict-slide)")]))
    st.stop()

meta = sm.meta
facts = [f"{sm.n:,} {'tiles' if meta.get('positions') == 'grid' else 'spots'}", f"{len(sm.genes):,} genes",
         f"values: {sm.units}"]
if meta.get("slide_mpp"):
    facts.append(f"slide {float(meta['slide_mpp']):.3f} µm/px")
if meta.get("run"):
    facts.append(f"run `{Path(str(meta['run'])).name}`")
st.caption(" · ".join(facts))
for note in meta.get("notes", []):
    st.caption(f"ℹ️ {note}")

# ---------------------------------------------------------------------------------------------- map controls
kinds = spatial.layer_kinds(sm)
c_kind, c_name, c_op, c_scale = st.columns([1.2, 2.2, 1, 1])
kind = c_kind.selectbox("Colour by", kinds, format_func=spatial.LAYER_KINDS.get, key="sv_kind")
name, k = None, 8
if kind == "gene":
    ranked = sm.genes_by_trust()
    name = c_name.selectbox("Gene (type to search; most trustworthy first)", ranked, key="sv_gene",
                            format_func=lambda g: f"{g} · r {sm.pcc[sm.gene_index(g)]:.2f}"
                            if np.isfinite(sm.pcc[sm.gene_index(g)]) else g,
                            help="sorted by the run's validation Pearson r for the gene: how far its map can "
                                 "be trusted")
elif kind == "programme":
    name = c_name.selectbox("Gene programme", list(sm.programmes.columns), key="sv_programme",
                            help="mean per-gene z-score of the programme's genes over the spots")
elif kind == "cluster":
    k = c_name.slider("Clusters", 2, max(2, min(20, sm.n - 1)), min(6, max(2, sm.n - 1)), key="sv_k",
                      help="k-means on the principal components of the standardised predictions")
opacity = c_op.slider("Opacity", 0.0, 1.0, 0.8, 0.05, key="sv_opacity")
scale = c_scale.selectbox("Colour scale", COLOUR_SCALES, key="sv_scale", disabled=kind in ("cluster", "label"))
c_side, c_shared, c_outline = st.columns(3)
has_measured = kind == "gene" and sm.measured is not None
# a separate key while there is nothing measured: opening a prediction without counts first must not switch the
# measured map off for the ones that have them
side = c_side.toggle("Measured beside predicted", value=has_measured, key="sv_side" if has_measured else "sv_side_none",
                     disabled=not has_measured,
                     help="the section's counts, normalised like the training data" if has_measured else
                     "this prediction has no measured counts for this layer (predict-slide --counts)")
shared = c_shared.toggle("One colour range for both", value=False, key="sv_shared", disabled=not (side and has_measured))
outline = c_outline.toggle("Pathologist labels as outlines", value=False, key="sv_outline",
                           disabled=sm.labels is None or kind == "label")

try:
    fig, size = figure(str(path), mtime, kind, name, int(k), bool(side and has_measured), float(opacity), scale,
                       bool(outline and sm.labels is not None and kind != "label"), bool(shared))
except MaiError as exc:
    ui.show_error(exc)
    st.stop()
event = st.plotly_chart(fig, width="stretch", key="sv_map", on_select="rerun", selection_mode="points",
                        config={"scrollZoom": True, "displaylogo": False})
if kind == "gene" and has_measured:
    r_sec, n_sec = spatial.section_agreement(sm, name)
    if np.isfinite(r_sec):
        r_val = sm.pcc[sm.gene_index(name)]
        st.markdown(f"**{name} on this section:** Pearson r **{r_sec:.2f}** between predicted and measured over "
                    f"{n_sec:,} spots" + (f" (the run's validation r: {r_val:.2f})" if np.isfinite(r_val) else ""))
st.caption(f"{spatial.spot_scale_note(sm)} Drag to pan, scroll to zoom (in the browser: nothing is recomputed); "
           f"click a spot to inspect it. Map payload {size / 1e6:.2f} MB.")

# ---------------------------------------------------------------------------------------------- the clicked spot
points = (event or {}).get("selection", {}).get("points", []) if event else []
picked = [p.get("customdata") for p in points if p.get("customdata") is not None]
if picked:
    value = picked[0][0] if isinstance(picked[0], (list, tuple)) else picked[0]
    st.session_state["sv_spot"] = (str(path), int(value))
spot = st.session_state.get("sv_spot")
if not spot or spot[0] != str(path) or not 0 <= spot[1] < sm.n:
    st.info("Click a spot on the map to see its patch, its predicted and measured values and Grad-CAM maps.")
    st.stop()
i = spot[1]
st.subheader(f"Spot {sm.ids[i]}")
default_genes = [name] if kind == "gene" else sm.genes_by_trust()[:2]
chosen = st.multiselect("Genes to explain", sm.genes_by_trust(), default=default_genes, key=f"sv_cam_genes_{kind}",
                        max_selections=MAX_CAM_GENES, help="Grad-CAM: which part of the patch drives each gene")
try:
    patch = spot_patch(str(path), mtime, i)
except MaiError as exc:
    ui.show_error(exc)
    st.stop()
c_img, c_tab = st.columns([1, 2])
tile_um = f" = {int(meta.get('read_px', patch.shape[1])) * float(meta['slide_mpp']):.0f} µm" \
    if meta.get("slide_mpp") else ""
c_img.image(patch, caption=f"patch the model saw ({patch.shape[1]} px{tile_um}"
            + (f", {meta['read_px']} px read off the slide)" if meta.get("resampled") else ")"), width="stretch")
unit = spatial.short_units(sm.units)
label = f" · pathologist label: **{sm.labels[i]}**" if sm.labels is not None and sm.labels[i] else ""
c_tab.markdown(f"centre ({sm.xy[i, 0]:.0f}, {sm.xy[i, 1]:.0f}) px{label} · values in {sm.units}")
if chosen:
    table = spatial.spot_table(sm, i, chosen)
    c_tab.dataframe(table, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(format="%.2f" if c == "validation r" else "%.3f",
                                         help="the run's validation Pearson r for the gene"
                                         if c == "validation r" else sm.units)
        for c in table.columns if table[c].dtype.kind == "f"})
if not chosen:
    st.stop()
run_path = str(meta.get("run") or "")
if not run_path or not Path(run_path).is_dir():
    ui.show_error(MaiError("the run that made this prediction is gone", [Problem(
        run_path or str(path), "run directory not found", "Grad-CAM needs the run: predict with an existing run")]))
    st.stop()
try:
    maps, predicted = cams(str(path), mtime, i, tuple(chosen), run_path, explain.run_key(run_path))
except MaiError as exc:
    ui.show_error(exc)
    st.stop()
st.image(explain.colorbar(explain.DEFAULT_COLORMAP, 400, 14), caption="Grad-CAM: low → high (each map to its own "
         "maximum)", width=400)
cols = st.columns(4)  # one map stays patch-sized, however few genes are chosen
for k_gene, gene in enumerate(chosen):
    with cols[k_gene % len(cols)]:
        st.image(explain.overlay(patch, maps[k_gene], 0.6, explain.DEFAULT_COLORMAP, weighted=True),
                 caption=f"Grad-CAM {gene}", width="stretch")
        st.caption(f"model output {predicted[k_gene]:.3f} {unit} (one view)")
