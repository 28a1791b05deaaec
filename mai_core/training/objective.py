"""The training objective of a run: the expression loss with its optional pathway weighting and
within-set correlation co-loss, built from the ``loss`` section of a resolved config.

``loss.pathway_gmt`` names a GMT file (e.g. MSigDB Hallmark); the genes of its sets (all of them, or the
sets listed in ``loss.pathway_sets``) get weight ``loss.pathway_weight`` in the MSE / Pearson / covariance
terms, every other gene weight 1. ``loss.coexp_weight`` > 0 adds the co-loss on the gene–gene correlation
within each of those sets (see :mod:`mai_core.models.losses`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mai_core.errors import MaiError, Problem
from mai_core.models.losses import ExpressionLoss


def _set_names(value) -> list[str] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def pathway_sets(loss_cfg: dict, genes: list[str]) -> dict[str, list[int]]:
    """Column indices (into ``genes``) of every chosen gene set present in the data (empty: no GMT)."""
    from mai_core.genes import parse_gmt

    gmt = loss_cfg.get("pathway_gmt")
    if not gmt:
        return {}
    sets = parse_gmt(Path(str(gmt)).expanduser())
    wanted = _set_names(loss_cfg.get("pathway_sets"))
    if wanted:
        unknown = [w for w in wanted if w not in sets]
        if unknown:
            raise MaiError(f"gene set(s) {unknown[:5]} not in {gmt}",
                           [Problem("loss.pathway_sets", f"{len(unknown)} unknown set name(s)",
                                    f"use names from the GMT file, e.g. {', '.join(list(sets)[:3])}")])
        sets = {k: sets[k] for k in wanted}
    pos = {g: i for i, g in enumerate(genes)}
    out = {k: [pos[g] for g in members if g in pos] for k, members in sets.items()}
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise MaiError(f"no gene of the chosen sets in {gmt} is among the {len(genes)} trained genes",
                       [Problem("loss.pathway_gmt", "no overlap", "check species and gene identifiers, or the sets")])
    return out


def pathway_weights(n_genes: int, sets: dict[str, list[int]], weight: float) -> np.ndarray | None:
    """Per-gene weights: ``weight`` for genes in any set, 1 elsewhere; None when nothing is weighted."""
    if not sets or float(weight) == 1.0:
        return None
    w = np.ones(n_genes, dtype=np.float32)
    for cols in sets.values():
        w[cols] = float(weight)
    return w


def build_loss(cfg: dict, genes: list[str], groups) -> tuple[ExpressionLoss, dict]:
    """(the run's loss, facts for the log: weighted genes, sets used by the co-loss)."""
    lc = cfg["loss"]
    sets = pathway_sets(lc, list(genes))
    w = pathway_weights(len(genes), sets, float(lc.get("pathway_weight", 1.0) or 1.0))
    coexp = float(lc.get("coexp_weight", 0.0) or 0.0)
    co_sets = [v for v in sets.values() if len(v) >= 3] if coexp > 0 else []
    loss = ExpressionLoss(lc["alpha"], lc["beta"], lc["pearson"], groups, gene_weights=w,
                          coexp_sets=co_sets, coexp_weight=coexp)
    facts = {"pathway_sets": len(sets), "weighted_genes": int((w != 1).sum()) if w is not None else 0,
             "coexp_sets": len(co_sets)}
    return loss, facts
