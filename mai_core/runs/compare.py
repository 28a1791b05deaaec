"""Comparing training runs: run tables, per-gene and per-cluster accuracy, correlation-structure fidelity,
single-versus-ensemble tables, and submission files. Used by the Results page; no Streamlit here.

All evaluation reads a run's ``val_predictions.parquet`` (columns ``ID``, ``pred:<gene>``,
``true:<gene>``; see :mod:`mai_core.runs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem
from mai_core.runs.rundir import RunDir, list_runs

TOP_K = 50


@dataclass
class ValPredictions:
    """A run's validation predictions as aligned arrays (samples × genes, original units)."""

    ids: list[str]
    genes: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray

    def subset(self, ids: list[str] | None = None, genes: list[str] | None = None) -> "ValPredictions":
        ri = slice(None) if ids is None else [self.ids.index(i) for i in ids]
        ci = slice(None) if genes is None else [self.genes.index(g) for g in genes]
        return ValPredictions(list(ids if ids is not None else self.ids), list(genes if genes is not None else self.genes),
                              self.y_true[ri][:, ci], self.y_pred[ri][:, ci])


def _run(run) -> RunDir:
    return run if isinstance(run, RunDir) else RunDir(run)


def load_val_predictions(run) -> ValPredictions:
    """Validation predictions of a run; MaiError when the run has none (not finished yet)."""
    run = _run(run)
    df = run.read_val_predictions()
    if df is None:
        raise MaiError(f"run {run.name} has no validation predictions",
                       [Problem(str(run.val_predictions_path), "not found",
                                "wait for the run to finish (it is written after training)")])
    pred_cols = [c for c in df.columns if c.startswith("pred:")]
    genes = [c[5:] for c in pred_cols]
    missing = [g for g in genes if f"true:{g}" not in df.columns]
    if not genes or missing:
        raise MaiError(f"{run.val_predictions_path} is malformed",
                       [Problem(str(run.val_predictions_path), "needs matching pred:<gene> and true:<gene> columns"
                                + (f"; no true: column for {missing[:5]}" if missing else ""),
                                "re-run training or evaluation to rewrite it")])
    ids = df["ID"].astype(str).tolist() if "ID" in df.columns else [str(i) for i in range(len(df))]
    y_pred = df[pred_cols].to_numpy(dtype=np.float64)
    y_true = df[[f"true:{g}" for g in genes]].to_numpy(dtype=np.float64)
    return ValPredictions(ids, genes, y_true, y_pred)


# ----------------------------------------------------------------------------------------------
# run table
# ----------------------------------------------------------------------------------------------
def _section(cfg: dict, key: str) -> dict:
    v = cfg.get(key)
    return v if isinstance(v, dict) else {}


def _grouping_label(cfg: dict) -> str:
    g = cfg.get("grouping")
    if isinstance(g, dict):
        g = g.get("name") or g.get("path")
    if g in (None, "", "none"):
        return "none"
    return Path(str(g)).stem


def _loss_weights(cfg: dict) -> tuple[float | None, float | None]:
    loss = _section(cfg, "loss")
    a = loss.get("alpha", cfg.get("alpha"))
    b = loss.get("beta", cfg.get("beta"))
    return (None if a is None else float(a)), (None if b is None else float(b))


def _backbone(cfg: dict) -> str:
    b = _section(cfg, "model").get("backbone", cfg.get("backbone"))
    if isinstance(b, dict):
        b = b.get("name")
    return "" if b is None else str(b)


def _epochs(cfg: dict):
    return _section(cfg, "optim").get("epochs", cfg.get("epochs"))


def run_summary(run) -> dict:
    """One row of the runs table: name, kind, backbone, α/β, grouping, epochs, best PCC, time, state."""
    run = _run(run)
    try:
        cfg = run.read_config()
    except MaiError:
        cfg = {}
    status = run.read_status()
    kind = str(cfg.get("kind", "run"))
    alpha, beta = _loss_weights(cfg)
    state = status.get("state") or "unknown"
    if state == "running" and status.get("stale"):
        state = "failed"
    started, updated = status.get("started"), status.get("updated")
    duration = float(updated) - float(started) if started and updated else None
    best = status.get("best_val_gene_pcc")
    if best is None and kind == "ensemble":
        best = cfg.get("val_gene_pcc")
    members = cfg.get("members") or []
    return {
        "name": run.name,
        "kind": kind,
        "backbone": _backbone(cfg) if kind != "ensemble" else f"ensemble of {len(members)}",
        "alpha": alpha,
        "beta": beta,
        "grouping": _grouping_label(cfg) if kind != "ensemble" else "",
        "epochs": status.get("epochs") if status.get("epochs") is not None else _epochs(cfg),
        "best_val_gene_pcc": None if best is None else float(best),
        "time_s": duration,
        "state": state,
        "path": str(run.path),
    }


def runs_table(runs=None) -> pd.DataFrame:
    """Every run and ensemble of the workspace (or the given ones), newest first by creation.

    The order does not change while a run trains, so a selection of rows keeps pointing at the same runs.
    """
    runs = list_runs() if runs is None else [_run(r) for r in runs]
    runs.sort(key=lambda r: r.config_path.stat().st_mtime if r.config_path.is_file() else 0.0, reverse=True)
    cols = ["name", "kind", "backbone", "alpha", "beta", "grouping", "epochs", "best_val_gene_pcc", "time_s",
            "state", "path"]
    return pd.DataFrame([run_summary(r) for r in runs], columns=cols)


# ----------------------------------------------------------------------------------------------
# per-gene, per-cluster accuracy
# ----------------------------------------------------------------------------------------------
def per_gene_pcc(vp: ValPredictions) -> pd.DataFrame:
    """Pearson r of each gene over validation samples (NaN for genes constant in truth or prediction),
    best first."""
    from mai_core.metrics import gene_pearson

    _, r = gene_pearson(vp.y_true, vp.y_pred)
    df = pd.DataFrame({"gene": vp.genes, "pcc": r, "mean_true": vp.y_true.mean(axis=0),
                       "var_true": vp.y_true.var(axis=0)})
    return df.sort_values("pcc", ascending=False, na_position="last").reset_index(drop=True)


def cluster_pcc(per_gene: pd.DataFrame, grouping) -> pd.DataFrame:
    """Mean / median per-gene PCC of each gene group (``grouping``: a Grouping or a grouping CSV path)."""
    from mai_core.genes.grouping import Grouping, load_grouping

    if not isinstance(grouping, Grouping):
        grouping = load_grouping(grouping)
    lookup = dict(zip(grouping.genes, grouping.groups))
    df = per_gene.assign(group=[lookup.get(g, "ungrouped") for g in per_gene["gene"]])
    out = df.groupby("group", sort=False).agg(n_genes=("gene", "size"), mean_pcc=("pcc", "mean"),
                                              median_pcc=("pcc", "median"))
    return out.reset_index().sort_values("mean_pcc", ascending=False, na_position="last").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# correlation structure
# ----------------------------------------------------------------------------------------------
def _varying(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return (np.nanstd(y_true, axis=0) > 1e-12) & (np.nanstd(y_pred, axis=0) > 1e-12)


def gene_correlation(y: np.ndarray) -> np.ndarray:
    """Gene × gene Pearson correlation over samples (rows); constant genes get NaN rows/columns."""
    y = np.asarray(y, dtype=np.float64)
    z = y - y.mean(axis=0)
    sd = np.sqrt((z ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = z / sd
    c = z.T @ z
    return np.clip(c, -1.0, 1.0)


def correlation_fidelity(y_true, y_pred) -> float:
    """How well predictions keep the gene–gene correlation structure of the truth.

    Pearson correlation between the upper triangles (off-diagonal) of the gene × gene correlation
    matrices of truth and prediction, over genes that vary in both. 1 = same structure; NaN when
    fewer than three such genes or fewer than three samples.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"shapes differ or are not 2-D: {y_true.shape} vs {y_pred.shape}")
    keep = _varying(y_true, y_pred)
    if keep.sum() < 3 or y_true.shape[0] < 3:
        return float("nan")
    ct = gene_correlation(y_true[:, keep])
    cp = gene_correlation(y_pred[:, keep])
    iu = np.triu_indices(ct.shape[0], k=1)
    a, b = ct[iu], cp[iu]
    if a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def correlation_matrices(vp: ValPredictions, top_n: int = 50) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Truth and prediction gene–gene correlation matrices in the same gene order, for display.

    Keeps the ``top_n`` most variable genes (in truth) that vary in both; orders them by
    average-linkage hierarchical clustering of the truth's correlation, so modules show as blocks.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    from mai_core.metrics import top_variable_genes

    keep = np.flatnonzero(_varying(vp.y_true, vp.y_pred))
    if keep.size == 0:
        return [], np.zeros((0, 0)), np.zeros((0, 0))
    order_var = keep[top_variable_genes(vp.y_true[:, keep], min(top_n, keep.size))]
    ct = gene_correlation(vp.y_true[:, order_var])
    cp = gene_correlation(vp.y_pred[:, order_var])
    if len(order_var) > 2:
        dist = np.clip(1.0 - ct, 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        dist = (dist + dist.T) / 2
        leaves = leaves_list(linkage(squareform(dist, checks=False), method="average"))
    else:
        leaves = np.arange(len(order_var))
    genes = [vp.genes[i] for i in order_var[leaves]]
    return genes, ct[np.ix_(leaves, leaves)], cp[np.ix_(leaves, leaves)]


# ----------------------------------------------------------------------------------------------
# comparing runs and ensembles
# ----------------------------------------------------------------------------------------------
def common_val_set(runs) -> tuple[list[str], list[str]]:
    """IDs and genes present in the validation predictions of every run (to compare like with like)."""
    vps = [load_val_predictions(r) for r in runs]
    ids = set(vps[0].ids)
    genes = set(vps[0].genes)
    for vp in vps[1:]:
        ids &= set(vp.ids)
        genes &= set(vp.genes)
    return [i for i in vps[0].ids if i in ids], [g for g in vps[0].genes if g in genes]


def evaluate_val(run, ids: list[str] | None = None, genes: list[str] | None = None, top_k: int = TOP_K,
                 reference_X=None) -> dict:
    """Headline validation metrics of one run (optionally on a given ID/gene subset)."""
    from mai_core.metrics import evaluate_predictions

    vp = load_val_predictions(run)
    if ids is not None or genes is not None:
        vp = vp.subset(ids, genes)
    m = evaluate_predictions(vp.y_true, vp.y_pred, vp.genes, reference_X=reference_X, top_k=(top_k,))
    return {"val_gene_pcc": m["gene_pcc_mean"], f"top{top_k}_pcc": m.get(f"gene_pcc_top{top_k}", m["gene_pcc_mean"]),
            "sample_pcc": m["sample_pcc_raw"], "mse": m["mse"],
            "corr_fidelity": correlation_fidelity(vp.y_true, vp.y_pred), "n_val": len(vp.ids),
            "n_genes": len(vp.genes)}


def compare_runs(runs, top_k: int = TOP_K) -> pd.DataFrame:
    """Single runs and ensembles side by side on their common validation samples and genes.

    ``top{k}_pcc`` is the mean PCC over the k genes most variable in the validation truth.
    """
    runs = [_run(r) for r in runs]
    if not runs:
        return pd.DataFrame(columns=["name", "kind", "val_gene_pcc", f"top{top_k}_pcc", "sample_pcc", "mse",
                                     "corr_fidelity", "n_val", "n_genes"])
    ids, genes = common_val_set(runs)
    if not ids or not genes:
        raise MaiError("the selected runs share no validation samples or genes",
                       [Problem(r.name, "validation set differs", "compare runs trained on the same dataset/split")
                        for r in runs])
    rows = []
    for r in runs:
        rows.append({"name": r.name, "kind": r.kind, **evaluate_val(r, ids, genes, top_k)})
    return pd.DataFrame(rows)


def write_submission(run, csv_path, out, progress: bool = False) -> Path:
    """Predict every patch listed in ``csv_path`` (ID, path) with a run or ensemble; write the submission CSV."""
    from mai_core.runs.predict import predict_csv

    run = _run(run)
    if run.model_checkpoint() is None and run.kind != "ensemble":
        raise MaiError(f"run {run.name} has no checkpoint to predict with", hint="wait for it to finish")
    predict_csv(run.path, csv_path, out, progress=progress)
    return Path(out)
