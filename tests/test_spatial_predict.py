"""predict-slide and export: a tiny real run over real files (a pyramidal TIFF with demo tiles inside, a real
HER2ST section), AnnData that scanpy and squidpy use unchanged, resolution handling, bad input, stopping."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import yaml

from _slide_data import tile_slide, write_pyramid
from mai_core.cli import main as cli_main
from mai_core.spatial import plan_read, predict_slide

TRAIN = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "64", "--batch-size", "16",
         "--workers", "1", "--epochs", "1", "--tta", "off", "--quiet", "--seed", "5"]


@pytest.fixture(scope="module")
def tiny_run(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("spatial_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAI_WORKSPACE", str(out.parent / "ws"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert cli_main(["train", "--data", str(demo_dir), "--out", str(out)] + TRAIN) == 0
    return out


@pytest.fixture(scope="module")
def slide(demo_dir, tmp_path_factory):
    """A pyramidal TIFF at 0.5 µm/px with 24 demo tiles on a pale background, and their centres."""
    from mai_core.data import load_dataset

    ds = load_dataset(demo_dir)
    tiles = ds.images(indices=range(24))
    img, centres = tile_slide(tiles, cols=6)
    d = tmp_path_factory.mktemp("spatial_slide")
    write_pyramid(d / "slide.tif", img, mpp=0.5, levels=3)
    ids = ds.ids[:24]
    pd.DataFrame({"id": ids, "px": centres[:, 0], "py": centres[:, 1]}).to_csv(d / "spots.csv", index=False)
    return {"path": d / "slide.tif", "spots": d / "spots.csv", "tiles": tiles, "centres": centres, "ids": ids,
            "image": img, "dir": d}


@pytest.fixture(scope="module")
def predictor(tiny_run):
    from mai_core.runs import load_predictor

    return load_predictor(tiny_run, device="cpu")


def test_spots_equal_predict_on_the_same_tiles(tiny_run, slide, predictor, tmp_path):
    import anndata

    out = tmp_path / "pred.h5ad"
    info = predict_slide(tiny_run, slide["path"], out, spots=slide["spots"], device="cpu", progress=False,
                         batch_size=7)
    a = anndata.read_h5ad(out)
    assert a.shape == (24, len(predictor.genes)) and list(a.var_names) == predictor.genes
    assert a.obs["spot"].tolist() == slide["ids"]
    assert np.array_equal(a.obsm["spatial"], slide["centres"].astype(float))
    expected = predictor.predict_images(slide["tiles"])
    np.testing.assert_allclose(a.X, expected, rtol=1e-5, atol=1e-6)
    assert info["read_px"] == 224 and not info["resampled"]
    lib = next(iter(a.uns["spatial"]))
    sf = a.uns["spatial"][lib]["scalefactors"]
    thumb = a.uns["spatial"][lib]["images"]["hires"]
    assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) <= 2000
    assert sf["tissue_hires_scalef"] == pytest.approx(thumb.shape[1] / slide["image"].shape[1], rel=1e-3)
    assert np.isfinite(a.var["val_pcc"]).all()
    assert a.uns["mai"]["slide_mpp"] == 0.5 and "native resolution" in a.uns["mai"]["notes"][0]


def test_anndata_works_in_scanpy_and_squidpy(tiny_run, slide, tmp_path):
    import anndata
    import matplotlib
    import scanpy as sc
    import squidpy as sq

    matplotlib.use("Agg")
    out = tmp_path / "pred.h5ad"
    predict_slide(tiny_run, slide["path"], out, spots=slide["spots"], device="cpu", progress=False)
    a = anndata.read_h5ad(out)
    gene = a.var_names[0]
    sc.pl.spatial(a, color=gene, show=False)
    fig = matplotlib.pyplot.gcf()
    fig.savefig(tmp_path / "spatial.png")
    assert (tmp_path / "spatial.png").stat().st_size > 5000
    matplotlib.pyplot.close("all")
    sq.gr.spatial_neighbors(a, coord_type="generic", n_neighs=4)
    g = a.obsp["spatial_connectivities"]
    assert g.shape == (24, 24) and g.nnz >= 24 * 3


def test_grid_over_tissue_without_spots(tiny_run, slide, tmp_path):
    import anndata

    info = predict_slide(tiny_run, slide["path"], tmp_path / "grid.h5ad", grid_um=112, device="cpu", progress=False)
    a = anndata.read_h5ad(tmp_path / "grid.h5ad")
    assert info["positions"] == "grid" and 15 <= a.n_obs <= 30  # the 6x4 tile area, at 224 px = 112 µm steps
    x, y = a.obs["px"].to_numpy(), a.obs["py"].to_numpy()
    assert x.min() >= 300 and y.min() >= 300 and x.max() <= 300 + 6 * 224 and y.max() <= 300 + 4 * 224
    assert a.uns["mai"]["grid_um"] == pytest.approx(112)


def _with_resolution(run_dir, tmp_path, mpp):
    """A copy of the run whose config records a training resolution (as an imported dataset would)."""
    import shutil

    run = tmp_path / f"run_at_{mpp}"
    shutil.copytree(run_dir, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data_resolution"] = {"mpp": mpp, "spot_pitch_um": 100.0, "platform": "visium", "patch_px": 224}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def test_tiles_are_resampled_to_the_run_resolution(tiny_run, slide, predictor, tmp_path):
    import anndata

    from mai_core.data import open_slide

    run = _with_resolution(tiny_run, tmp_path, 1.0)
    info = predict_slide(run, slide["path"], tmp_path / "r.h5ad", spots=slide["spots"], device="cpu", progress=False)
    assert info["read_px"] == 448 and info["resampled"]
    with open_slide(slide["path"]) as s:
        tiles = np.stack([s.read_patch(int(x), int(y), 448, 224) for x, y in slide["centres"]])
    a = anndata.read_h5ad(tmp_path / "r.h5ad")
    np.testing.assert_allclose(a.X, predictor.predict_images(tiles), rtol=1e-5, atol=1e-6)
    assert "resampled to 224 px" in " ".join(a.uns["mai"]["notes"])
    assert plan_read(0.5, 0.51).read_px == 224 and plan_read(0.25, 0.5).read_px == 448


def test_bad_inputs_are_clear_and_write_nothing(tiny_run, slide, tmp_path, capsys):
    out = tmp_path / "x.h5ad"
    base = ["predict-slide", "--run", str(tiny_run), "--out", str(out), "--device", "cpu", "--quiet"]
    (tmp_path / "notes.tif").write_text("hello")
    assert cli_main(base + ["--image", str(tmp_path / "notes.tif")]) == 2
    assert "cannot decode the H&E image" in capsys.readouterr().err
    pd.DataFrame({"id": ["a", "b"], "px": [100, 99999], "py": [100, 50]}).to_csv(tmp_path / "far.csv", index=False)
    assert cli_main(base + ["--image", str(slide["path"]), "--spots", str(tmp_path / "far.csv")]) == 2
    err = capsys.readouterr().err
    assert "outside the slide" in err and "b" in err and "Traceback" not in err
    plain = write_pyramid(tmp_path / "plain.tif", slide["image"], mpp=None, levels=1)
    run = _with_resolution(tiny_run, tmp_path, 0.5)
    assert cli_main(base[:2] + [str(run)] + base[3:] + ["--image", str(plain), "--spots", str(slide["spots"])]) == 2
    err = capsys.readouterr().err
    assert "resolution is unknown" in err and "--mpp" in err
    assert not out.exists()
    assert cli_main(base[:2] + [str(run)] + base[3:] + ["--image", str(plain), "--spots", str(slide["spots"]),
                                                     "--mpp", "0.5"]) == 0
    assert out.is_file()
    out.unlink()
    capsys.readouterr()
    pd.DataFrame({"OTHER1": [1, 2], "OTHER2": [3, 4]}, index=slide["ids"][:2]).to_csv(tmp_path / "c.tsv", sep="\t")
    assert cli_main(base + ["--image", str(slide["path"]), "--spots", str(slide["spots"]),
                            "--counts", str(tmp_path / "c.tsv")]) == 2
    assert "share no gene with the run" in capsys.readouterr().err and not out.exists()
    assert cli_main(["predict-slide", "--run", str(tiny_run), "--out", str(tmp_path / "x.csv"), "--image",
                     str(slide["path"])]) == 2
    assert ".h5ad" in capsys.readouterr().err


def test_stop_writes_nothing_and_says_stopped(tiny_run, slide, tmp_path):
    stop = threading.Event()
    stop.set()
    status = tmp_path / "job"
    status.mkdir()
    with pytest.raises(KeyboardInterrupt):
        predict_slide(tiny_run, slide["path"], tmp_path / "s.h5ad", spots=slide["spots"], device="cpu",
                      progress=False, stop=stop, status_dir=status)
    assert not (tmp_path / "s.h5ad").exists()
    from mai_core.runs import read_status

    assert read_status(status)["state"] == "stopped"


def test_programmes_and_labels(tiny_run, slide, demo_dir, tmp_path):
    import anndata

    ids = slide["ids"]
    pd.DataFrame({"Row.names": ids[:10], "label": ["tumour"] * 5 + ["stroma"] * 5}).to_csv(
        tmp_path / "labels.tsv", sep="\t", index=False)
    predict_slide(tiny_run, slide["path"], tmp_path / "p.h5ad", spots=slide["spots"], device="cpu", progress=False,
                  labels=tmp_path / "labels.tsv", programmes=demo_dir / "modules.gmt")
    a = anndata.read_h5ad(tmp_path / "p.h5ad")
    assert a.obs["label"].tolist()[:10] == ["tumour"] * 5 + ["stroma"] * 5 and a.obs["label"].tolist()[10] == ""
    prog = a.obsm["programmes"]
    assert "immune" in prog.columns and prog.shape[0] == 24
    genes = [g for g in a.var_names if g in set(_gmt(demo_dir / "modules.gmt")["immune"])]
    x = np.asarray(a[:, genes].X, dtype=np.float64)
    z = (x - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(prog["immune"].to_numpy(), z.mean(1), rtol=1e-4, atol=1e-5)


def _gmt(path):
    from mai_core.genes import parse_gmt

    return parse_gmt(path)


def test_export_val_and_test_splits(tiny_run, demo_dir, tmp_path):
    import anndata

    assert cli_main(["export", "--run", str(tiny_run), "--split", "val", "--out", str(tmp_path / "val.h5ad"),
                     "--quiet"]) == 0
    v = anndata.read_h5ad(tmp_path / "val.h5ad")
    vp = pd.read_parquet(tiny_run / "val_predictions.parquet")
    assert v.n_obs == len(vp) and "measured" in v.layers
    g = v.var_names[0]
    np.testing.assert_allclose(v[:, g].X.ravel(), vp[f"pred:{g}"].to_numpy(), rtol=1e-6)
    assert cli_main(["export", "--run", str(tiny_run), "--split", "test", "--data", str(demo_dir), "--device", "cpu",
                     "--out", str(tmp_path / "test.h5ad"), "--quiet"]) == 0
    t = anndata.read_h5ad(tmp_path / "test.h5ad")
    assert t.n_obs == 40 and np.isfinite(t.layers["measured"]).all()
    assert cli_main(["export", "--run", str(tiny_run), "--split", "val", "--out", str(tmp_path / "v.txt")]) == 2


@pytest.mark.slow
def test_real_her2st_section_equals_predict_on_imported_patches(her2st_dir, tmp_path):
    """Import C5, train a tiny run on it (it records 0.69 µm/px), then predict C5 as a slide at its spots."""
    import anndata
    import matplotlib
    import scanpy as sc
    import squidpy as sq

    from mai_core.data import import_her2st, load_dataset
    from mai_core.runs import predict_csv

    data, run = tmp_path / "c5", tmp_path / "run"
    import_her2st(her2st_dir, data, sections=("C5",), top_genes=40)
    assert cli_main(["train", "--data", str(data), "--out", str(run)] + TRAIN) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert 0.67 < cfg["data_resolution"]["mpp"] < 0.71 and cfg["data_resolution"]["spot_pitch_um"] == 200
    ds = load_dataset(data)
    ds.train[["ID", "path"]].to_csv(data / "all.csv", index=False)  # paths are relative to the CSV's folder
    ref = predict_csv(run, data / "all.csv", tmp_path / "ref.csv", device="cpu", progress=False)
    out = tmp_path / "C5.h5ad"
    assert cli_main(["predict-slide", "--run", str(run), "--image", str(her2st_dir / "C5.jpg"), "--spots",
                     str(her2st_dir / "C5_selection.tsv"), "--counts", str(her2st_dir / "C5.tsv.gz"),
                     "--out", str(out), "--device", "cpu", "--quiet", "--no-spatial-context"]) == 0
    a = anndata.read_h5ad(out)
    assert a.uns["mai"]["read_px"] == 224 and not a.uns["mai"]["resampled"]
    pred = a.to_df().set_index(a.obs["spot"].to_numpy())
    ref = ref.assign(spot=ref["ID"].str.replace("C5_", "", regex=False)).set_index("spot")
    common = ref.index.intersection(pred.index)
    assert len(common) == len(ref) == 181  # every imported patch is a spot of the slide
    diff = np.abs(pred.loc[common, ref.columns[1:-1]].to_numpy() - ref.loc[common, ref.columns[1:-1]].to_numpy())
    assert diff.max() < 1e-5, diff.max()
    measured = pd.DataFrame(a.layers["measured"], index=a.obs["spot"].to_numpy(), columns=a.var_names)
    truth = ds.train.assign(spot=ds.train["ID"].str.replace("C5_", "", regex=False)).set_index("spot")
    np.testing.assert_allclose(measured.loc[common, ds.genes].to_numpy(), truth.loc[common, ds.genes].to_numpy(),
                               rtol=1e-4, atol=1e-4)
    matplotlib.use("Agg")
    sc.pl.spatial(a, color=a.var_names[0], show=False)
    matplotlib.pyplot.close("all")
    sq.gr.spatial_neighbors(a, coord_type="grid", n_neighs=4)
    assert a.obsp["spatial_connectivities"].nnz > 300
