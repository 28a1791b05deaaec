"""Default augmentation thresholds select what a contest entry selected on HER2ST tissue.

The entry kept HorizontalFlip, VerticalFlip, ShiftScaleRotate and RandomBrightnessContrast and dropped
ColorJitter, Equalize, HueSaturationValue and Mixup. Here the augmentations are scored afresh (geometry-aligned
appearance distances and hue rotation) and the default thresholds applied; nothing in the code names the
outcome, so these tests fail as soon as the scores stop separating the two groups.
"""

from __future__ import annotations

import pandas as pd
import pytest

import mai_core.augment as A
from mai_core.cli import main as cli_main

KEPT = ["HorizontalFlip", "VerticalFlip", "ShiftScaleRotate", "RandomBrightnessContrast"]
DROPPED = ["ColorJitter", "Equalize", "HueSaturationValue", "Mixup"]


@pytest.fixture()
def no_pretrained_metrics(monkeypatch, tmp_path):
    """Score with the calibrated EfficientNet-Lite0 substitutes whatever weights this machine has cached."""
    from mai_core.augment import scoring

    monkeypatch.setattr(scoring, "alexnet_weights_path", lambda: None)
    monkeypatch.setattr(scoring, "dino_weights_path", lambda: None)


def _check_separation(summary: pd.DataFrame) -> None:
    kept = set(summary.loc[summary["kept"], "aug"])
    assert set(KEPT) <= kept, summary
    assert not (set(DROPPED) & kept), summary
    by = summary.set_index("aug")
    # the distances are geometry-aligned: a flip changes nothing about the stain, but moves every pixel
    assert by.loc["HorizontalFlip", "lpips_mean"] == 0.0 and by.loc["HorizontalFlip", "geometry_mean"] > 0.1
    assert by.loc["RandomBrightnessContrast", "geometry_mean"] == 0.0
    # the hue rotation is what separates brightness/contrast from the colour-wheel augmentations
    assert by.loc[["ColorJitter", "HueSaturationValue"], "hue_mean"].min() > 3 * by.loc["RandomBrightnessContrast",
                                                                                        "hue_mean"]


def test_default_thresholds_on_demo_patches_via_cli(demo_dir, workspace, tmp_path, no_pretrained_metrics, capsys):
    out = tmp_path / "scores.csv"
    rc = cli_main(["augment-score", "--data", str(demo_dir), "--n", "16", "--k", "2", "--device", "cpu",
                   "--augs", ",".join(KEPT + DROPPED), "--out", str(out), "--save-policy", "entry_like"])
    assert rc == 0, capsys.readouterr().err
    summary = pd.read_csv(out)
    _check_separation(summary)
    assert "default threshold --max-hue 3" in capsys.readouterr().err
    pol = A.load_policy("entry_like")
    assert [it.aug for it in pol.items] == list(summary.loc[summary["kept"], "aug"])


@pytest.mark.slow
def test_default_thresholds_on_real_her2st_patches(her2st_dir, tmp_path, no_pretrained_metrics):
    from mai_core.data.dataset import load_dataset
    from mai_core.data.importer import import_her2st

    import_her2st(her2st_dir, tmp_path / "c5", sections=("C5",), top_genes=20)
    ds = load_dataset(tmp_path / "c5")
    scorer = A.PerceptualScorer(device="cpu")
    report = A.score_dataset(ds, n=16, k=2, augs=KEPT + DROPPED, seed=0, scorer=scorer)
    limits = A.default_thresholds(report.lpips_model, report.dino_model)
    assert limits["max_lpips"] is not None and limits["max_dino"] is not None
    summary = report.summary.assign(kept=A.kept_mask(report.summary, **limits).to_numpy())
    _check_separation(summary)


def test_hue_rotation_measures_turns_not_scaling():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 0.5 + 0.25
    assert torch.allclose(A.hue_rotation(x, x), torch.zeros(2))
    assert A.hue_rotation(x * 0.8 + 0.1, x).max() < 1e-3  # brightness and blending with grey keep the hue
    turned = torch.stack([x[:, 1], x[:, 2], x[:, 0]], 1)  # RGB -> GBR: every hue turns by 120 degrees
    assert torch.allclose(A.hue_rotation(turned, x), torch.full((2,), 120.0), atol=1e-2)
