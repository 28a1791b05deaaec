"""Loss functions, loss-weight validation, and the grouped-head model structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mai_core.errors import MaiError
from mai_core.models.losses import ExpressionLoss, covariance_loss, pearson_loss, validate_weights
from mai_core.models.model import GeneModel, set_trainable_blocks


def _data(b=8, g=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, g, generator=gen), torch.randn(b, g, generator=gen)


@pytest.mark.parametrize("mode", ["sample", "gene", "both"])
def test_perfect_prediction_has_zero_pearson_loss(mode):
    _, t = _data()
    assert pearson_loss(t.clone(), t, mode).item() == pytest.approx(0.0, abs=1e-5)
    # an affine map of the truth (positive slope) is a perfect correlation too
    assert pearson_loss(3 * t + 1, t, "gene").item() == pytest.approx(0.0, abs=1e-5)


def test_anticorrelated_prediction_has_pearson_loss_two():
    _, t = _data()
    assert pearson_loss(-t, t, "gene").item() == pytest.approx(2.0, abs=1e-5)
    assert pearson_loss(-t, t, "sample").item() == pytest.approx(2.0, abs=1e-5)


def test_pearson_loss_matches_hand_computation():
    p = torch.tensor([[1.0, 2.0, 3.0], [2.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 3.0, 2.0], [0.0, 1.0, 2.0]])
    # per sample: r(1,2,3 ; 1,3,2) = 0.5, r(2,1,0 ; 0,1,2) = -1 -> mean -0.25
    assert pearson_loss(p, t, "sample").item() == pytest.approx(1.25, abs=1e-5)


def test_covariance_loss_zero_for_perfect_and_known_for_scaled():
    p, t = _data(b=6, g=20)
    for gram in (True, False):
        assert covariance_loss(t.clone(), t, gram=gram).item() == pytest.approx(0.0, abs=1e-4)
        # C(2t) = 4 C(t): ||4C - C|| / ||C|| = 3
        assert covariance_loss(2 * t, t, gram=gram).item() == pytest.approx(3.0, rel=1e-4)


def test_covariance_gram_trick_equals_direct_matrices():
    p, t = _data(b=5, g=40, seed=3)
    direct = covariance_loss(p, t, gram=False).item()
    gram = covariance_loss(p, t, gram=True).item()
    assert gram == pytest.approx(direct, rel=1e-4)


def test_total_loss_is_zero_for_perfect_prediction():
    _, t = _data()
    loss = ExpressionLoss(alpha=0.3, beta=0.3)(t.clone(), t)
    assert loss.item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("alpha,beta", [(1.2, 0.0), (-0.1, 0.5), (0.7, 0.6), ("x", 0.1), (float("nan"), 0.1)])
def test_invalid_loss_weights_raise_clear_error(alpha, beta):
    with pytest.raises(MaiError) as exc:
        validate_weights(alpha, beta)
    text = exc.value.render()
    assert "loss" in text and ("alpha" in text or "beta" in text)


def test_valid_loss_weights_accepted():
    assert validate_weights(0.5, 0.5) == (0.5, 0.5)
    assert validate_weights(0, 0) == (0.0, 0.0)


def test_group_normalisation_keeps_small_groups_visible():
    t = torch.zeros(4, 11)
    p = torch.zeros(4, 11)
    p[:, 10] = 2.0  # all the error sits in a one-gene group
    ungrouped = ExpressionLoss(alpha=1.0, beta=0.0)(p, t).item()
    grouped = ExpressionLoss(alpha=1.0, beta=0.0, groups=[list(range(10)), [10]])(p, t).item()
    assert ungrouped == pytest.approx(4.0 / 11)
    assert grouped == pytest.approx((0.0 + 4.0) / 2)


class _TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.num_features = 4

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_grouped_heads_assemble_outputs_in_gene_order():
    model = GeneModel(_TinyBackbone(), 3, groups=[[0, 2], [1]], image_size=16)
    with torch.no_grad():
        for head, bias in zip(model.heads, ([10.0, 12.0], [11.0])):
            head.net.weight.zero_()
            head.net.bias.copy_(torch.tensor(bias))
    out = model(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.tensor([[10.0, 11.0, 12.0]] * 2))
    assert [h.n_genes for h in model.heads] == [2, 1]


def test_groups_must_cover_every_gene():
    with pytest.raises(ValueError):
        GeneModel(_TinyBackbone(), 3, groups=[[0], [1]], image_size=16)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = GeneModel(_TinyBackbone(), 6, groups=[[0, 1, 2], [3, 4], [5]], head="mlp", hidden=8, image_size=16)
    loss_fn = ExpressionLoss(alpha=0.4, beta=0.3, groups=model.groups)
    x = torch.rand(5, 3, 16, 16)
    y = torch.randn(5, 6)
    loss_fn(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_pca_heads_predict_in_the_span_of_training_targets():
    torch.manual_seed(0)
    model = GeneModel(_TinyBackbone(), 10, pca_k=2, image_size=16)
    z = torch.randn(30, 2) @ torch.randn(2, 10)  # rank-2 targets
    model.fit_pca(z.numpy())
    out = model(torch.rand(4, 3, 16, 16)).detach()
    # output lies in the 2-d principal subspace (+ offset): residual after projection is ~0
    basis = model.heads[0].basis
    centred = out - model.heads[0].offset
    resid = centred - (centred @ basis.T) @ basis
    assert resid.abs().max() < 1e-4


def test_train_blocks_freezes_early_stages():
    import timm

    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    summary = set_trainable_blocks(backbone, 1)
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert not any(p.requires_grad for p in backbone.conv_stem.parameters())
    assert all(p.requires_grad for p in backbone.blocks[-1].parameters())
    everything = set_trainable_blocks(backbone, -1)
    assert everything["trainable_params"] == everything["total_params"]
