"""Spatial context chosen at the end of training, on the validation spots (see ``spatial`` in the config):

* the context head (:mod:`mai_core.runs.contexthead`): the fine-tuned backbone embeds every spot of the
  training table, a ridge map from own ⊕ neighbour-mean embedding is fitted on the training spots and kept
  only when it beats the fine-tuned head on the validation spots;
* otherwise neighbour smoothing of predictions (:mod:`mai_core.runs.neighbours`), its weight chosen on
  the validation spots.

Both need spot coordinates (``px, py`` or ``array_x, array_y``, and ``section``); without them the run
records why they are off.
"""

from __future__ import annotations

import numpy as np

from mai_core.runs.contexthead import fit_context_head
from mai_core.runs.neighbours import neighbour_matrix, smoothing_facts, spot_coordinates


def context_head_facts(cfg: dict, session, model, head_val_pcc: float, views: int, on_batch=None) -> dict:
    """Fit the context head of a fine-tuned run. Returns the facts to record under ``spatial``
    (``context_head``: used or not, both validation PCCs, ``note``) and, when it wins on validation,
    ``head``: (weight, bias) to save."""
    from mai_core.metrics import gene_pearson
    from mai_core.models.model import ModelFeatures

    request = (cfg.get("spatial") or {}).get("context", "auto")
    request = ("on" if request else "off") if isinstance(request, bool) else str(request).lower()
    if request in ("off", "false"):
        return {"context_head": False, "note": "context head: off (turned off for this run)"}
    if cfg["model"]["kind"] != "finetune":
        return {"context_head": False, "note": f"context head: off (a {cfg['model']['kind']} run)"}
    coords = spot_coordinates(session.ds.train)
    if coords is None or not len(session.val_idx):
        why = "the dataset has no spot coordinates" if coords is None else "no validation spots"
        return {"context_head": False, "note": f"context head: off ({why})"}
    rows = np.arange(session.ds.n_train)
    emb = session.predict_z(ModelFeatures(model), rows, views, on_batch=on_batch)
    nb = neighbour_matrix(*coords)
    head = fit_context_head(emb, nb, session.Z, session.train_idx, session.val_idx, session.y_mean, session.y_std)
    ctx_pcc = float(gene_pearson(session.ds.X[session.val_idx], head["val_pred"])[0])
    use = ctx_pcc > head_val_pcc or request == "on"
    verdict = ("used where inputs have coordinates" if ctx_pcc > head_val_pcc else
               "used as asked (context: on)" if use else "not used (the fine-tuned head is better)")
    return {"context_head": bool(use), "context_alpha": float(head["alpha"]),
            "context_val_gene_pcc": round(ctx_pcc, 5), "head_val_gene_pcc": round(float(head_val_pcc), 5),
            "note": f"context head (own + neighbour-mean embedding): validation gene PCC {ctx_pcc:.4f} vs the "
                    f"fine-tuned head's {head_val_pcc:.4f}: {verdict}",
            "head": (head["weight"], head["bias"]) if use else None}


def spatial_facts(cfg: dict, session, model, val_pred: np.ndarray, head_val_pcc: float, views: int,
                  on_batch=None) -> tuple[dict, list[str], tuple | None]:
    """Everything recorded under ``spatial`` at the end of training, the log lines, and the context head's
    (weight, bias) when it is used."""
    ctx = context_head_facts(cfg, session, model, head_val_pcc, views, on_batch)
    notes, head = [ctx.pop("note")], ctx.pop("head", None)
    if ctx["context_head"]:
        sm = {"weight": 0.0, "note": "neighbour smoothing: off (the context head uses the neighbours)"}
    else:
        sm = smoothing_facts(cfg.get("spatial"), session.ds.train, session.val_idx, val_pred,
                             session.ds.X[session.val_idx])
    notes.append(sm.pop("note"))
    return {**sm, **ctx}, notes, head
