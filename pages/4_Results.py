import streamlit as st

from mai_core import app as ui

ds = ui.page_setup("Results & ensembles")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from mai_core.runs import compare as results  # noqa: E402
from mai_core.errors import MaiError  # noqa: E402
from mai_core.runs import RunDir, build_ensemble, read_metrics  # noqa: E402
from mai_core.workspace import cache_dir, runs_dir  # noqa: E402


def _stamp(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


@st.cache_data(show_spinner=False, max_entries=32)
def val_predictions(path: str, stamp: int) -> results.ValPredictions:
    return results.load_val_predictions(path)


@st.cache_data(show_spinner=False, max_entries=32)
def gene_table(path: str, stamp: int) -> pd.DataFrame:
    return results.per_gene_pcc(val_predictions(path, stamp))


@st.cache_data(show_spinner="Comparing runs…", max_entries=16)
def comparison(paths: tuple[str, ...], stamps: tuple[int, ...]) -> pd.DataFrame:
    return results.compare_runs(list(paths))


@st.cache_data(show_spinner=False, max_entries=16)
def corr_view(path: str, stamp: int, top_n: int):
    vp = val_predictions(path, stamp)
    genes, ct, cp = results.correlation_matrices(vp, top_n)
    return genes, ct, cp, results.correlation_fidelity(vp.y_true, vp.y_pred)


@st.cache_data(show_spinner="Predicting…", max_entries=8)
def submission_bytes(run_path: str, ckpt_stamp: int, csv_path: str, csv_stamp: int) -> bytes:
    out = cache_dir() / "submissions" / f"{Path(run_path).name}-{Path(csv_path).stem}.csv"
    results.write_submission(run_path, csv_path, out)
    return out.read_bytes()


def val_stamp(run: RunDir) -> int:
    return _stamp(run.val_predictions_path)


# ---------------------------------------------------------------------------------------------- runs table
table = results.runs_table()
if table.empty:
    st.info("No runs yet. Start one from **Training** in the sidebar (or `python -m mai_core train`).")
    st.stop()

shown = table.drop(columns=["path"]).rename(columns={"best_val_gene_pcc": "best val gene-PCC", "time_s": "time (s)",
                                                     "alpha": "α", "beta": "β"})
event = st.dataframe(shown, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row",
                     key="results_runs_table",
                     column_config={"best val gene-PCC": st.column_config.NumberColumn(format="%.4f"),
                                    "time (s)": st.column_config.NumberColumn(format="%.0f")})
rows = [r for r in (event.selection.rows if event is not None else []) if r < len(table)]
selected = table.iloc[rows] if rows else table.iloc[:1]
st.caption("Select rows to compare runs or build an ensemble; details show the first selected run.")
paths = {r["name"]: r["path"] for _, r in table.iterrows()}
ready = [n for n in selected["name"] if RunDir(paths[n]).val_predictions_path.is_file()]

tab_run, tab_corr, tab_cmp, tab_sub = st.tabs(["Run details", "Correlation structure", "Compare & ensemble",
                                               "Submission"])

# ---------------------------------------------------------------------------------------------- one run
with tab_run:
    name = st.selectbox("Run", list(selected["name"]) + [n for n in table["name"] if n not in set(selected["name"])],
                        key="results_run")
    run = RunDir(paths[name])
    st.caption(ui.weights_caption(run.path))
    metrics = read_metrics(run.path)
    if metrics.empty:
        st.info("No finished epoch yet.")
    else:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "validation gene PCC"))
        fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["train_loss"], name="train loss"), 1, 1)
        fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["val_loss"], name="val loss"), 1, 1)
        fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["val_gene_pcc"], name="val gene PCC"), 1, 2)
        fig.update_layout(height=300, margin=dict(t=30, b=10))
        fig.update_xaxes(title_text="epoch")
        st.plotly_chart(fig, width="stretch", key="results_curves")
    if not run.val_predictions_path.is_file():
        st.info("Validation predictions appear when the run finishes.")
    else:
        try:
            vp = val_predictions(str(run.path), val_stamp(run))
            genes_df = gene_table(str(run.path), val_stamp(run))
        except MaiError as exc:
            ui.show_error(exc)
            st.stop()
        c1, c2 = st.columns([3, 2])
        with c1:
            fig = go.Figure(go.Histogram(x=genes_df["pcc"].dropna(), nbinsx=40))
            fig.update_layout(height=300, title="Per-gene PCC on validation", xaxis_title="Pearson r",
                              yaxis_title="genes", margin=dict(t=40, b=10))
            st.plotly_chart(fig, width="stretch", key="results_pcc_hist")
            st.metric("mean gene PCC", f"{genes_df['pcc'].mean():.4f}",
                      help=f"{genes_df['pcc'].isna().sum()} constant genes excluded")
        with c2:
            k = st.slider("genes listed", 5, 50, 10, key="results_topk")
            st.markdown("**Best predicted**")
            st.dataframe(genes_df.head(k)[["gene", "pcc"]], hide_index=True, width="stretch")
            st.markdown("**Worst predicted**")
            st.dataframe(genes_df.dropna(subset=["pcc"]).tail(k)[::-1][["gene", "pcc"]], hide_index=True,
                         width="stretch")
        if run.grouping_path.is_file():
            try:
                clusters = results.cluster_pcc(genes_df, run.grouping_path)
                st.markdown("**Mean PCC per gene cluster** (the run's grouping)")
                st.dataframe(clusters, hide_index=True, width="stretch",
                             column_config={"mean_pcc": st.column_config.NumberColumn(format="%.4f"),
                                            "median_pcc": st.column_config.NumberColumn(format="%.4f")})
            except MaiError as exc:
                ui.show_error(exc)
        gene = st.selectbox("Predicted vs true for gene", list(genes_df["gene"]), key="results_gene")
        gi = vp.genes.index(gene)
        r = genes_df.set_index("gene").loc[gene, "pcc"]
        fig = go.Figure(go.Scatter(x=vp.y_true[:, gi], y=vp.y_pred[:, gi], mode="markers", text=vp.ids,
                                   marker=dict(size=6, opacity=0.7)))
        lo = float(np.nanmin([vp.y_true[:, gi].min(), vp.y_pred[:, gi].min()]))
        hi = float(np.nanmax([vp.y_true[:, gi].max(), vp.y_pred[:, gi].max()]))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="gray"),
                                 showlegend=False))
        fig.update_layout(height=380, title=f"{gene}: r = {r:.3f}", xaxis_title="true", yaxis_title="predicted",
                          showlegend=False, margin=dict(t=40, b=10))
        st.plotly_chart(fig, width="stretch", key="results_scatter")

# ---------------------------------------------------------------------------------------------- structure
with tab_corr:
    if not ready:
        st.info("Select finished runs in the table above.")
    else:
        top_n = st.slider("genes shown (most variable)", 10, 200, 50, 10, key="results_corr_topn")
        fid_rows = []
        for n in ready:
            run_n = RunDir(paths[n])
            genes, ct, cp, fid = corr_view(str(run_n.path), val_stamp(run_n), top_n)
            fid_rows.append({"run": n, "correlation fidelity": fid})
        st.dataframe(pd.DataFrame(fid_rows), hide_index=True,
                     column_config={"correlation fidelity": st.column_config.NumberColumn(format="%.4f")})
        st.caption("Correlation fidelity: Pearson r between the upper triangles of the gene–gene correlation "
                   "matrices of prediction and truth (all varying genes). 1 = same structure.")
        show = st.selectbox("Run", ready, key="results_corr_run")
        run_s = RunDir(paths[show])
        genes, ct, cp, fid = corr_view(str(run_s.path), val_stamp(run_s), top_n)
        fig = make_subplots(rows=1, cols=2, subplot_titles=("truth", "prediction"), horizontal_spacing=0.08)
        for col, mat in ((1, ct), (2, cp)):
            fig.add_trace(go.Heatmap(z=mat, x=genes, y=genes, zmin=-1, zmax=1, colorscale="RdBu_r",
                                     showscale=col == 2), 1, col)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(height=560, margin=dict(t=40, b=10))
        st.plotly_chart(fig, width="stretch", key="results_corr_heatmaps")

# ---------------------------------------------------------------------------------------------- compare
with tab_cmp:
    if not ready:
        st.info("Select finished runs in the table above.")
    else:
        try:
            cmp = comparison(tuple(paths[n] for n in ready), tuple(val_stamp(RunDir(paths[n])) for n in ready))
            st.dataframe(cmp, hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.4f")
                                        for c in ("val_gene_pcc", f"top{results.TOP_K}_pcc", "sample_pcc",
                                                  "corr_fidelity")})
            st.caption(f"Computed on the validation samples and genes all selected runs share; "
                       f"top{results.TOP_K} = mean PCC over the {results.TOP_K} most variable genes.")
        except MaiError as exc:
            ui.show_error(exc)
        singles = [n for n in ready if RunDir(paths[n]).kind != "ensemble"]
        st.markdown("#### Build an ensemble")
        with st.form("results_ensemble_form", border=False):
            members = st.multiselect("Member runs", singles, default=singles, key="results_members")
            ens_name = st.text_input("Ensemble name", value="ensemble-" + "-".join(m[:8] for m in members[:3]),
                                     key="results_ens_name")
            weighting = st.radio("Member weights", ["mean", "val"], horizontal=True, key="results_ens_weights",
                                 help="mean: equal weights; val: weighted by each run's validation gene PCC")
            build = st.form_submit_button("Build ensemble", type="primary")
        if build:
            try:
                with st.spinner("Building the ensemble…"):
                    ens = build_ensemble([paths[m] for m in members], runs_dir() / ens_name.strip(),
                                         weights=weighting, overwrite=False)
                st.success(f"Ensemble **{ens.name}** written to `{ens.path}`.")
                cmp = results.compare_runs([paths[m] for m in members] + [str(ens.path)])
                st.dataframe(cmp, hide_index=True, width="stretch")
            except MaiError as exc:
                ui.show_error(exc)

# ---------------------------------------------------------------------------------------------- submission
with tab_sub:
    usable = [n for n in table["name"] if table.set_index("name").loc[n, "state"] == "finished"]
    if not usable:
        st.info("No finished run or ensemble yet.")
    else:
        sub_run = st.selectbox("Model (run or ensemble)", usable, key="results_sub_run")
        default_csv = str(Path(ds.root) / "test.csv")
        csv_path = st.text_input("CSV with ID, path columns", value=default_csv, key="results_sub_csv")
        if st.button("Predict", key="results_sub_go"):
            run_p = RunDir(paths[sub_run])
            ck = run_p.model_checkpoint()
            try:
                data = submission_bytes(str(run_p.path), _stamp(ck) if ck else _stamp(run_p.config_path),
                                        csv_path, _stamp(Path(csv_path)))
                st.session_state["results_submission"] = (f"submission-{sub_run}.csv", data)
            except MaiError as exc:
                ui.show_error(exc)
        if "results_submission" in st.session_state:
            fname, data = st.session_state["results_submission"]
            st.download_button(f"Download {fname}", data, file_name=fname, mime="text/csv", key="results_sub_dl")
            n_rows = data.count(b"\n") - 1
            st.caption(f"{n_rows} rows")
