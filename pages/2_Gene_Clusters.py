import streamlit as st

from mai_core import app as ui

ds = ui.page_setup("Gene Clusters")

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import plotly.express as px  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from mai_core import genes as G  # noqa: E402
from mai_core.errors import MaiError  # noqa: E402

N_PCS = 50
METHODS = {"k-means": "kmeans", "prefix": "prefix", "gene set": "geneset"}


@st.cache_data(show_spinner="Reducing gene profiles (PCA)…", max_entries=8)
def _profiles(fp: str, path: str, seed: int) -> G.GeneProfiles:
    return G.gene_profiles(ui.cached_dataset(path).X, n_pcs=N_PCS, seed=seed)


@st.cache_data(show_spinner="Clustering genes (k-means)…", max_entries=64)
def _kmeans(fp: str, path: str, k: int, seed: int):
    d = ui.cached_dataset(path)
    return G.kmeans_genes(None, d.genes, k=k, seed=seed, profiles=_profiles(fp, path, seed))


@st.cache_data(show_spinner="Scanning k (inertia and silhouette)…", max_entries=8)
def _scan(fp: str, path: str, seed: int, k_max: int) -> pd.DataFrame:
    return G.kmeans_scan(_profiles(fp, path, seed), range(2, k_max + 1), seed=seed)


@st.cache_data(show_spinner="Embedding genes with UMAP (first time only)…", max_entries=8)
def _umap(fp: str, path: str, n_neighbors: int, min_dist: float, seed: int):
    d = ui.cached_dataset(path)
    return G.umap_embedding(d.X, n_pcs=N_PCS, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed,
                            fingerprint=fp, profiles=_profiles(fp, path, seed))


@st.cache_data(show_spinner=False, max_entries=8)
def _summary(fp: str, path: str) -> pd.DataFrame:
    d = ui.cached_dataset(path)
    return G.gene_summary(d.X, d.genes)


@st.cache_data(show_spinner=False, max_entries=8)
def _truth(fp: str, path: str):
    return G.true_modules(path)


@st.cache_data(show_spinner=False, max_entries=16)
def _gmt(source: str, text: str | None) -> dict:
    return G.parse_gmt_text(text, source) if text is not None else G.parse_gmt(source)


path = str(ds.root)
fp = ds.fingerprint
n_genes = len(ds.genes)
if n_genes < 4:
    st.error(f"gene clustering needs at least 4 genes; this dataset has {n_genes}.")
    st.stop()

controls, plot_col = st.columns([1, 3])
with controls:
    label = st.radio("Method", list(METHODS), key="method", horizontal=True)
    method = METHODS[label]
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="seed"))
    k_max = min(20, n_genes - 1)
    k = st.slider("Clusters (K)", 2, k_max, min(5, k_max), key="k", disabled=method != "kmeans")
    grouping = None
    try:
        if method == "kmeans":
            grouping = _kmeans(fp, path, int(k), seed)
        elif method == "prefix":
            min_size = int(st.number_input("Smallest prefix group", 1, n_genes, min(5, n_genes), key="prefix_min"))
            pattern = st.text_input("Prefix rule (regular expression, first group = prefix)",
                                    G.DEFAULT_PREFIX_PATTERN, key="prefix_pattern")
            grouping = G.prefix_groups(ds.genes, pattern=pattern, min_size=min_size)
        else:
            own = Path(path) / "modules.gmt"
            sources = (["dataset modules.gmt"] if own.is_file() else []) + ["upload", "path"]
            src = st.radio("Gene sets", sources, key="gmt_source")
            sets = None
            if src == "dataset modules.gmt":
                sets = _gmt(str(own), None)
            elif src == "upload":
                up = st.file_uploader("GMT file", type=["gmt", "txt"], key="gmt_upload")
                if up is not None:
                    sets = _gmt(up.name, up.getvalue().decode("utf-8", errors="replace"))
            else:
                typed = st.text_input("GMT file path", key="gmt_path", placeholder="/data/h.all.v7.0.symbols.gmt")
                if typed:
                    sets = _gmt(str(Path(typed).expanduser()), None)
            min_set = int(st.number_input("Smallest set group", 1, n_genes, 1, key="geneset_min"))
            if sets is None:
                st.info("Choose a GMT gene-set file.")
            else:
                grouping = G.geneset_groups(ds.genes, sets, min_size=min_set, source=src)
    except MaiError as exc:
        ui.show_error(exc)
    with st.expander("UMAP settings"):
        n_neighbors = st.slider("Neighbours", 2, max(2, min(100, n_genes - 1)), min(15, n_genes - 1), key="umap_nn")
        min_dist = st.slider("Minimum distance", 0.0, 1.0, 0.1, 0.05, key="umap_min_dist")

if grouping is None:
    st.stop()

sizes = G.group_sizes(grouping)
summ = _summary(fp, path)
emb = _umap(fp, path, int(n_neighbors), float(min_dist), seed)
points = pd.DataFrame({"x": emb[:, 0], "y": emb[:, 1], "gene": ds.genes, "mean": summ["mean"].to_numpy(),
                       "cluster": grouping.groups})
order = sizes["group"].tolist()
with plot_col:
    st.subheader(f"UMAP of genes, coloured by {label} group ({len(sizes)} groups)")
    fig = px.scatter(points, x="x", y="y", color="cluster", hover_name="gene",
                     hover_data={"mean": ":.3f", "cluster": True, "x": False, "y": False},
                     category_orders={"cluster": order}, render_mode="webgl", height=560)
    fig.update_layout(margin=dict(l=10, r=10, t=10, b=10), xaxis_title="UMAP 1", yaxis_title="UMAP 2",
                      legend_title_text="group")
    fig.update_traces(marker=dict(size=5 if n_genes > 1000 else 8))
    st.plotly_chart(fig, key="umap_plot", width="stretch")

truth = _truth(fp, path)
if truth:
    try:
        ari = G.grouping_ari(grouping, truth)
        st.metric("Adjusted Rand index vs the true modules", f"{ari:.3f}",
                  help=f"over the {len(truth)} genes that belong to a planted module (modules.gmt); 1 = identical")
    except MaiError as exc:
        st.caption(exc.message)

tab_table, tab_k = st.tabs(["Groups", "Choosing K"])
with tab_table:
    st.dataframe(sizes, key="group_table", hide_index=True, width="stretch")
    query = st.text_input("Find genes (name contains)", key="member_search")
    if query:
        hits = pd.DataFrame({"gene": grouping.genes, "group": grouping.groups})
        hits = hits[hits["gene"].str.contains(query, case=False, regex=False)]
        st.dataframe(hits, key="member_hits", hide_index=True, width="stretch")
        st.caption(f"{len(hits)} gene(s) match")
with tab_k:
    scan = _scan(fp, path, seed, k_max)
    kfig = make_subplots(specs=[[{"secondary_y": True}]])
    kfig.add_trace(go.Scatter(x=scan["k"], y=scan["inertia"], mode="lines+markers", name="inertia"))
    kfig.add_trace(go.Scatter(x=scan["k"], y=scan["silhouette"], mode="lines+markers", name="silhouette"),
                   secondary_y=True)
    if method == "kmeans":
        kfig.add_vline(x=int(k), line_dash="dot", annotation_text=f"K = {k}")
    kfig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="K")
    kfig.update_yaxes(title_text="inertia (within-cluster sum of squares)", secondary_y=False)
    kfig.update_yaxes(title_text="silhouette", secondary_y=True)
    st.plotly_chart(kfig, key="k_scan", width="stretch")
    st.caption("Look for an elbow in inertia and a high silhouette. Profiles are standardised and reduced to "
               f"{N_PCS} principal components, so the distance between genes reflects their correlation.")

st.subheader("Use this grouping")
default_name = f"kmeans_k{k}" if method == "kmeans" else method
s1, s2, s3 = st.columns([2, 1, 1])
name = s1.text_input("Grouping name", default_name, key="grouping_name")
if s2.button("Save grouping", key="save_grouping", type="primary"):
    try:
        saved = G.save_grouping(grouping, name)
        st.success(f"Saved {saved} — pick it in the training form.")
    except MaiError as exc:
        ui.show_error(exc)
s3.download_button("Download CSV", grouping.to_frame().to_csv(index=False), file_name=f"{name or 'grouping'}.csv",
                   mime="text/csv", key="download_grouping")
