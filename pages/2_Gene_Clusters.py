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
METHODS = {"k-means": "kmeans", "prefix": "prefix", "gene set": "geneset", "functional (terms)": "functional",
           "bicluster": "bicluster"}
K_METHODS = ("kmeans", "functional", "bicluster")


@st.cache_data(show_spinner="Reducing gene profiles (PCA)…", max_entries=8)
def _profiles(fp: str, path: str, seed: int) -> G.GeneProfiles:
    return G.gene_profiles(ui.cached_dataset(path).X, n_pcs=N_PCS, seed=seed)


@st.cache_data(show_spinner="Clustering genes (k-means)…", max_entries=64)
def _kmeans(fp: str, path: str, k: int, seed: int):
    d = ui.cached_dataset(path)
    return G.kmeans_genes(None, d.genes, k=k, seed=seed, profiles=_profiles(fp, path, seed))


@st.cache_data(show_spinner="Biclustering genes × spots (spectral)…", max_entries=16)
def _bicluster(fp: str, path: str, k: int, seed: int):
    d = ui.cached_dataset(path)
    return G.bicluster_groups(d.X, d.genes, n_clusters=k, seed=seed)[0]


@st.cache_data(show_spinner="Clustering annotation terms…", max_entries=16)
def _functional(fp: str, genes: tuple, sets: dict, k: int, min_size: int, source: str):
    return G.functional_groups(list(genes), sets, n_clusters=k, min_size=min_size, source=source)


@st.cache_data(show_spinner="Scanning k (inertia and silhouette)…", max_entries=8)
def _scan(fp: str, path: str, seed: int, k_max: int) -> pd.DataFrame:
    return G.kmeans_scan(_profiles(fp, path, seed), range(2, k_max + 1), seed=seed)


def _umap_work(X, fp: str, n_neighbors: int, min_dist: float, seed: int, profiles, report):
    return G.umap_embedding(X, n_pcs=N_PCS, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed,
                            fingerprint=fp, profiles=profiles, progress=report)


def _umap(fp: str, path: str, n_neighbors: int, min_dist: float, seed: int):
    """The stored map, or None while it is computed in the background (progress shown on the page)."""
    emb = G.cached_umap(fp, n_genes, n_pcs=N_PCS, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    if emb is not None:
        return emb
    key = f"umap:{fp}:{n_neighbors}:{min_dist}:{seed}"
    task = ui.get_task(key)
    if task is not None and task.ok:
        return task.result
    if task is None or not task.running:
        if task is not None and not task.cancelled and task.error:
            return None  # failed: the panel shows why; the PCA map stays
        if task is not None and task.cancelled:
            return None
        ui.start_task(key, "Computing the UMAP map of genes (first time for these settings)", _umap_work,
                      ui.cached_dataset(path).X, fp, n_neighbors, min_dist, seed, _profiles(fp, path, seed),
                      unit="stages")
    return None


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
    k = st.slider("Clusters (K)", 2, k_max, min(5, k_max), key="k", disabled=method not in K_METHODS,
                  help="k-means: gene clusters; functional: clusters of annotation terms; bicluster: gene (and "
                       "spot) blocks of the checkerboard")
    grouping = None
    gmt_name = None
    terms = None
    try:
        if method == "kmeans":
            grouping = _kmeans(fp, path, int(k), seed)
        elif method == "bicluster":
            grouping = _bicluster(fp, path, int(k), seed)
            st.caption("Spectral biclustering of spots × genes (the 2,000 most variable genes): blocks of genes that "
                       "are high together in blocks of spots.")
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
                sets, gmt_name = _gmt(str(own), None), own.name
            elif src == "upload":
                up = st.file_uploader("GMT file", type=["gmt", "txt"], key="gmt_upload")
                if up is not None:
                    sets, gmt_name = _gmt(up.name, up.getvalue().decode("utf-8", errors="replace")), up.name
            else:
                typed = st.text_input("GMT file path", key="gmt_path", placeholder="/data/h.all.v7.0.symbols.gmt")
                if typed:
                    sets, gmt_name = _gmt(str(ui.resolve_typed_path(typed, "GMT file", ds=ds)), None), Path(typed).name
            min_set = int(st.number_input("Smallest set group", 1, n_genes, 1, key="geneset_min"))
            if sets is None:
                st.info("Choose a GMT gene-set file (GO terms, e.g. MSigDB C5, or any other annotation).")
            elif method == "functional":
                grouping, terms = _functional(fp, tuple(ds.genes), sets, int(k), max(2, min_set), gmt_name or src)
            else:
                grouping = G.geneset_groups(ds.genes, sets, min_size=min_set, source=src)
    except MaiError as exc:
        ui.show_error(exc)
    with st.expander("UMAP settings"):
        n_neighbors = st.slider("Neighbours", 2, max(2, min(100, n_genes - 1)),
                                min(G.UMAP_DEFAULTS["n_neighbors"], n_genes - 1), key="umap_nn",
                                help="how many similar genes shape each gene's neighbourhood: small values show "
                                     "local detail, large values the global layout")
        min_dist = st.slider("Minimum distance", 0.0, 1.0, G.UMAP_DEFAULTS["min_dist"], 0.05, key="umap_min_dist",
                             help="how tightly genes may pack together on the map")

if grouping is None:
    st.stop()

sizes = G.group_sizes(grouping)
summ = _summary(fp, path)
unit = ui.dataset_unit(ds)
emb = _umap(fp, path, int(n_neighbors), float(min_dist), seed)
mapped = "UMAP"
if emb is None:  # first computation for these settings runs in the background: show the PCA map meanwhile
    emb, mapped = _profiles(fp, path, seed).coords[:, :2], "PCA"
mean_label = f"mean expression, {unit.label}" if unit.declared else "mean expression"
points = pd.DataFrame({"x": emb[:, 0], "y": emb[:, 1], "gene": ds.genes, mean_label: summ["mean"].to_numpy(),
                       "group": grouping.groups})
background = [g for g in (G.UNASSIGNED, G.OTHER) if g in set(grouping.groups)]
order = [g for g in sizes["group"].tolist() if g not in background] + background
with plot_col:
    st.subheader(f"{mapped} map of genes, coloured by {label} group ({len(sizes)} groups)")
    ui.progress_panel(f"umap:{fp}:{int(n_neighbors)}:{float(min_dist)}:{seed}")
    if mapped == "PCA":
        st.caption("The UMAP map is being computed; meanwhile genes are placed by their first two principal "
                   "components (same colours and groups).")
    fig = px.scatter(points, x="x", y="y", color="group", hover_name="gene",
                     hover_data={mean_label: ":.3f", "group": True, "x": False, "y": False},
                     category_orders={"group": order}, color_discrete_map=ui.group_colours(order, background),
                     render_mode=ui.scatter_mode(n_genes), height=600)
    fig.update_layout(xaxis_title=f"{mapped} 1", yaxis_title=f"{mapped} 2")
    ui.tidy(fig, legend="right" if len(order) <= 24 else "below", legend_title="group")
    fig.update_traces(marker=dict(size=5 if n_genes > 1000 else 8))
    for g in background:  # catch-all groups sit under the named ones
        fig.update_traces(selector=dict(name=g), marker=dict(opacity=0.45))
    st.plotly_chart(fig, key="umap_plot", width="stretch", config=ui.PLOT_CONFIG)
    if G.UNASSIGNED in background:
        st.caption(f"**{G.UNASSIGNED}** (grey): genes in none of the gene sets, or only in sets with fewer genes "
                   "here than the smallest set group. They are still predicted: cluster-wise training gives them "
                   "a head of their own.")
    if G.OTHER in background:
        st.caption(f"**{G.OTHER}** (grey): genes whose name has no prefix under the rule, or whose prefix family "
                   "has fewer members than the smallest prefix group. They train together in one head.")

truth = _truth(fp, path)
if truth:
    try:
        ari = G.grouping_ari(grouping, truth)
        st.metric("Adjusted Rand index vs the true modules", f"{ari:.3f}",
                  help=f"over the {len(truth)} genes that belong to a planted module (modules.gmt); 1 = identical")
    except MaiError as exc:
        st.caption(exc.message)

if terms is not None:
    st.subheader(f"Annotation terms: MDS map of their similarity ({len(terms)} terms)")
    tfig = px.scatter(terms, x="x", y="y", color="cluster", hover_name="term", size="n_genes",
                      hover_data={"n_genes": True, "cluster": True, "x": False, "y": False}, height=480)
    tfig.update_layout(xaxis_title="MDS 1", yaxis_title="MDS 2")
    ui.tidy(tfig, legend="right", legend_title="term cluster")
    st.plotly_chart(tfig, key="term_mds", width="stretch", config=ui.PLOT_CONFIG)
    st.caption("Terms close together share many of their genes (distance = 1 − Jaccard overlap among this "
               "dataset's genes). A gene joins the term cluster that holds most of its terms.")

tabs = st.tabs(["Groups", "Choosing K"] if method == "kmeans" else ["Groups"], key="cluster_tab",
               on_change="rerun")  # "Choosing K" (a k-means scan) is computed only when opened
with tabs[0]:
    st.dataframe(sizes, key="group_table", hide_index=True, width="stretch",
                 column_config={"group": st.column_config.TextColumn("group", width="medium"),
                                "genes": st.column_config.NumberColumn("genes", width="small"),
                                "examples": st.column_config.TextColumn("examples", width="large")})
    query = st.text_input("Find genes (name contains)", key="member_search")
    if query:
        hits = pd.DataFrame({"gene": grouping.genes, "group": grouping.groups})
        hits = hits[hits["gene"].str.contains(query, case=False, regex=False)]
        st.dataframe(hits, key="member_hits", hide_index=True, width="stretch")
        st.caption(f"{len(hits)} gene(s) match")
if method == "kmeans" and tabs[1].open:
    with tabs[1]:
        scan = _scan(fp, path, seed, k_max)
        kfig = make_subplots(specs=[[{"secondary_y": True}]])
        kfig.add_trace(go.Scatter(x=scan["k"], y=scan["inertia"], mode="lines+markers", name="inertia",
                                  line=dict(color="#1f5fa8")))
        kfig.add_trace(go.Scatter(x=scan["k"], y=scan["silhouette"], mode="lines+markers", name="silhouette",
                                  line=dict(color="#d9751e")), secondary_y=True)
        kfig.add_vline(x=int(k), line_dash="dot", annotation_text=f"K = {k}")
        kfig.update_layout(height=380, xaxis_title="K", xaxis_dtick=1)
        ui.tidy(kfig)
        kfig.update_yaxes(title_text="inertia (within-cluster sum of squares)", secondary_y=False)
        kfig.update_yaxes(title_text="silhouette", secondary_y=True)
        st.plotly_chart(kfig, key="k_scan", width="stretch", config=ui.PLOT_CONFIG)
        st.caption("Look for an elbow in inertia and a high silhouette. Profiles are standardised and reduced to "
                   f"{N_PCS} principal components, so the distance between genes reflects their correlation.")

st.subheader("Use this grouping")
s1, s2, s3 = st.columns([2, 1, 1], vertical_alignment="bottom")
with s1:
    name = ui.default_following_text("Grouping name", G.suggested_grouping_name(grouping, gmt_name),
                                     key="grouping_name",
                                     help="follows the method and its settings until you type your own name")
clicked = s2.button("Save grouping", key="save_grouping", type="primary")
try:
    target = G.grouping_path(name)
except MaiError:
    target = None
ui.save_with_confirmation("save_grouping", "grouping", name.strip(), target, clicked,
                          lambda overwrite: G.save_grouping(grouping, name, overwrite=overwrite),
                          lambda saved: f"Saved **{saved.stem}** ({len(sizes)} groups) — pick it in the training "
                                        "form's gene grouping.")
s3.download_button("Download CSV", grouping.to_frame().to_csv(index=False), file_name=f"{name or 'grouping'}.csv",
                   mime="text/csv", key="download_grouping")
