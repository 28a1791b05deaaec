"""MAI — spatial gene expression from H&E.

Entry point: `streamlit run app.py`. Defines the navigation; the Home page (choose a dataset and look at
it) lives here, the other pages in `pages/`.
"""

import numpy as np
import streamlit as st

from mai_core import app as ui


@st.cache_data(show_spinner=False, max_entries=4)
def gene_table(path: str, fingerprint: str):
    return ui.cached_dataset(path).gene_stats()


def home() -> None:
    ds = ui.page_setup("Spatial gene expression from H&E", icon="🔬")

    st.caption(
        "Predict the expression of thousands of genes from 224×224 H&E patches; explore gene structure, "
        "augmentations, training runs and per-gene Grad-CAM with the pages in the sidebar."
    )

    problems = ui.dataset_problems(str(ds.root), ui.dataset_stamp(str(ds.root)))
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Training patches", f"{ds.n_train:,}")
    c2.metric("Test patches", f"{ds.n_test:,}")
    c3.metric("Genes", f"{len(ds.genes):,}")
    c4.metric("Problems", len(problems))
    if problems:
        st.warning(f"{len(problems)} problem(s) in this dataset")
        st.dataframe([{"where": p.where, "problem": p.what, "how to fix": p.fix} for p in problems],
                     hide_index=True, width="stretch")
    if ds.meta_columns:
        st.caption("Metadata columns: " + ", ".join(ds.meta_columns))

    st.subheader("Image gallery")
    split = st.radio("Split", ["train", "test"] if ds.n_test else ["train"], horizontal=True, key="home_split")
    ids = ds.ids if split == "train" else ds.test_ids
    query = st.text_input("Filter by ID", key="home_id_filter", placeholder="part of an ID")
    shown = [i for i in ids if query.lower() in i.lower()] if query else ids
    per_page = 12
    pages = max(1, (len(shown) + per_page - 1) // per_page)
    page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key="home_page")
    chunk = shown[(page - 1) * per_page: page * per_page]
    cols = st.columns(6)
    for k, (sid, img) in enumerate(zip(chunk, ui.cached_images(ds, chunk, split) if chunk else [])):
        cols[k % 6].image(img, caption=sid, width="stretch")
    if not chunk:
        st.info("No image matches this filter.")

    st.subheader("Genes")
    stats = gene_table(str(ds.root), ds.fingerprint)
    unit = ui.dataset_unit(ds)
    st.dataframe(stats, hide_index=True, width="stretch", height=320,
                 column_config={"mean": st.column_config.NumberColumn(f"mean, {unit.label}"),
                                "std": st.column_config.NumberColumn(f"std, {unit.label}"),
                                "cv": st.column_config.NumberColumn("cv (std / mean)"),
                                "zero_fraction": st.column_config.NumberColumn(
                                    "sparsity", format="%.2f", help="fraction of patches where the gene is 0")})
    # drawn only while open: the first screen (numbers, gallery, gene table) needs no chart library
    with st.expander("Gene scales: histogram of mean expression", key="home_scales_open", on_change="rerun") as box:
        if box.open:
            import plotly.express as px

            fig = px.histogram(np.log10(stats["mean"].clip(lower=1e-4)), nbins=50,
                               labels={"value": f"log10 of mean expression, {unit.label}"},
                               title="Gene scales (log10 mean)")
            fig.update_layout(showlegend=False, height=280, margin=dict(t=40, b=10), yaxis_title="genes")
            st.plotly_chart(fig, width="stretch")


PAGES = {
    "Data": [
        st.Page(home, title="Home", icon=":material/home:", default=True),
    ],
    "Genes": [
        st.Page("pages/1_Gene_Correlation.py", title="Gene correlation", icon=":material/grid_on:"),
        st.Page("pages/2_Gene_Clusters.py", title="Gene clusters", icon=":material/bubble_chart:"),
    ],
    "Models": [
        st.Page("pages/3_Augmentation_Lab.py", title="Augmentation lab", icon=":material/palette:"),
        st.Page("pages/4_Results.py", title="Results", icon=":material/monitoring:"),
        st.Page("pages/5_Grad_CAM.py", title="Grad-CAM", icon=":material/visibility:"),
    ],
    "Slides": [
        st.Page("pages/6_Slide_Viewer.py", title="Slide viewer", icon=":material/map:"),
    ],
}

ui.run_page(st.navigation(PAGES))
