"""Correlation-aware losses for expression regression (tensors are batch × genes).

    Total = α·MSE + β·(1 − Pearson) + (1 − α − β)·Covariance

- Pearson is computed per sample across genes ("sample"), per gene across the batch ("gene"), or the
  average of both ("both").
- Covariance is the normalised Frobenius distance between the gene × gene batch covariance matrices
  of predictions and targets, ||C_p − C_t||_F / (||C_t||_F + eps). For many genes it is computed through
  B × B Gram matrices (||AᵀA − BᵀB||²_F = ||AAᵀ||² − 2||ABᵀ||² + ||BBᵀ||²), which costs O(B²G)
  instead of O(BG²).
- With gene groups, each group's loss is computed on its own columns and the groups are averaged, so
  a large group does not drown the small ones.
- Pathway weighting (optional): per-gene weights (e.g. genes of chosen gene sets weighted up) enter the
  MSE and the per-gene Pearson as weighted means, and the covariance through columns scaled by √w.
- Within-set correlation co-loss (optional): for each gene set (≥ 3 genes), the mean squared difference
  between the batch gene–gene correlation matrices of predictions and targets restricted to the set,
  averaged over sets and added with weight ``coexp_weight``: genes that work together should co-vary
  in the predictions as they do in the tissue.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mai_core.errors import MaiError, Problem

PEARSON_MODES = ("sample", "gene", "both")
_EPS = 1e-8


def validate_weights(alpha, beta) -> tuple[float, float]:
    """Check α, β ∈ [0, 1] and α + β ≤ 1; returns them as floats or raises MaiError."""
    problems = []
    vals = {}
    for name, v in (("alpha", alpha), ("beta", beta)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            problems.append(Problem(f"loss.{name}", f"{v!r} is not a number", "use a number between 0 and 1"))
            continue
        if not math.isfinite(f) or f < 0 or f > 1:
            problems.append(Problem(f"loss.{name}", f"{v!r} is outside [0, 1]", "use a number between 0 and 1"))
        vals[name] = f
    if not problems and vals["alpha"] + vals["beta"] > 1 + 1e-9:
        problems.append(Problem("loss", f"alpha + beta = {vals['alpha'] + vals['beta']:.3g} exceeds 1",
                                "the covariance weight is 1 - alpha - beta and cannot be negative; "
                                "lower alpha or beta"))
    if problems:
        raise MaiError("invalid loss weights", problems,
                       hint="Total = alpha*MSE + beta*(1-Pearson) + (1-alpha-beta)*Covariance")
    return vals["alpha"], vals["beta"]


def pearson_along(pred: torch.Tensor, target: torch.Tensor, dim: int, eps: float = _EPS) -> torch.Tensor:
    """Pearson correlation along ``dim`` (a vector over the other dimension)."""
    pc = pred - pred.mean(dim=dim, keepdim=True)
    tc = target - target.mean(dim=dim, keepdim=True)
    num = (pc * tc).sum(dim=dim)
    den = torch.sqrt((pc * pc).sum(dim=dim) * (tc * tc).sum(dim=dim) + eps)
    return num / den


def pearson_loss(pred: torch.Tensor, target: torch.Tensor, mode: str = "both") -> torch.Tensor:
    """1 − mean Pearson correlation (0 for a perfect prediction, up to 2)."""
    return weighted_pearson_loss(pred, target, mode)


def covariance_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6,
                    gram: bool | None = None) -> torch.Tensor:
    """||C_p − C_t||_F / (||C_t||_F + eps) with C the gene × gene covariance over the batch.

    ``gram=None`` picks the cheaper route: the G × G matrices when G ≤ B, else B × B Gram matrices.
    """
    b = pred.shape[0]
    if b < 2:
        return pred.sum() * 0.0
    a = (pred - pred.mean(0, keepdim=True)) / math.sqrt(b - 1)
    t = (target - target.mean(0, keepdim=True)) / math.sqrt(b - 1)
    use_gram = (pred.shape[1] > b) if gram is None else gram
    if use_gram:
        aa = a @ a.T
        tt = t @ t.T
        at = a @ t.T
        diff_sq = (aa * aa).sum() - 2 * (at * at).sum() + (tt * tt).sum()
        ct_sq = (tt * tt).sum()
    else:
        cp = a.T @ a
        ct = t.T @ t
        diff_sq = ((cp - ct) ** 2).sum()
        ct_sq = (ct * ct).sum()
    diff = torch.sqrt(diff_sq.clamp_min(0) + 1e-12)
    return diff / (torch.sqrt(ct_sq) + eps)


def weighted_pearson_loss(pred: torch.Tensor, target: torch.Tensor, mode: str = "both",
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`pearson_loss` with the per-gene correlations averaged with ``weights`` (G,; None = equal); the
    per-sample correlation (across genes) stays unweighted."""
    if mode not in PEARSON_MODES:
        raise MaiError(f"unknown Pearson mode {mode!r}", hint=f"use one of {', '.join(PEARSON_MODES)}")
    parts = []
    if mode in ("sample", "both") and pred.shape[1] >= 2:
        parts.append(1 - pearson_along(pred, target, dim=1).mean())
    if mode in ("gene", "both") and pred.shape[0] >= 2:
        r = pearson_along(pred, target, dim=0)
        parts.append(1 - (r.mean() if weights is None else (r * weights).sum() / weights.sum().clamp_min(_EPS)))
    if not parts:
        return pred.sum() * 0.0
    return sum(parts) / len(parts)


def batch_correlation(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Gene × gene Pearson correlation over the batch (rows) of a B × g tensor."""
    xc = x - x.mean(0, keepdim=True)
    xc = xc / torch.sqrt((xc * xc).sum(0, keepdim=True) + eps)
    return xc.T @ xc


def set_correlation_loss(pred: torch.Tensor, target: torch.Tensor, sets: list[torch.Tensor]) -> torch.Tensor:
    """Mean over gene sets of the mean squared off-diagonal difference between the batch correlation
    matrices of predictions and targets on the set's genes (0 when the predictions co-vary like the truth)."""
    if pred.shape[0] < 3 or not sets:
        return pred.sum() * 0.0
    out = []
    for idx in sets:
        idx = idx.to(pred.device)
        cp = batch_correlation(pred.index_select(1, idx))
        ct = batch_correlation(target.index_select(1, idx))
        n = idx.numel()
        out.append(((cp - ct) ** 2).sum() / (n * (n - 1)))  # the diagonal difference is 0
    return torch.stack(out).mean()


class ExpressionLoss(nn.Module):
    """α·MSE + β·(1 − Pearson) + (1 − α − β)·Covariance, averaged over gene groups
    [+ coexp_weight · within-set correlation co-loss].

    ``groups``: list of column-index lists (covering the genes); None means one group of all genes.
    ``gene_weights``: optional per-gene weights (length G, non-negative, not all 0; rescaled to mean 1).
    ``coexp_sets``: optional list of column-index lists (gene sets; sets of fewer than 3 genes are
    ignored) for the co-loss, weighted by ``coexp_weight``.
    After each call ``last_parts`` holds the (group-averaged) components as detached tensors for
    logging (convert with float() when needed; kept as tensors so a GPU step does not synchronise).
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, pearson: str = "both",
                 groups: list[list[int]] | None = None, gene_weights=None,
                 coexp_sets: list[list[int]] | None = None, coexp_weight: float = 0.0):
        super().__init__()
        self.alpha, self.beta = validate_weights(alpha, beta)
        self.gamma = max(0.0, 1.0 - self.alpha - self.beta)
        if pearson not in PEARSON_MODES:
            raise MaiError(f"unknown Pearson mode {pearson!r}", hint=f"use one of {', '.join(PEARSON_MODES)}")
        self.pearson = pearson
        self.groups = None
        if groups is not None and len(groups) > 1:
            self.groups = [torch.as_tensor(list(g), dtype=torch.long) for g in groups if len(g)]
        self.weights = None
        if gene_weights is not None:
            w = torch.as_tensor(gene_weights, dtype=torch.float32).flatten()
            if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
                raise MaiError("invalid gene weights", [Problem("loss", "weights must be finite, >= 0, not all 0",
                                                                "check the pathway weight settings")])
            self.weights = w / w.mean()
        self.coexp_weight = float(coexp_weight or 0.0)
        if not math.isfinite(self.coexp_weight) or self.coexp_weight < 0:
            raise MaiError("invalid co-loss weight", [Problem("loss.coexp_weight", f"{coexp_weight!r}",
                                                              "use a number >= 0")])
        self.coexp_sets = [torch.as_tensor(list(s), dtype=torch.long) for s in (coexp_sets or []) if len(s) >= 3]
        self.last_parts: dict[str, torch.Tensor] = {}

    def _one(self, p: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None):
        total = p.new_zeros(())
        parts = {}
        if self.alpha > 0:
            sq = (p - t) ** 2
            m = torch.mean(sq) if w is None else (sq.mean(0) * w).sum() / w.sum().clamp_min(_EPS)
            total = total + self.alpha * m
            parts["mse"] = m
        if self.beta > 0:
            r = weighted_pearson_loss(p, t, self.pearson, w)
            total = total + self.beta * r
            parts["pearson"] = r
        if self.gamma > 0:
            if w is not None:
                s = torch.sqrt(w)
                p, t = p * s, t * s
            c = covariance_loss(p, t)
            total = total + self.gamma * c
            parts["cov"] = c
        return total, parts

    def _coexp(self, pred, target, total, parts):
        if self.coexp_weight > 0 and self.coexp_sets:
            c = set_correlation_loss(pred, target, self.coexp_sets)
            parts["coexp"] = c.detach()
            total = total + self.coexp_weight * c
        return total

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.float()
        target = target.float()
        w = None if self.weights is None else self.weights.to(pred.device)
        if self.groups is None:
            total, parts = self._one(pred, target, w)
            parts = {k: v.detach() for k, v in parts.items()}
            total = self._coexp(pred, target, total, parts)
            self.last_parts = parts
            return total
        totals = []
        acc: dict[str, torch.Tensor] = {}
        for idx in self.groups:
            idx = idx.to(pred.device)
            tot, parts = self._one(pred.index_select(1, idx), target.index_select(1, idx),
                                   None if w is None else w.index_select(0, idx))
            totals.append(tot)
            for k, v in parts.items():
                acc[k] = acc.get(k, 0.0) + v.detach() / len(self.groups)
        total = self._coexp(pred, target, torch.stack(totals).mean(), acc)
        self.last_parts = acc
        return total
