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
from mai_core.runs import (  # noqa: E402
    RunDir,
    build_ensemble,
    cached_test_score,
    ensemble_context_note,
    ensemble_path,
    read_metrics,
)
from mai_core.workspace import runs_dir  # noqa: E402


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


def val_stamp(run: RunDir) -> int:
    return _stamp(run.val_predictions_path)


# ---------------------------------------------------------------------------------------------- runs table
table = results.runs_table()
if table.empty:
    st.info("No runs yet. Start one from **Training → New training run** in the sidebar (or `python -m mai_core train`).")
    st.stop()

shown, shown_config = ui.runs_view(table, {n: (cached_test_score(p, ds.fingerprint) or {}).get("gene_pcc_mean")
                                          for n, p in zip(table["name"], table["path"])})
event = st.dataframe(shown, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row",
                     key="results_runs_table", column_config=shown_config)
ui.watch_runs(table)  # while a run trains: redraw the page when it finishes an epoch or ends
rows = [r for r in (event.selection.rows if event is not None else []) if r < len(table)]
selected = table.iloc[rows] if rows else table.iloc[:1]
st.caption("Select rows to compare runs or build an ensemble; details show the first selected run.")
paths = {r["name"]: r["path"] for _, r in table.iterrows()}
ready = [n for n in selected["name"] if RunDir(paths[n]).val_predictions_path.is_file()]

# only the selected tab is computed and drawn: the others cost nothing until opened
notice = st.container()
tab_run, tab_corr, tab_cmp, tab_sub = st.tabs(["Run details", "Correlation structure", "Compare & ensemble",
                                               "Submission"], key="results_tab", on_change="rerun")
with notice:  # above the tabs: a submission predicting in the background while its tab is closed
    ui.submission_notice(tab_sub.open)

# ---------------------------------------------------------------------------------------------- one run
if tab_run.open:  # drawn only while its tab is selected
    with tab_run:
        name = st.selectbox("Run", list(selected["name"]) + [n for n in table["name"] if n not in set(selected["name"])],
                            key="results_run")
        run = RunDir(paths[name])
        st.caption(ui.weights_caption(run.path))
        metrics = read_metrics(run.path)
        if metrics.empty:
            st.info("No finished epoch yet.")
        else:
            fig = make_subplots(rows=1, cols=2, subplot_titles=("loss (standardised units)",
                                                                "validation gene PCC (1 view, each epoch)"))
            fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["train_loss"], name="train loss"), 1, 1)
            fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["val_loss"], name="val loss"), 1, 1)
            fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["val_gene_pcc"], name="val gene PCC"), 1, 2)
            fig.update_layout(height=340)
            fig.update_xaxes(title_text="epoch", dtick=1, tickformat="d")
            ui.tidy(fig)
            st.plotly_chart(fig, width="stretch", key="results_curves", config=ui.PLOT_CONFIG)
        if not run.val_predictions_path.is_file():
            st.info("Validation predictions appear when the run finishes.")
        else:
            try:
                vp = val_predictions(str(run.path), val_stamp(run))
                genes_df = gene_table(str(run.path), val_stamp(run))
            except MaiError as exc:
                ui.show_error(exc)
                st.stop()
            unit = ui.dataset_unit(ds)
            views = ui.run_tta_views(run)
            c1, c2 = st.columns([3, 2])
            with c1:
                fig = go.Figure(go.Histogram(x=genes_df["pcc"].dropna(), nbinsx=40))
                fig.update_layout(height=320, title="Per-gene PCC on validation (final predictor)",
                                  xaxis_title="Pearson r between predicted and true expression of a gene",
                                  yaxis_title="genes")
                ui.tidy(fig)
                st.plotly_chart(fig, width="stretch", key="results_pcc_hist", config=ui.PLOT_CONFIG)
                m1, m2 = st.columns(2)
                m1.metric(f"final val gene-PCC ({views} view{'s' if views > 1 else ''})", f"{genes_df['pcc'].mean():.4f}",
                          help=ui.metric_help("val_gene_pcc") + f" {int(genes_df['pcc'].isna().sum())} constant genes "
                               "excluded. The runs table's best val gene-PCC is measured on one view during training, "
                               "so the two differ.")
                best = run.read_status().get("best_val_gene_pcc")
                if best is not None and run.kind != "ensemble":
                    m2.metric("best val gene-PCC (1 view, during training)", f"{float(best):.4f}",
                              help=ui.metric_help("best_val_gene_pcc"))
                ui.test_score_panel(run, ds)
            with c2:
                k = st.slider("genes listed", 5, 50, 10, key="results_topk")
                gene_cols = {"gene": st.column_config.TextColumn("gene"),
                             "pcc": st.column_config.NumberColumn("Pearson r", format="%.4f",
                                                                  help="predicted vs true across validation patches"),
                             "mean_true": st.column_config.NumberColumn(
                                 "mean expression", format="%.3f", help=f"mean true expression, {unit.label}")}
                st.markdown("**Best predicted**")
                st.dataframe(genes_df.head(k)[["gene", "pcc", "mean_true"]], hide_index=True, width="stretch",
                             column_config=gene_cols)
                st.markdown("**Worst predicted**")
                st.dataframe(genes_df.dropna(subset=["pcc"]).tail(k)[::-1][["gene", "pcc", "mean_true"]],
                             hide_index=True, width="stretch", column_config=gene_cols)
            if run.grouping_path.is_file():
                try:
                    clusters = results.cluster_pcc(genes_df, run.grouping_path)
                    st.markdown("**Mean PCC per gene cluster** (the run's grouping)")
                    st.dataframe(clusters, hide_index=True, width="stretch",
                                 column_config={"n_genes": st.column_config.NumberColumn("genes"),
                                                "mean_pcc": st.column_config.NumberColumn("mean Pearson r", format="%.4f"),
                                                "median_pcc": st.column_config.NumberColumn("median Pearson r",
                                                                                            format="%.4f")})
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
            fig.update_traces(selector=dict(mode="markers"),
                              hovertemplate="%{text}<br>true %{x:.3f}<br>predicted %{y:.3f}<extra></extra>")
            fig.update_layout(height=400, title=f"{gene}: r = {r:.3f} over {len(vp.ids)} validation patches",
                              xaxis_title=f"true expression, {unit.label}",
                              yaxis_title=f"predicted expression, {unit.label}", showlegend=False)
            ui.tidy(fig)
            st.plotly_chart(fig, width="stretch", key="results_scatter", config=ui.PLOT_CONFIG)

# ---------------------------------------------------------------------------------------------- structure
if tab_corr.open:  # drawn only while its tab is selected
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
                         column_config={"correlation fidelity": st.column_config.NumberColumn(
                             ui.metric_label("corr_fidelity"), format="%.4f", help=ui.metric_help("corr_fidelity"))})
            st.caption("Correlation-structure fidelity: Pearson r between the upper triangles of the gene–gene "
                       "correlation matrices of prediction and truth (all varying genes, validation patches). "
                       "1 = the predictions keep which genes rise and fall together.")
            show = st.selectbox("Run", ready, key="results_corr_run")
            run_s = RunDir(paths[show])
            genes, ct, cp, fid = corr_view(str(run_s.path), val_stamp(run_s), top_n)
            fig = make_subplots(rows=1, cols=2, subplot_titles=("truth", "prediction"), horizontal_spacing=0.08)
            for col, mat in ((1, ct), (2, cp)):
                fig.add_trace(go.Heatmap(z=mat, x=genes, y=genes, zmin=-1, zmax=1, colorscale="RdBu_r",
                                         showscale=col == 2, colorbar=dict(title="Pearson r"),
                                         hovertemplate="%{y} × %{x}<br>r = %{z:.3f}<extra></extra>"), 1, col)
            fig.update_yaxes(autorange="reversed")
            fig.update_layout(height=580)
            ui.tidy(fig)
            st.plotly_chart(fig, width="stretch", key="results_corr_heatmaps", config=ui.PLOT_CONFIG)

# ---------------------------------------------------------------------------------------------- compare
if tab_cmp.open:  # drawn only while its tab is selected
    with tab_cmp:
        from mai_core.runs import strategies_table

        st.markdown("#### Strategies of the selected runs")
        strat = strategies_table([paths[n] for n in selected["name"]],
                                 {n: (cached_test_score(paths[n], ds.fingerprint) or {}).get("gene_pcc_mean")
                                  for n in selected["name"]})
        st.dataframe(strat, hide_index=True, width="stretch", key="results_strategies",
                     column_config={"best_val_gene_pcc": st.column_config.NumberColumn("best val gene PCC", format="%.4f"),
                                    "test_gene_pcc": st.column_config.NumberColumn("test gene PCC", format="%.4f")})
        st.caption("What each run did, read from its config.yaml: loss (MSE / Pearson / covariance weights), pathway "
                   "weighting, gene grouping of the heads, augmentation, test-time augmentation. Differences under "
                   "about 0.01–0.03 gene PCC are within run-to-run noise.")
        if not ready:
            st.info("Select finished runs in the table above.")
        else:
            try:
                cmp = comparison(tuple(paths[n] for n in ready), tuple(val_stamp(RunDir(paths[n])) for n in ready))
                st.dataframe(cmp, hide_index=True, width="stretch",
                             column_config=ui.metric_columns(cmp.columns, {"n_val": "%d", "n_genes": "%d"},
                                                             top_k=results.TOP_K))
                st.caption("Computed on the validation patches and genes all selected runs share, with each run's "
                           "final predictor. Hover a column name for what it measures.")
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
            ens_target = runs_dir() / ens_name.strip() if ens_name.strip() else None
            if ens_target is not None and ens_target.exists() and RunDir(ens_target).kind != "ensemble":
                ens_target = None  # a training run has this name: no replacing, the build below says why
            ens = ui.save_with_confirmation(
                "results_ensemble", "ensemble", ens_name.strip(), ens_target, build,
                lambda overwrite: build_ensemble([paths[m] for m in members], ensemble_path(ens_name),
                                                 weights=weighting, overwrite=overwrite),
                lambda e: f"Ensemble **{e.name}** written to `{e.path}`. " + ensemble_context_note(e.path))
            if ens is not None:
                cmp = results.compare_runs([paths[m] for m in members] + [str(ens.path)])
                st.dataframe(cmp, hide_index=True, width="stretch",
                             column_config=ui.metric_columns(cmp.columns, {"n_val": "%d", "n_genes": "%d"},
                                                             top_k=results.TOP_K))

# ---------------------------------------------------------------------------------------------- submission
if tab_sub.open:  # drawn only while its tab is selected
    with tab_sub:
        usable = [n for n in table["name"] if table.set_index("name").loc[n, "state"] == "finished"]
        if not usable:
            st.info("No finished run or ensemble yet.")
        else:
            sub_run = st.selectbox("Model (run or ensemble)", usable, key="results_sub_run")
            default_csv = str(Path(ds.root) / "test.csv")
            csv_path = st.text_input("CSV with ID, path columns", value=default_csv, key="results_sub_csv")
            if st.button("Predict", key="results_sub_go"):
                try:  # a typed path must lie in the workspace, this dataset or a listed data folder
                    ui.start_submission(RunDir(paths[sub_run]), str(ui.resolve_typed_path(csv_path, "CSV", ds=ds)))
                except MaiError as exc:
                    ui.show_error(exc)
            ui.submission_progress()
            if "results_submission" in st.session_state:
                fname, data = st.session_state["results_submission"]
                st.download_button(f"Download {fname}", data, file_name=fname, mime="text/csv", key="results_sub_dl")
                n_rows = data.count(b"\n") - 1
                st.caption(f"{n_rows} rows")
