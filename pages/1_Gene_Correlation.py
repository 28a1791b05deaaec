import streamlit as st

from mai_core import app as ui

ds = ui.page_setup("Gene Correlation")

import numpy as np  # noqa: E402
import plotly.express as px  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from mai_core import genes as G  # noqa: E402
from mai_core.errors import MaiError  # noqa: E402

MAX_FULL = 400  # genes shown at full resolution


@st.cache_data(show_spinner="Correlating genes, ordering and fitting the network…", max_entries=8)
def _overview(fp: str, path: str, method: str, max_cells: int) -> G.CorrelationOverview:
    d = ui.cached_dataset(path)
    return G.correlation_overview(d.X, d.genes, method=method, max_cells=max_cells)


@st.cache_data(show_spinner=False, max_entries=8)
def _summary(fp: str, path: str):
    d = ui.cached_dataset(path)
    return G.gene_summary(d.X, d.genes)


@st.cache_data(show_spinner=False, max_entries=32)
def _sub_correlation(fp: str, path: str, method: str, genes: tuple[str, ...]):
    d = ui.cached_dataset(path)
    col = {g: i for i, g in enumerate(d.genes)}
    C = G.correlation(d.X[:, [col[g] for g in genes]], method=method)
    order = G.cluster_order(np.nan_to_num(C))
    return C[np.ix_(order, order)], [genes[i] for i in order]


@st.cache_data(show_spinner="Finding co-expression modules and their hub genes…", max_entries=8)
def _hubs(fp: str, path: str, method: str, beta: int):
    d = ui.cached_dataset(path)
    modules = G.tom_modules(d.X, d.genes, beta=beta, min_size=min(10, max(2, len(d.genes) // 10)), method=method)
    return G.hub_genes(d.X, d.genes, modules, beta=beta, top=5, method=method)


path = str(ds.root)
fp = ds.fingerprint
unit = ui.dataset_unit(ds)
if len(ds.genes) < 3:
    st.error(f"gene-gene correlation needs at least 3 genes; this dataset has {len(ds.genes)}.")
    st.stop()
c1, c2, c3 = st.columns([1, 1, 2])
method = c1.radio("Correlation", ["pearson", "spearman"], horizontal=True, key="corr_method",
                  format_func=str.capitalize,
                  help="Pearson: linear co-variation of the expression values; Spearman: of their ranks (robust "
                       "to outliers and to the expression scale)")
r_name = "Pearson r" if method == "pearson" else "Spearman ρ"
max_cells = c2.select_slider("Heatmap resolution (cells per side)", [50, 100, 150, 200], value=200, key="max_cells")
c3.caption(f"{len(ds.genes):,} genes × {ds.n_train:,} training samples. Genes are ordered by average-linkage "
           "clustering on 1 − r; with more genes than cells each cell is the mean correlation of a block of "
           "neighbouring genes.")

try:
    ov = _overview(fp, path, method, int(max_cells))
except MaiError as exc:
    ui.show_error(exc)
    st.stop()
if ov.n_constant:
    st.info(f"{ov.n_constant} constant gene(s) have no defined correlation; they are drawn as 0 (uncorrelated).")

left, right = st.columns([3, 2])
with left:
    st.subheader("Correlation heatmap (clustered order)")
    heat = go.Figure(go.Heatmap(z=np.round(ov.block, 3), x=ov.block_labels, y=ov.block_labels,
                                colorscale="RdBu_r", zmin=-1, zmax=1, colorbar=dict(title=r_name),
                                hovertemplate="%{y}<br>%{x}<br>mean " + r_name + " = %{z:.3f}<extra></extra>"))
    # an invisible trace on the diagonal gives Plotly's box-select tool something to select on; the box's
    # range (in cell units) tells which blocks it covers
    heat.add_trace(go.Scatter(x=ov.block_labels, y=ov.block_labels, mode="markers", marker=dict(opacity=0),
                              hoverinfo="skip", showlegend=False))
    heat.update_layout(height=640, dragmode="select", xaxis=dict(showticklabels=len(ov.block_labels) <= 60),
                       yaxis=dict(showticklabels=len(ov.block_labels) <= 60, autorange="reversed"))
    ui.tidy(heat)
    event = st.plotly_chart(heat, key="corr_heatmap", on_select="rerun", selection_mode="box",
                            width="stretch", config=ui.PLOT_CONFIG)
    st.caption("Drag a box over the heatmap to see its genes at full resolution below (double-click clears it). "
               "Zoom with the toolbar's magnifier.")
with right:
    st.subheader("Distribution of gene–gene correlations")
    centres = (ov.hist_edges[:-1] + ov.hist_edges[1:]) / 2
    hist = go.Figure(go.Bar(x=centres, y=ov.hist_counts, width=np.diff(ov.hist_edges), marker_color="#4c78a8",
                            hovertemplate="r ≈ %{x:.2f}: %{y:,} pairs<extra></extra>"))
    hist.update_layout(height=300, xaxis_title=f"{r_name} between two genes (each pair once)",
                       yaxis_title="gene pairs", bargap=0)
    ui.tidy(hist)
    st.plotly_chart(hist, key="corr_hist", width="stretch", config=ui.PLOT_CONFIG)

    st.subheader("Scale-free topology fit (soft threshold)")
    fit = ov.fit
    sf = go.Figure()
    sf.add_trace(go.Scatter(x=fit["beta"], y=fit["signed_r2"], mode="lines+markers", name="signed R²",
                            customdata=fit[["mean_k"]].to_numpy(),
                            hovertemplate="β=%{x}<br>signed R²=%{y:.3f}<br>mean connectivity k="
                                          "%{customdata[0]:.1f}<extra></extra>"))
    sf.add_hline(y=0.8, line_dash="dot", annotation_text="R² = 0.8")
    chosen = fit[fit["beta"] == ov.beta]
    sf.add_trace(go.Scatter(x=chosen["beta"], y=chosen["signed_r2"], mode="markers", name=f"chosen β = {ov.beta}",
                            marker=dict(size=14, color="crimson", symbol="star")))
    sf.update_layout(height=320, xaxis_title="soft-threshold power β", yaxis_title="scale-free fit (signed R²)",
                     xaxis_dtick=2)
    ui.tidy(sf)
    st.plotly_chart(sf, key="corr_scale_free", width="stretch", config=ui.PLOT_CONFIG)
    st.caption(" ".join(ui.GLOSS[k] for k in ("soft_threshold", "signed_r2", "scale_free")))

    st.subheader(f"Hub genes of the co-expression modules (β = {ov.beta})")
    try:
        hubs = _hubs(fp, path, method, int(ov.beta))
    except MaiError as exc:
        ui.show_error(exc)
        hubs = None
    if hubs is not None and not hubs.empty:
        st.dataframe(hubs[hubs["hub"]].drop(columns="hub"), hide_index=True, width="stretch", key="hub_genes",
                     column_config={"k_within": st.column_config.NumberColumn("intramodular connectivity",
                                                                              format="%.3f"),
                                    "k_scaled": st.column_config.NumberColumn("relative to the module's top",
                                                                              format="%.2f"),
                                    "kME": st.column_config.NumberColumn("kME", format="%.2f")})
        st.caption("Modules: WGCNA topological-overlap clusters of the 1,000 most variable genes. A hub is one of "
                   "the five genes most connected within its module (sum of |r|^β to the module's other genes); "
                   "kME is its correlation with the module's eigengene.")
    elif hubs is not None:
        st.caption("No co-expression module large enough to name hub genes.")

st.subheader("Full resolution")
src = st.radio("Genes to show", ["Cluster of the tree", "Gene list", "Heatmap selection"], horizontal=True,
               key="full_source", help="Heatmap selection: the genes of the blocks under the box you drag on "
                                       "the heatmap above")
selected: list[str] = []
if src == "Cluster of the tree":
    n_clusters = st.slider("Cut the tree into clusters", 2, max(2, min(60, len(ds.genes))),
                           min(20, max(2, len(ds.genes) // 3)), key="n_tree_clusters")
    clusters = ov.clusters(n_clusters)
    name = st.selectbox("Cluster", list(clusters), key="tree_cluster")
    selected = clusters.get(name, [])
elif src == "Gene list":
    picked = st.multiselect("Genes", ds.genes, default=ds.genes[: min(10, len(ds.genes))], key="gene_pick")
    typed = st.text_area("…or paste gene names (comma, space or newline separated)", key="gene_text")
    known, unknown = G.parse_gene_list(typed, ds.genes)
    if unknown:
        st.warning(f"not in this dataset: {', '.join(unknown[:20])}{' …' if len(unknown) > 20 else ''}")
    selected = list(dict.fromkeys(picked + known))
else:
    try:
        boxes = list(event.selection.box) if event and event.selection else []
    except AttributeError:
        boxes = []
    blocks = sorted({b for box in boxes if isinstance(box, dict) and "x" in box and "y" in box
                     for b in ov.blocks_in_box(box["x"], box["y"])})
    for b in blocks:
        selected.extend(ov.block_genes(b))
    if blocks:
        st.caption(f"{len(blocks)} heatmap block(s) selected: {len(selected)} genes.")
    else:
        st.info("Drag a box over the heatmap above to show the genes under it here.")

if len(selected) > MAX_FULL:
    st.warning(f"{len(selected)} genes selected; showing the first {MAX_FULL}.")
    selected = selected[:MAX_FULL]
if len(selected) >= 2:
    sub, names = _sub_correlation(fp, path, method, tuple(selected))
    full = go.Figure(go.Heatmap(z=np.round(sub, 3), x=names, y=names, colorscale="RdBu_r", zmin=-1, zmax=1,
                                colorbar=dict(title=r_name),
                                hovertemplate="%{y} × %{x}<br>" + r_name + " = %{z:.3f}<extra></extra>"))
    side = min(900, 280 + 12 * len(names))
    full.update_layout(height=side, xaxis=dict(showticklabels=len(names) <= 80),
                       yaxis=dict(showticklabels=len(names) <= 80, autorange="reversed"))
    ui.tidy(full)
    st.plotly_chart(full, key="corr_full", width="stretch", config=ui.PLOT_CONFIG)
elif src != "Heatmap selection":
    st.info("Pick at least two genes.")

st.subheader("Expression scale")
summ = _summary(fp, path)
groups = list(G.SCALE_GROUP_NAMES)
scat = px.scatter(summ, x="mean", y="std", color="scale_group", hover_name="gene",
                  hover_data={"cv": ":.2f", "zero_fraction": ":.2f", "mean": ":.3f", "std": ":.3f"},
                  labels={"mean": f"mean expression, {unit.label}", "std": f"standard deviation, {unit.label}",
                          "cv": "coefficient of variation", "zero_fraction": "fraction of zero values",
                          "scale_group": "scale group"},
                  category_orders={"scale_group": groups},
                  color_discrete_map=dict(zip(groups, ui.ordered_colours(len(groups)))),
                  log_x=bool((summ["mean"] > 0).all()), render_mode=ui.scatter_mode(len(summ)), height=440)
ui.tidy(scat, legend="below", legend_title="scale group (quarters of the log10-mean range, low → high)")
st.plotly_chart(scat, key="mean_std", width="stretch", config=ui.PLOT_CONFIG)
counts = summ["scale_group"].value_counts().reindex(G.SCALE_GROUP_NAMES, fill_value=0)
st.caption(" · ".join(f"{k}: {v} genes" for k, v in counts.items()) + f" · expression unit: {unit.label} "
           f"({unit.description})")
