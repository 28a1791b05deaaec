"""The strategies table of a set of runs: what each run did (read from its config.yaml) beside its scores.

One row per run: model kind and backbone, the loss (MSE / Pearson / covariance weights, pathway weighting and
the within-set co-loss), the gene grouping of its heads, the augmentation policy, epochs, test-time
augmentation, and the best validation gene PCC (plus a test score where one is given). Ensembles list their
members' backbones.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mai_core.errors import MaiError
from mai_core.runs.rundir import RunDir

COLUMNS = ["name", "model", "backbone", "loss", "pathway", "grouping", "augmentation", "epochs", "tta",
           "best_val_gene_pcc", "test_gene_pcc"]


def _section(cfg: dict, key: str) -> dict:
    v = cfg.get(key)
    return v if isinstance(v, dict) else {}


def loss_label(loss: dict) -> str:
    """``MSE``, ``MSE + Pearson``, ``MSE + Pearson + covariance`` with their weights (α, β, γ = 1 − α − β)."""
    try:
        a, b = float(loss.get("alpha", 0.5)), float(loss.get("beta", 0.5))
    except (TypeError, ValueError):
        return "?"
    g = max(0.0, 1.0 - a - b)
    parts = [(n, w) for n, w in (("MSE", a), ("Pearson", b), ("covariance", g)) if w > 1e-9]
    text = " + ".join(f"{n} {w:.2g}" for n, w in parts) if len(parts) > 1 else (parts[0][0] if parts else "none")
    mode = loss.get("pearson")
    return f"{text} (Pearson over {mode})" if b > 1e-9 and mode else text


def pathway_label(loss: dict) -> str:
    gmt = loss.get("pathway_gmt")
    if not gmt:
        return "—"
    text = f"{Path(str(gmt)).stem} ×{float(loss.get('pathway_weight', 1.0) or 1.0):g}"
    co = float(loss.get("coexp_weight", 0.0) or 0.0)
    return text + (f", co-loss {co:g}" if co > 0 else "")


def _grouping(cfg: dict) -> str:
    g = cfg.get("grouping")
    if isinstance(g, dict):
        g = g.get("name") or g.get("path")
    return "one head" if g in (None, "", "none") else Path(str(g)).stem


def _policy(cfg: dict) -> str:
    p = _section(cfg, "aug").get("policy")
    return "none" if p in (None, "", "none", "off") else Path(str(p)).stem


def strategy_row(run, test_score: float | None = None) -> dict:
    """The strategies of one run (or ensemble) and its scores."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    try:
        cfg = run.read_config()
    except MaiError:
        cfg = {}
    status = run.read_status()
    best = status.get("best_val_gene_pcc")
    row = {"name": run.name, "test_gene_pcc": test_score}
    if str(cfg.get("kind", "run")) == "ensemble":
        members = [RunDir(m) for m in cfg.get("members") or []]
        backs = []
        for m in members:
            try:
                backs.append(str(_section(m.read_config(), "model").get("backbone", "?")))
            except MaiError:
                backs.append("?")
        return {**dict.fromkeys(COLUMNS, ""), **row, "model": f"ensemble of {len(members)}",
                "backbone": " + ".join(backs), "best_val_gene_pcc": cfg.get("val_gene_pcc", best)}
    model, loss, pred = _section(cfg, "model"), _section(cfg, "loss"), _section(cfg, "predict")
    kind = str(model.get("kind", "finetune"))
    epochs = _section(cfg, "frozen").get("epochs") if kind == "frozen" else _section(cfg, "optim").get("epochs")
    tta = pred.get("tta", False)
    return {**row, "model": kind, "backbone": str(model.get("backbone", "")),
            "loss": "closed-form ridge" if kind == "ridge" else loss_label(loss),
            "pathway": "—" if kind == "ridge" else pathway_label(loss),
            "grouping": _grouping(cfg), "augmentation": _policy(cfg),
            "epochs": None if kind == "ridge" else epochs,
            "tta": "8 views" if tta is True else ("off" if not tta else f"{int(tta)} views"),
            "best_val_gene_pcc": None if best is None else float(best)}


def strategies_table(runs, test_scores: dict | None = None) -> pd.DataFrame:
    """One :func:`strategy_row` per run, in the given order; ``test_scores``: optional ``{name: score}``."""
    test_scores = test_scores or {}
    rows = []
    for r in runs:
        run = r if isinstance(r, RunDir) else RunDir(r)
        rows.append(strategy_row(run, test_scores.get(run.name)))
    return pd.DataFrame(rows, columns=COLUMNS)
