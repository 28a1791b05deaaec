import streamlit as st

from mai_core import app as ui

ds = ui.page_setup("Grad-CAM")

import plotly.graph_objects as go  # noqa: E402

from mai_core import explain  # noqa: E402
from mai_core.errors import MaiError  # noqa: E402
from mai_core.runs import RunDir, list_runs  # noqa: E402
from mai_core.workspace import cache_dir  # noqa: E402

MAX_GENES = 24


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def get_explainer(run_path: str, run_key: str, layer: str) -> explain.CamExplainer:
    return explain.CamExplainer.from_run(run_path, layer=layer or None, device="auto",
                                         disk_cache=cache_dir() / "gradcam")


@st.cache_data(show_spinner="Computing maps…", max_entries=8)
def get_cams(run_path: str, run_key: str, layer: str, data_root: str, fingerprint: str, split: str,
             ids: tuple[str, ...], genes: tuple[str, ...], method: str):
    data = ui.cached_dataset(data_root)
    images = data.images(split, [data.index(split)[i] for i in ids])
    result = get_explainer(run_path, run_key, layer).explain(images, list(genes), method=method)
    return images, result.cams, result.predicted, result.layer, result.peaks


@st.cache_data(show_spinner="Comparing maps…", max_entries=16)
def get_similarity(run_path: str, run_key: str, layer: str, data_root: str, fingerprint: str, split: str,
                   ids: tuple[str, ...], genes: tuple[str, ...], method: str):
    _, cams, _, _, _ = get_cams(run_path, run_key, layer, data_root, fingerprint, split, ids, genes, method)
    return explain.cam_similarity(cams, list(genes))


@st.cache_data(show_spinner=False, max_entries=8)
def gene_families(genes: tuple[str, ...]) -> list[str]:
    return explain.gene_families(genes)


@st.cache_data(show_spinner=False, max_entries=16)
def run_grouping(path: str, stamp: int):
    from mai_core.genes.grouping import load_grouping

    return load_grouping(path).members()


@st.cache_resource(show_spinner=False, max_entries=4)  # shared, not copied: the frame can be large
def split_truth(root: str, fingerprint: str, split: str):
    from mai_core.data import split_truth as truth_of

    return truth_of(ui.cached_dataset(root), split)


@st.cache_data(show_spinner=False, max_entries=16)
def validation_ids(path: str, stamp: int) -> frozenset:
    """IDs the run held out for validation (from its val_predictions.parquet)."""
    import pandas as pd

    try:
        return frozenset(pd.read_parquet(path, columns=["ID"])["ID"].astype(str))
    except (OSError, ValueError, KeyError):
        return frozenset()


@st.cache_data(show_spinner=False, max_entries=4)
def demo_truth(root: str, stamp: int):
    try:
        return explain.gene_modules(root)
    except MaiError:
        return {}


def usable(run: RunDir) -> bool:
    return run.genes_path.is_file() and (run.model_checkpoint() is not None or run.kind == "ensemble")


runs = [r for r in list_runs() if usable(r)]
if not runs:
    st.info("No trained runs yet. Train one from **Training** in the sidebar (or `python -m mai_core train`), "
            "then come back to see which tissue drives each gene's prediction.")
    st.stop()

# ---------------------------------------------------------------------------------------------- controls
c_run, c_method, c_layer = st.columns([2, 1, 1])
run_name = c_run.selectbox("Run", [r.name for r in runs], key="gc_run")
run = next(r for r in runs if r.name == run_name)
method = c_method.selectbox("Method", list(explain.METHODS), key="gc_method",
                            format_func=lambda m: explain.METHODS[m].label,
                            help="\n".join(f"- **{m.label}**: {m.description}" for m in explain.METHODS.values()))
layer = c_layer.text_input("Target layer", key="gc_layer", placeholder="automatic",
                           help="Dotted module name, e.g. blocks.-1.norm1 or stages.2 (default: per backbone).")
key = explain.run_key(run.path)
try:
    run_genes = run.read_genes()
    ex = get_explainer(str(run.path), key, layer.strip())
except MaiError as exc:
    ui.show_error(exc)
    st.stop()
st.caption(f"Target layer `{ex.layer_name}` · {ex.layers.family} · {len(run_genes)} genes · "
           f"{explain.METHODS[method].description}")

# image
c_split, c_search = st.columns([1, 3])
splits = ["train"] + (["test"] if ds.n_test else [])
split = c_split.radio("Split", splits, horizontal=True, key="gc_split")
pool = ds.ids if split == "train" else ds.test_ids
query = c_search.text_input("Search image ID", key="gc_search", placeholder="part of an ID")
matches = [i for i in pool if query.lower() in i.lower()] if query else pool
if not matches:
    st.warning(f"No {split} image ID contains '{query}'.")
    st.stop()
thumbs = st.columns(8)
for col, i, img in zip(thumbs, matches[:8], ui.cached_images(ds, matches[:8], split)):
    col.image(img, caption=i, width="stretch")
image_id = st.selectbox(f"Image ({len(matches)} matching)", matches, key="gc_image")

# genes
mode = st.radio("Genes", ["by name", "by prefix", "by cluster"], horizontal=True, key="gc_mode")
if mode == "by name":
    ui.restore("gc_genes", default=run_genes[:3])
    if any(g not in run_genes for g in st.session_state.get("gc_genes", [])):  # another run: keep what it has
        st.session_state["gc_genes"] = [g for g in st.session_state["gc_genes"] if g in run_genes] or run_genes[:3]
    chosen = st.multiselect("Genes", run_genes, key="gc_genes", max_selections=MAX_GENES)
    ui.remember("gc_genes")
elif mode == "by prefix":
    families = gene_families(tuple(run_genes))
    prefix = st.text_input("Name prefix", value=families[0] if families else "", key="gc_prefix",
                           help="Common families: " + ", ".join(families[:12]))
    try:
        chosen = explain.select_genes(run_genes, prefix=prefix.strip()) if prefix.strip() else []
    except MaiError as exc:
        ui.show_error(exc)
        chosen = []
else:
    stamp = run.grouping_path.stat().st_mtime_ns if run.grouping_path.is_file() else 0
    groups = run_grouping(str(run.grouping_path), stamp) if stamp else {}
    if not groups:
        st.info("This run has no grouping.csv.")
        chosen = []
    else:
        grp = st.selectbox("Cluster (the run's grouping)", list(groups),
                           format_func=lambda g: f"{g} ({len(groups[g])} genes)", key="gc_group")
        available = set(run_genes)
        chosen = [g for g in groups[grp] if g in available]
if len(chosen) > MAX_GENES:
    st.caption(f"Showing the first {MAX_GENES} of {len(chosen)} genes.")
    chosen = chosen[:MAX_GENES]
if not chosen:
    st.info("Choose at least one gene.")
    st.stop()

c_alpha, c_cmap, c_scale, c_cols = st.columns([2, 2, 2, 2])
alpha = c_alpha.slider("Map opacity", 0.0, 1.0, 0.7, 0.05, key="gc_alpha",
                       help="opacity where the map is highest; it fades with the map value, so low-attribution "
                            "tissue stays visible")
cmap = c_cmap.selectbox("Colour map", list(explain.COLORMAPS), key="gc_cmap",
                        index=list(explain.COLORMAPS).index(explain.DEFAULT_COLORMAP),
                        help="inferno, viridis, magma and cividis are perceptually uniform: equal steps in map "
                             "value look like equal steps in colour (jet and turbo are not)")
scaling = c_scale.radio("Map scale", list(explain.SCALINGS), key="gc_scaling", horizontal=True,
                        help="\n".join(f"- **{k}**: {v}" for k, v in explain.SCALINGS.items()))
per_row = c_cols.slider("Maps per row", 2, 8, 4, key="gc_per_row")

# ---------------------------------------------------------------------------------------------- overlays
try:
    images, cams, predicted, layer_label, peaks = get_cams(str(run.path), key, layer.strip(), str(ds.root),
                                                           ds.fingerprint, split, (image_id,), tuple(chosen), method)
except MaiError as exc:
    ui.show_error(exc)
    st.stop()
shown = explain.shared_scale(cams, peaks) if scaling == "shared" and peaks is not None else cams
truth = split_truth(str(ds.root), ds.fingerprint, split)
unit = ui.dataset_unit(ds)
val_stamp = run.val_predictions_path.stat().st_mtime_ns if run.val_predictions_path.is_file() else 0
if split == "test":
    role = "test patch: never seen in training or model selection"
elif image_id in (validation_ids(str(run.val_predictions_path), val_stamp) if val_stamp else frozenset()):
    role = "validation patch of this run: held out from training"
else:
    role = "training patch of this run: the model was fitted on it" if val_stamp else \
        "training split (this run recorded no validation split)"
scale_words = ("each map stretched to its own maximum" if scaling == "per map"
               else "one scale across the genes shown: the strongest map sets the top")
st.markdown(f"**{image_id}** — {role}. Values below each map: predicted and true expression, {unit.label}.")
st.image(explain.colorbar(cmap, 400, 14), caption=f"map value: low → high ({scale_words})", width=400)
per_row = max(2, per_row)
cells = [("original", None)] + [(gene, k) for k, gene in enumerate(chosen)]
for start in range(0, len(cells), per_row):
    cols = st.columns(per_row)
    for col, (gene, k) in zip(cols, cells[start:start + per_row]):
        with col:
            if k is None:
                st.image(images[0], caption="original patch", width="stretch")
                st.markdown("&nbsp;")
                continue
            st.image(explain.overlay(images[0], shown[0, k], alpha, cmap, weighted=True), caption=gene,
                     width="stretch")
            true = (f"{float(truth.at[image_id, gene]):.3f}" if truth is not None and gene in truth.columns
                    and image_id in truth.index else "—")
            st.markdown(f"predicted **{predicted[0, k]:.3f}** · true {true}")
if truth is None:
    st.caption("true —: this split has no known expression (no gene columns in test.csv and no test_truth.csv).")

# ---------------------------------------------------------------------------------------------- faithfulness
modules = demo_truth(str(ds.root), ds.fingerprint)
mask_file = ds.root / "masks" / f"{image_id}.npz"
if modules and mask_file.is_file():
    rows = []
    for k, gene in enumerate(chosen):
        module = modules.get(gene)
        if not module:
            continue
        mask = explain.load_masks(ds.root, [image_id], module)
        f = explain.faithfulness(cams[:1, k], mask)
        rows.append({"gene": gene, "module": module, "region area": f["mask_area"],
                     "energy ratio": f["energy_ratio"], "peak in region": f["hit_rate"]})
    if rows:
        with st.expander("Planted regions (demo data): does the map fall on the region driving the gene?"):
            st.dataframe(rows, hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.2f")
                                        for c in ("region area", "energy ratio", "peak in region")})
            st.caption("Energy ratio = share of the map inside the region / share of the area (>1: concentrated "
                       "on it); peak in region: the map's maximum lies within 8 px of it.")

# ---------------------------------------------------------------------------------------------- similarity
if len(chosen) >= 2:
    st.subheader("Map similarity between genes")
    n_sim = st.slider("Images used (the chosen one and the next matching IDs)", 1, 16, 4, key="gc_sim_images")
    start = matches.index(image_id)
    sim_ids = tuple((matches[start:] + matches[:start])[:n_sim])
    sim = get_similarity(str(run.path), key, layer.strip(), str(ds.root), ds.fingerprint, split, sim_ids,
                         tuple(chosen), method)
    fig = go.Figure(go.Heatmap(z=sim.to_numpy(), x=chosen, y=chosen, zmin=-1, zmax=1, colorscale="RdBu_r",
                               colorbar=dict(title="Pearson r of maps"),
                               hovertemplate="%{y} × %{x}<br>r = %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=max(340, 26 * len(chosen) + 140),
                      title=f"Pearson r between maps, mean over {len(sim_ids)} image(s)")
    ui.tidy(fig)
    st.plotly_chart(fig, width="stretch", key="gc_similarity", config=ui.PLOT_CONFIG)
    summary = explain.prefix_similarity(sim)
    if summary["n_within_pairs"] and summary["n_between_pairs"]:
        m1, m2, m3 = st.columns(3)
        m1.metric("same name prefix", f"{summary['within']:.3f}", help=f"{summary['n_within_pairs']} gene pairs")
        m2.metric("different prefix", f"{summary['between']:.3f}", help=f"{summary['n_between_pairs']} gene pairs")
        m3.metric("difference", f"{summary['difference']:+.3f}")
        st.caption("Families: " + "; ".join(f"{p}: {', '.join(g)}" for p, g in summary["groups"].items()))
