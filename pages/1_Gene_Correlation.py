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


path = str(ds.root)
fp = ds.fingerprint
if len(ds.genes) < 3:
    st.error(f"gene-gene correlation needs at least 3 genes; this dataset has {len(ds.genes)}.")
    st.stop()
c1, c2, c3 = st.columns([1, 1, 2])
method = c1.radio("Correlation", ["pearson", "spearman"], horizontal=True, key="corr_method",
                  format_func=str.capitalize)
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
                                colorscale="RdBu_r", zmin=-1, zmax=1, colorbar=dict(title="r"),
                                hovertemplate="%{y}<br>%{x}<br>mean r = %{z:.3f}<extra></extra>"))
    heat.update_layout(height=620, margin=dict(l=10, r=10, t=10, b=10),
                       xaxis=dict(showticklabels=len(ov.block_labels) <= 60),
                       yaxis=dict(showticklabels=len(ov.block_labels) <= 60, autorange="reversed"))
    event = st.plotly_chart(heat, key="corr_heatmap", on_select="rerun", selection_mode=("points", "box"),
                            width="stretch")
with right:
    st.subheader("Distribution of gene–gene correlations")
    centres = (ov.hist_edges[:-1] + ov.hist_edges[1:]) / 2
    hist = go.Figure(go.Bar(x=centres, y=ov.hist_counts, width=np.diff(ov.hist_edges), marker_color="#4c78a8",
                            hovertemplate="r ≈ %{x:.2f}: %{y:,} pairs<extra></extra>"))
    hist.update_layout(height=280, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="r (upper triangle)",
                       yaxis_title="gene pairs", bargap=0)
    st.plotly_chart(hist, key="corr_hist", width="stretch")

    st.subheader("Scale-free topology fit (soft threshold)")
    fit = ov.fit
    sf = go.Figure()
    sf.add_trace(go.Scatter(x=fit["beta"], y=fit["signed_r2"], mode="lines+markers", name="signed R²",
                            customdata=fit[["mean_k"]].to_numpy(),
                            hovertemplate="β=%{x}<br>signed R²=%{y:.3f}<br>mean k=%{customdata[0]:.1f}<extra></extra>"))
    sf.add_hline(y=0.8, line_dash="dot", annotation_text="R² = 0.8")
    chosen = fit[fit["beta"] == ov.beta]
    sf.add_trace(go.Scatter(x=chosen["beta"], y=chosen["signed_r2"], mode="markers", name=f"chosen β = {ov.beta}",
                            marker=dict(size=14, color="crimson", symbol="star")))
    sf.update_layout(height=280, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="soft-threshold power β",
                     yaxis_title="signed R²", legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(sf, key="corr_scale_free", width="stretch")
    st.caption("Adjacency |r|^β; the lowest β reaching R² ≥ 0.8 is chosen (the best β when none does).")

st.subheader("Full resolution")
src = st.radio("Genes to show", ["Cluster of the tree", "Gene list", "Heatmap selection"], horizontal=True,
               key="full_source")
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
    points = []
    try:
        points = list(event.selection.points) if event and event.selection else []
    except AttributeError:
        points = []
    index = {lab: i for i, lab in enumerate(ov.block_labels)}
    blocks = sorted({index[p[a]] for p in points for a in ("x", "y") if isinstance(p, dict) and p.get(a) in index})
    for b in blocks:
        selected.extend(ov.block_genes(b))
    if not blocks:
        st.info("Click a cell (or box-select) in the heatmap to show its genes here.")

if len(selected) > MAX_FULL:
    st.warning(f"{len(selected)} genes selected; showing the first {MAX_FULL}.")
    selected = selected[:MAX_FULL]
if len(selected) >= 2:
    sub, names = _sub_correlation(fp, path, method, tuple(selected))
    full = go.Figure(go.Heatmap(z=np.round(sub, 3), x=names, y=names, colorscale="RdBu_r", zmin=-1, zmax=1,
                                hovertemplate="%{y} × %{x}<br>r = %{z:.3f}<extra></extra>"))
    side = min(900, 250 + 12 * len(names))
    full.update_layout(height=side, margin=dict(l=10, r=10, t=10, b=10),
                       xaxis=dict(showticklabels=len(names) <= 80), yaxis=dict(showticklabels=len(names) <= 80,
                                                                               autorange="reversed"))
    st.plotly_chart(full, key="corr_full", width="stretch")
elif src != "Heatmap selection":
    st.info("Pick at least two genes.")

st.subheader("Expression scale")
summ = _summary(fp, path)
scat = px.scatter(summ, x="mean", y="std", color="scale_group", hover_name="gene",
                  hover_data={"cv": ":.2f", "zero_fraction": ":.2f", "mean": ":.3f", "std": ":.3f"},
                  category_orders={"scale_group": list(G.SCALE_GROUP_NAMES)},
                  log_x=bool((summ["mean"] > 0).all()), render_mode="webgl", height=420)
scat.update_layout(margin=dict(l=10, r=10, t=10, b=10), legend_title_text="scale group (log10 mean)")
st.plotly_chart(scat, key="mean_std", width="stretch")
counts = summ["scale_group"].value_counts().reindex(G.SCALE_GROUP_NAMES, fill_value=0)
st.caption(" · ".join(f"{k}: {v}" for k, v in counts.items()))
