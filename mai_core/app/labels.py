"""Words for numbers: metric names, tooltips and one-line glosses the pages show next to values.

``METRICS`` maps a column name of :mod:`mai_core.runs.compare` tables to (words, tooltip); ``GLOSS`` holds
plain-language explanations of network-analysis terms; :func:`dataset_unit` says what expression values are.
"""

from __future__ import annotations

import streamlit as st

METRICS: dict[str, tuple[str, str]] = {
    "best_val_gene_pcc": (
        "best val gene-PCC (1 view, during training)",
        "Mean over genes of the Pearson r between predicted and true expression on the validation patches, "
        "measured after each epoch on the plain patch (one view), best epoch shown. The run's final score "
        "(Run details) uses the final predictor with its test-time augmentation, so it usually differs."),
    "val_gene_pcc": (
        "mean gene PCC",
        "Mean over genes of the Pearson r between predicted and true expression across validation patches "
        "(final predictor, with the run's test-time augmentation). 1 = every gene's pattern is reproduced."),
    "top_pcc": (
        "mean PCC of the {k} most variable genes",
        "The same Pearson r, averaged over the {k} genes that vary most in the validation truth: the genes "
        "that carry most of the biology."),
    "sample_pcc": (
        "per-patch PCC",
        "Pearson r across genes within each patch, averaged over patches: does the model get each patch's "
        "expression profile right (dominated by the highly expressed genes)?"),
    "mse": ("mean squared error", "Mean squared difference between prediction and truth, in the dataset's "
                                  "expression unit squared; lower is better."),
    "corr_fidelity": (
        "correlation-structure fidelity",
        "Pearson r between the gene–gene correlation matrices of prediction and truth (upper triangles). "
        "1 = the predictions keep which genes rise and fall together."),
    "n_val": ("validation patches", "Patches the scores are computed on (shared by all compared runs)."),
    "n_genes": ("genes", "Genes the scores are computed on (shared by all compared runs)."),
    "test_gene_pcc": (
        "test gene-PCC",
        "Mean gene Pearson r on the dataset's test split, against its known truth (test.csv gene columns or "
        "test_truth.csv): patches the run never saw during training or model selection."),
    "time_s": ("training time", "Wall-clock time from start to the last status update."),
}

GLOSS: dict[str, str] = {
    "soft_threshold": "Soft threshold β: correlations are raised to the power β, so weak correlations fade "
                      "towards 0 while strong ones stay; a larger β keeps only the strongest links.",
    "signed_r2": "Scale-free fit (signed R²): how well the network's connectivity follows the few-hubs, "
                 "many-loners pattern of biological networks; 1 = perfectly, negative = the opposite slope.",
    "mean_k": "Mean connectivity k: the average sum of a gene's links; it drops as β grows.",
    "scale_free": "WGCNA picks the smallest β whose scale-free fit reaches R² ≥ 0.8: enough to suppress noise, "
                  "small enough to keep the network connected.",
}


@st.cache_data(show_spinner=False, max_entries=16)
def _unit(root: str, stamp: tuple):
    from mai_core.data.units import expression_unit

    return expression_unit(root)


def dataset_unit(ds):
    """The dataset's expression unit (:func:`mai_core.data.expression_unit`), read once per file version."""
    from pathlib import Path

    root = Path(ds.root)
    stamp = tuple((p.stat().st_mtime_ns if p.exists() else 0)
                  for p in (root / "units.json", root / "slides" / "manifest.json", root / "truth.json"))
    return _unit(str(root), stamp)


def metric_label(column: str, k: int | None = None) -> str:
    words = METRICS.get(column, (column, ""))[0]
    return words.format(k=k) if k is not None else words


def metric_help(column: str, k: int | None = None) -> str:
    text = METRICS.get(column, ("", ""))[1]
    return text.format(k=k) if k is not None else text


def metric_columns(columns, formats: dict[str, str] | None = None, top_k: int | None = None) -> dict:
    """``st.dataframe`` column configuration: words and tooltips for every known metric column."""
    formats = formats or {}
    out = {}
    for col in columns:
        key = "top_pcc" if top_k is not None and col == f"top{top_k}_pcc" else col
        if key in METRICS:
            out[col] = st.column_config.NumberColumn(metric_label(key, top_k), help=metric_help(key, top_k),
                                                     format=formats.get(col, "%.4f"))
    return out


def fmt_seconds(s) -> str:
    """``1h 02m``, ``3m 05s``, ``42s``; ``—`` when unknown."""
    try:
        s = int(round(float(s)))
    except (TypeError, ValueError):
        return "—"
    if s < 0:
        return "—"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _num(value, fmt: str = "{:.4f}") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return fmt.format(v) if v == v else "—"


def runs_view(table, test_scores: dict | None = None):
    """The runs table as people read it: ``(frame, column_config)`` for ``st.dataframe``.

    Scores are text ("—" when not measured yet) so a running run shows no placeholder; the state says
    which epoch a running run is in; the final validation score names its number of test-time views.
    ``test_scores``: run name → test gene-PCC, for runs scored on the dataset's test split.
    """
    import pandas as pd

    from mai_core.models.tta import tta_views
    from mai_core.runs import RunDir, jobs

    # a run started as a job: the job's view of it (process identity, queue) is the more exact one
    job_state = {str(j.run_dir): j.state for j in jobs.list_jobs()}
    rows = []
    for _, r in table.iterrows():
        run = RunDir(r["path"])
        status = run.read_status()
        state = job_state.get(str(run.path), str(r["state"]))
        if state == "running":
            if status.get("phase"):
                state = f"running · {status['phase']}"
            else:
                state = f"running · epoch {max(1, int(status.get('epoch') or 0))}/{status.get('epochs') or '?'}"
        try:
            views = tta_views(run.read_config())
        except Exception:
            views = None
        final = status.get("final_val_gene_pcc")
        if final is None and r["kind"] == "ensemble":
            final = r["best_val_gene_pcc"]
        a, b = r["alpha"], r["beta"]
        rows.append({
            "name": r["name"], "state": state, "backbone": r["backbone"],
            "loss α / β": "—" if a is None or b is None or a != a or b != b else f"{float(a):.2f} / {float(b):.2f}",
            "grouping": r["grouping"] or "—",
            "epochs": "—" if r["epochs"] is None or r["epochs"] != r["epochs"] else str(int(r["epochs"])),
            "best val PCC": _num(r["best_val_gene_pcc"]) if r["kind"] != "ensemble" else "—",
            "final val PCC": _num(final) + (f" ({views} views)" if views and views > 1 and _num(final) != "—" else ""),
            "test PCC": _num((test_scores or {}).get(r["name"])),
            "time": fmt_seconds(r["time_s"]),
        })
    frame = pd.DataFrame(rows, columns=RUNS_VIEW_COLUMNS)
    text = st.column_config.TextColumn
    config = {
        "name": text("name", help="run or ensemble folder under the workspace's runs/"),
        "state": text("state", help="queued, running (with the epoch or final step in progress), finished, "
                                    "failed or stopped"),
        "backbone": text("backbone", help="image network the run fine-tunes or reads features from"),
        "loss α / β": text("loss α / β", help="weights of the MSE and Pearson terms of the loss; the covariance "
                                              "term gets 1 − α − β"),
        "grouping": text("grouping", help="gene grouping of the cluster-wise heads (none = one head)"),
        "epochs": text("epochs", help="planned training epochs"),
        "best val PCC": text("best val PCC", help=metric_help("best_val_gene_pcc")),
        "final val PCC": text(
            "final val PCC",
            help="Mean gene Pearson r of the final predictor on the validation patches: best epoch's weights, "
                 "averaged over its test-time-augmentation views (flips and rotations). This is the score the "
                 "Run details tab shows; it differs from the best val PCC, which is measured on one view "
                 "during training."),
        "test PCC": text("test PCC", help=metric_help("test_gene_pcc") + " Score a run in Run details."),
        "time": text("time", help=metric_help("time_s")),
    }
    return frame, config


RUNS_VIEW_COLUMNS = ["name", "state", "backbone", "loss α / β", "grouping", "epochs", "best val PCC",
                     "final val PCC", "test PCC", "time"]
