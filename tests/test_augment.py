"""Augmentation registry, policies, training interface, perceptual scoring and the augment-score CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mai_core import augment as A
from mai_core.augment import scoring
from mai_core.cli import main as cli_main
from mai_core.errors import MaiError


def _batch(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _tissue_like(n=4, size=96, seed=0) -> np.ndarray:
    """Smooth pink/purple blobs on a light background: uint8 N x H x W x 3."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        field = np.zeros((size, size))
        for _ in range(6):
            cy, cx, r = rng.random(), rng.random(), 0.05 + 0.15 * rng.random()
            field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        field = np.clip(field, 0, 1)[..., None]
        bg, stain = np.array([235, 220, 230]), np.array([120, 60, 150])
        out[i] = np.clip(bg * (1 - field) + stain * field + rng.normal(0, 6, (size, size, 3)), 0, 255)
    return out


@pytest.fixture(scope="module")
def no_weight_caches(tmp_path_factory):
    """Point the weight lookups at empty caches so the substitutes are used."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    mp.setattr(scoring, "dino_weights_path", lambda: None)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def scorer(no_weight_caches):
    return A.PerceptualScorer(device="cpu", batch_size=8)


# ----------------------------------------------------------------------------------------- registry

def test_registry_has_the_documented_augmentations_with_parameter_specs():
    expected = {"HorizontalFlip", "VerticalFlip", "RandomRotate90", "ShiftScaleRotate", "RandomBrightnessContrast",
                "ColorJitter", "Equalize", "HueSaturationValue", "Mixup", "HEDJitter", "GaussianBlur", "Identity"}
    assert expected <= set(A.AUGMENTATIONS)
    for spec in A.AUGMENTATIONS.values():
        assert spec.description
        for p in spec.params:
            assert p.low <= p.default <= p.high, (spec.name, p)


@pytest.mark.parametrize("name", list(A.AUGMENTATIONS))
def test_each_augmentation_runs_on_a_batch_and_keeps_shape_and_range(name):
    x = _batch()
    y = torch.arange(8, dtype=torch.float32).view(4, 2)
    x_before, y_before = x.clone(), y.clone()
    xa, ya = A.apply_aug(name, x, y, g=torch.Generator().manual_seed(1), p=1.0)
    assert xa.shape == x.shape and xa.dtype == torch.float32
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    assert torch.isfinite(xa).all()
    assert torch.equal(x, x_before) and torch.equal(y, y_before), "inputs must not be modified in place"
    assert ya.shape == y.shape
    if not A.AUGMENTATIONS[name].mixes_targets:
        assert torch.equal(ya, y)
    if name != "Identity":
        assert not torch.equal(xa, x), f"{name} with p=1 left the batch unchanged"
    else:
        assert torch.equal(xa, x)


@pytest.mark.parametrize("name", ["ShiftScaleRotate", "ColorJitter", "HEDJitter", "Mixup", "RandomRotate90"])
def test_same_seed_same_output_different_seed_differs(name):
    x = _batch(6)
    a, _ = A.apply_aug(name, x, g=torch.Generator().manual_seed(3))
    b, _ = A.apply_aug(name, x, g=torch.Generator().manual_seed(3))
    c, _ = A.apply_aug(name, x, g=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_parameters_are_drawn_per_sample():
    x = _batch(1).expand(6, -1, -1, -1).contiguous()  # six copies of one image
    xa, _ = A.apply_aug("RandomBrightnessContrast", x, g=torch.Generator().manual_seed(0))
    assert len({round(float(v), 5) for v in xa.mean(dim=(1, 2, 3))}) == 6


def test_mixup_mixes_targets_like_the_images():
    values = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.2])
    x = values.view(-1, 1, 1, 1).expand(6, 3, 8, 8).contiguous()  # each image is a constant = its target
    y = values.view(-1, 1).clone()
    xa, ya = A.apply_aug("Mixup", x, y, g=torch.Generator().manual_seed(0), p=1.0, params={"alpha": 1.0})
    assert not torch.equal(ya, y)
    torch.testing.assert_close(xa.mean(dim=(1, 2, 3)), ya[:, 0])


def test_per_sample_hue_shift_matches_torchvision_adjust_hue():
    import torchvision.transforms.v2.functional as F

    from mai_core.augment import ops

    x = _batch(4, size=16)
    shifts = torch.tensor([0.1, -0.3, 0.0, 0.5])
    expected = torch.stack([F.adjust_hue(x[i], float(shifts[i])) for i in range(4)])
    torch.testing.assert_close(ops._hue(x, shifts), expected, atol=1e-6, rtol=0)


def test_hed_deconvolution_round_trips_and_zero_jitter_is_identity():
    x = _batch().clamp(0.02, 1.0)
    torch.testing.assert_close(A.hed_to_rgb(A.rgb_to_hed(x)), x, atol=1e-4, rtol=0)
    xa, _ = A.apply_aug("HEDJitter", x, params={"sigma": 0.0, "bias": 0.0})
    torch.testing.assert_close(xa, x, atol=1e-4, rtol=0)


def test_bad_augmentation_names_and_parameters_raise_mai_error():
    with pytest.raises(MaiError, match="unknown augmentation"):
        A.parse_aug_names("HorizontalFlip,Sharpen")
    with pytest.raises(MaiError) as exc:
        A.apply_aug("HEDJitter", _batch(), params={"sigma": 3.0, "gamma": 1})
    text = exc.value.render()
    assert "outside" in text and "unknown parameter 'gamma'" in text


# ----------------------------------------------------------------------------------------- policies

def test_builtin_policies_and_training_interface():
    x = _batch(8)
    y = torch.rand(8, 5)
    none = A.build_batch_augment("none", seed=0)
    xa, ya = none(x, y)
    assert torch.equal(xa, x) and torch.equal(ya, y)
    assert torch.equal(A.build_batch_augment(None)(x)[0], x)

    flips = A.build_batch_augment("flips_rot90", seed=0)
    xf, yf = flips(x, y)
    assert not torch.equal(xf, x) and torch.equal(yf, y)
    # geometric only: each output is a rotated/flipped copy of its input, same pixel multiset
    torch.testing.assert_close(xf.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert torch.equal(A.build_batch_augment("flips_rot90", seed=0)(x)[0], xf)
    assert not torch.equal(A.build_batch_augment("flips_rot90", seed=1)(x)[0], xf)
    assert "HorizontalFlip" in flips.describe()

    he = A.build_batch_augment("he_safe", seed=0)
    assert not torch.equal(he(x)[0], x)


def test_batch_augment_accepts_uint8_and_resumes_from_state():
    xu8 = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    aug = A.build_batch_augment("he_safe", seed=5)
    out, _ = aug(xu8)
    assert out.dtype == torch.float32 and float(out.max()) <= 1.0
    state = aug.state_dict()
    nxt, _ = aug(xu8)
    aug2 = A.build_batch_augment("he_safe", seed=0)
    aug2.load_state_dict(state)
    assert torch.equal(aug2(xu8)[0], nxt)


def test_saved_policy_round_trips_and_drives_training_augmentation(workspace):
    pol = A.Policy("stain_only", [("HEDJitter", {"sigma": 0.2, "bias": 0.1}, 1.0), ("VerticalFlip", {}, 0.5)],
                   "strong stain jitter")
    path = A.save_policy(pol)
    assert path == workspace / "policies" / "stain_only.yaml"
    assert yaml.safe_load(path.read_text())["items"][0]["aug"] == "HEDJitter"
    loaded = A.load_policy("stain_only")
    assert loaded.items == pol.items and loaded.name == "stain_only"
    assert A.load_policy(str(path)).items == pol.items
    assert "stain_only" in A.list_policies() and "flips_rot90" in A.list_policies()

    x = _batch(4)
    out1, _ = A.build_batch_augment("stain_only", seed=2)(x)
    out2, _ = A.build_batch_augment(loaded, seed=2)(x)
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, x)


def test_policy_search_order_prefers_given_folders(workspace, tmp_path):
    A.save_policy(A.Policy("mine", [("HorizontalFlip", {}, 1.0)]))
    other = tmp_path / "elsewhere"
    A.save_policy(A.Policy("mine", [("VerticalFlip", {}, 1.0)]), other)
    assert A.load_policy("mine").items[0].aug == "HorizontalFlip"
    assert A.load_policy("mine", search_dirs=[other]).items[0].aug == "VerticalFlip"
    data = tmp_path / "dataset"
    A.save_policy(A.Policy("mine", [("Equalize", {}, 1.0)]), data / "policies")
    assert A.load_policy("mine", data_dir=data).items[0].aug == "Equalize"


def test_unknown_or_invalid_policies_raise_mai_error(workspace):
    with pytest.raises(MaiError) as exc:
        A.load_policy("does_not_exist")
    assert "flips_rot90" in exc.value.render() and "he_safe" in exc.value.render()
    bad = workspace / "policies" / "broken.yaml"
    bad.write_text("name: broken\nitems:\n  - aug: Sharpen\n    p: 2\n")
    with pytest.raises(MaiError) as exc:
        A.load_policy("broken")
    assert "Sharpen" in exc.value.render()
    with pytest.raises(MaiError, match="built-in"):
        A.save_policy(A.Policy("none", []))
    with pytest.raises(MaiError):
        A.save_policy(A.Policy("../escape", []))
    with pytest.raises(MaiError):
        A.build_batch_augment("nope")


# ----------------------------------------------------------------------------------------- scoring

def test_fallback_is_used_and_labelled_when_weights_are_absent(scorer):
    assert scorer.lpips_fallback and scorer.dino_fallback
    assert scorer.lpips_model.startswith(A.LPIPS_FALLBACK)
    assert scorer.dino_model.startswith(A.DINO_FALLBACK)
    assert any("AlexNet" in n for n in scorer.notes) and any("DINO" in n for n in scorer.notes)
    rep = A.score_augmentations(_tissue_like(2), ["HorizontalFlip"], k=1, scorer=scorer)
    assert rep.uses_fallback
    assert set(rep.summary["lpips_model"]) == {scorer.lpips_model}
    assert set(rep.summary["dino_model"]) == {scorer.dino_model}


def test_identity_scores_exactly_zero_on_both_metrics(scorer):
    imgs = _tissue_like(3, size=64)
    d = scorer.distances(imgs, imgs.copy())
    assert np.all(d["lpips"] == 0.0) and np.all(d["dino"] == 0.0)
    rep = A.score_augmentations(imgs, ["Identity", "GaussianBlur"], k=2, scorer=scorer, batch_size=2)
    row = rep.summary.set_index("aug")
    assert row.loc["Identity", "lpips_mean"] == 0.0 and row.loc["Identity", "dino_mean"] == 0.0
    assert row.loc["GaussianBlur", "lpips_mean"] > 0.0 and row.loc["GaussianBlur", "dino_mean"] > 0.0
    assert len(rep.pairs) == 2 * 3 * 2


def test_strong_hue_shift_is_farther_than_a_flip_on_the_dino_metric(scorer):
    imgs = _tissue_like(4)
    rep = A.score_augmentations(imgs, ["HorizontalFlip", "HueSaturationValue"], k=2, scorer=scorer, seed=0,
                                params={"HueSaturationValue": {"hue_shift": 0.5, "sat_shift": 0.0, "val_shift": 0.0}})
    dino = rep.summary.set_index("aug")["dino_mean"]
    assert dino["HueSaturationValue"] > dino["HorizontalFlip"]
    assert json.loads(rep.summary.set_index("aug").loc["HueSaturationValue", "params"])["hue_shift"] == 0.5


def test_scores_are_reproducible_for_a_seed(scorer):
    imgs = _tissue_like(2, size=64)
    a = A.score_augmentations(imgs, ["ShiftScaleRotate"], k=2, seed=7, scorer=scorer).pairs
    b = A.score_augmentations(imgs, ["ShiftScaleRotate"], k=2, seed=7, scorer=scorer).pairs
    pd.testing.assert_frame_equal(a, b)


def test_lpips_uses_cached_alexnet_weights_and_matches_the_lpips_package(tmp_path, monkeypatch):
    import lpips
    import torchvision

    torch.manual_seed(0)
    alex = torchvision.models.alexnet(weights=None)
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    feats = {k: v for k, v in alex.state_dict().items() if k.startswith("features.")}
    torch.save(feats, ckpt / scoring.ALEXNET_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(scoring, "dino_weights_path", lambda: None)
    sc = A.PerceptualScorer(device="cpu")
    assert sc.lpips_model == A.LPIPS_REAL and not sc.lpips_fallback
    assert sc.dino_fallback and sc.dino_model.startswith(A.DINO_FALLBACK)

    ref = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    for slice_ in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5):
        for name, module in slice_.named_children():
            for pname, param in module.named_parameters(recurse=False):
                param.data.copy_(feats[f"features.{name}.{pname}"])
    imgs = _tissue_like(2, size=64)
    flipped = imgs[:, :, ::-1].copy()
    ours = sc.distances(imgs, flipped)["lpips"]
    a = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    b = torch.from_numpy(flipped).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        theirs = ref(a, b, normalize=True).flatten().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_dino_metric_uses_an_explicit_weights_file(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vit = timm.create_model(scoring.DINO_ARCH, pretrained=False, num_classes=0)
    weights = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    sc = A.PerceptualScorer(device="cpu", dino_weights=weights)
    assert sc.dino_model == A.DINO_REAL and not sc.dino_fallback
    assert sc.lpips_fallback  # the two metrics fall back independently
    imgs = _tissue_like(2, size=64)
    d = sc.distances(imgs, imgs[:, ::-1].copy())
    assert np.all(d["dino"] > 0) and np.all(sc.distances(imgs, imgs)["dino"] == 0)
    with pytest.raises(MaiError, match="not found"):
        A.PerceptualScorer(device="cpu", dino_weights=tmp_path / "missing.safetensors")


def test_batchnorm_folding_keeps_the_features():
    import copy

    import timm

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval()
    for m in model.modules():  # non-trivial statistics so that folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    folded = scoring.fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = _batch(2, size=64)
    with torch.no_grad():
        ref_final, ref_inter = model.forward_intermediates(x)
        new_final, new_inter = folded.forward_intermediates(x)
    torch.testing.assert_close(new_final, ref_final, atol=1e-4, rtol=1e-4)
    for a, b in zip(new_inter, ref_inter):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------- selection

def test_select_policy_keeps_augmentations_under_thresholds():
    scores = pd.DataFrame({
        "aug": ["Identity", "HorizontalFlip", "HEDJitter", "GaussianBlur"],
        "lpips_mean": [0.0, 0.9, 0.05, 0.4], "dino_mean": [0.0, 0.02, 0.01, 0.2],
        "params": ["{}", "{}", json.dumps({"bias": 0.02, "sigma": 0.1}), json.dumps({"sigma_max": 2.0, "sigma_min": 0.5})],
    })
    pol = A.select_policy(scores, max_lpips=None, max_dino=0.05, name="dino_ok")
    assert [it.aug for it in pol.items] == ["HorizontalFlip", "HEDJitter"]  # Identity is never kept
    assert pol.items[1].params == {"bias": 0.02, "sigma": 0.1}
    assert [it.aug for it in A.select_policy(scores, 0.5, 0.5, "both").items] == ["HEDJitter", "GaussianBlur"]
    assert A.select_policy(scores, 0.01, None, "strict").items == []


# ----------------------------------------------------------------------------------------- CLI

def test_cli_writes_scores_csv_and_saves_policy(demo_dir, workspace, tmp_path, no_weight_caches, capsys):
    out = tmp_path / "scores.csv"
    rc = cli_main(["augment-score", "--data", str(demo_dir), "--n", "3", "--k", "1", "--device", "cpu",
                   "--augs", "Identity,HorizontalFlip,HEDJitter", "--out", str(out),
                   "--save-policy", "lab_pick", "--max-lpips", "0.5", "--max-dino", "0.5"])
    assert rc == 0
    df = pd.read_csv(out)
    assert list(df["aug"]) == ["Identity", "HorizontalFlip", "HEDJitter"]
    for col in ("lpips_mean", "lpips_std", "dino_mean", "dino_std", "lpips_model", "dino_model", "n", "k", "kept"):
        assert col in df.columns
    assert (df["n"] == 3).all() and (df["k"] == 1).all()
    assert df["lpips_model"].str.startswith(A.LPIPS_FALLBACK).all()
    pol = A.load_policy("lab_pick")
    assert not df.set_index("aug").loc["Identity", "kept"]  # never part of a policy
    kept = df[df["kept"]]["aug"].tolist()
    assert [it.aug for it in pol.items] == kept
    assert "saved policy lab_pick" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--augs", "Sharpen"], "unknown augmentation"),
    (["--save-policy", "bad name!"], "invalid policy name"),
    (["--save-policy", "none", "--max-dino", "0.1"], "built-in"),
])
def test_cli_bad_arguments_exit_2_with_a_message(demo_dir, workspace, tmp_path, capsys, args, message):
    rc = cli_main(["augment-score", "--data", str(demo_dir), "--out", str(tmp_path / "s.csv"), *args])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("args", [["--n", "0"], ["--k", "x"], ["--max-lpips", "-1"]])
def test_cli_invalid_numbers_are_usage_errors(tmp_path, args):
    with pytest.raises(SystemExit) as exc:
        cli_main(["augment-score", "--data", str(tmp_path), "--out", str(tmp_path / "s.csv"), *args])
    assert exc.value.code == 2


def test_cli_missing_dataset_exits_2(tmp_path, workspace, capsys):
    rc = cli_main(["augment-score", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "s.csv")])
    assert rc == 2
    assert "not found" in capsys.readouterr().err
