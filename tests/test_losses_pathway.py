"""Pathway-weighted expression loss, within-set correlation co-loss, and how a run builds its loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mai_core.errors import MaiError
from mai_core.models.losses import ExpressionLoss, batch_correlation, set_correlation_loss, weighted_pearson_loss
from mai_core.training import resolve_config
from mai_core.training.objective import build_loss, pathway_sets, pathway_weights


def _data(b=16, g=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, g, generator=gen), torch.randn(b, g, generator=gen)


def test_unit_weights_give_the_unweighted_loss():
    p, t = _data()
    for a, b in ((1.0, 0.0), (0.5, 0.5), (0.4, 0.4)):
        plain = ExpressionLoss(a, b, "both")(p, t)
        ones = ExpressionLoss(a, b, "both", gene_weights=np.full(10, 3.0))(p, t)  # rescaled to mean 1
        assert float(ones) == pytest.approx(float(plain), rel=1e-5)


def test_weighted_mse_and_pearson_match_hand_computation():
    p, t = _data()
    w = torch.tensor([3.0] * 3 + [1.0] * 7)
    mse = ExpressionLoss(1.0, 0.0, gene_weights=w)(p, t)
    per_gene = ((p - t) ** 2).mean(0)
    assert float(mse) == pytest.approx(float((per_gene * w).sum() / w.sum()), rel=1e-5)
    pc, tc = p - p.mean(0), t - t.mean(0)
    r = (pc * tc).sum(0) / torch.sqrt((pc * pc).sum(0) * (tc * tc).sum(0))
    got = weighted_pearson_loss(p, t, "gene", w / w.mean())
    assert float(got) == pytest.approx(float(1 - (r * w).sum() / w.sum()), rel=1e-5)
    # weighting a gene up makes its error count more
    err = t.clone()
    err[:, 0] += 1.0
    light = ExpressionLoss(1.0, 0.0, gene_weights=torch.ones(10))(err, t)
    heavy = ExpressionLoss(1.0, 0.0, gene_weights=w)(err, t)
    assert float(heavy) > float(light)


def test_set_correlation_coloss_is_zero_for_matching_structure_and_has_gradients():
    _, t = _data(b=32, g=8)
    sets = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6])]
    assert float(set_correlation_loss(2 * t + 1, t, sets)) == pytest.approx(0.0, abs=1e-6)
    p = torch.randn(32, 8, requires_grad=True)
    c = set_correlation_loss(p, t, sets)
    assert c.item() > 0
    c.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad[:, 7].abs().sum() == 0
    C = batch_correlation(t)
    assert torch.allclose(C, torch.from_numpy(np.corrcoef(t.numpy().T)).float(), atol=1e-4)
    loss = ExpressionLoss(1.0, 0.0, coexp_sets=[[0, 1, 2, 3], [4, 5, 6], [7]], coexp_weight=0.5)
    total = loss(p.detach(), t)
    assert "coexp" in loss.last_parts and len(loss.coexp_sets) == 2  # sets of < 3 genes are ignored
    assert float(total) == pytest.approx(float(loss.last_parts["mse"] + 0.5 * loss.last_parts["coexp"]), rel=1e-5)


def test_coloss_and_weights_work_with_gene_groups():
    p, t = _data(b=16, g=12)
    loss = ExpressionLoss(0.4, 0.4, groups=[list(range(6)), list(range(6, 12))], gene_weights=np.arange(1, 13),
                          coexp_sets=[[0, 1, 7, 8]], coexp_weight=1.0)
    v = loss(p, t)
    assert torch.isfinite(v) and set(loss.last_parts) == {"mse", "pearson", "cov", "coexp"}


@pytest.mark.parametrize("kw", [{"gene_weights": [-1.0, 1.0]}, {"gene_weights": [0.0, 0.0]},
                                {"coexp_weight": -0.1}, {"coexp_weight": float("nan")}])
def test_bad_weights_raise_mai_error(kw):
    with pytest.raises(MaiError):
        ExpressionLoss(0.5, 0.5, **kw)


def test_run_loss_from_config_weights_the_genes_of_chosen_sets(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("SET_A\tx\tG0\tG1\tG2\tNOT_MEASURED\nSET_B\tx\tG3\tG4\n")
    genes = [f"G{i}" for i in range(8)]
    cfg = resolve_config({"loss": {"pathway_gmt": str(gmt), "pathway_weight": 3.0, "coexp_weight": 0.2}},
                         device_type="cpu")
    loss, facts = build_loss(cfg, genes, [list(range(8))])
    assert facts == {"pathway_sets": 2, "weighted_genes": 5, "coexp_sets": 1}
    w = loss.weights.numpy()
    assert w[0] == pytest.approx(3 * w[7]) and w[5] == w[7]
    only_b = resolve_config({"loss": {"pathway_gmt": str(gmt), "pathway_sets": "SET_B"}}, device_type="cpu")
    assert pathway_sets(only_b["loss"], genes) == {"SET_B": [3, 4]}
    assert pathway_weights(8, {"SET_B": [3, 4]}, 1.0) is None  # weight 1: nothing weighted
    default_loss, facts = build_loss(resolve_config({}, device_type="cpu"), genes, [list(range(8))])
    assert default_loss.weights is None and facts["weighted_genes"] == 0
    with pytest.raises(MaiError, match="not in"):
        build_loss(resolve_config({"loss": {"pathway_gmt": str(gmt), "pathway_sets": ["NOPE"]}},
                                  device_type="cpu"), genes, None)
    with pytest.raises(MaiError) as exc:
        resolve_config({"loss": {"pathway_gmt": str(tmp_path / "missing.gmt")}}, device_type="cpu")
    assert any("not found" in pr.what for pr in exc.value.problems)
    with pytest.raises(MaiError):
        build_loss(cfg, ["OTHER1", "OTHER2"], None)
