"""Importing every spatial format into the MAI dataset format, each round-tripped: 10x Visium outs/, HEST-1k,
AnnData, legacy ST; counts from another section refused (--min-match); the `import` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _slide_data import write_hest, write_visium
from mai_core.cli import main as cli_main
from mai_core.data import importer, load_dataset
from mai_core.data.slideimage import cut_patch
from mai_core.data.visium import stage_visium
from mai_core.errors import MaiError


def _norm(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return np.log1p(c / c.sum(1, keepdims=True) * 1e4)


def _rows(ds, section: str) -> pd.DataFrame:
    return ds.train[ds.train["section"] == section].set_index("ID")


def test_visium_outs_round_trip(tmp_path):
    v = write_visium(tmp_path / "visium", mpp=1.0)
    info = importer.import_sections([("V1", lambda: stage_visium(v["outs"], "V1"))], tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    rows = _rows(ds, "V1")
    keep = v["in_tissue"] == 1
    assert len(rows) == keep.sum() == info["rows"]
    sec = info["imported"][0]
    assert sec["mpp"] == pytest.approx(1.0, rel=0.01) and "Visium" in sec["mpp_source"]
    expected = _norm(v["counts"][keep])
    for k, code in enumerate(c for c, kk in zip(v["codes"], keep) if kk):
        row = rows.loc[f"V1_{code}"]
        assert np.allclose(row[v["genes"]].to_numpy(float), expected[k], rtol=1e-5)
        assert (row["px"], row["py"]) == (v["x"][v["codes"].index(code)], v["y"][v["codes"].index(code)])
        if k < 5:  # the patch is the full-resolution JPEG around the spot
            full = np.asarray(Image.open(v["image"]).convert("RGB"))
            assert np.array_equal(ds.image(f"V1_{code}"), cut_patch(full, int(row["px"]), int(row["py"]))[0])
    manifest = importer.read_manifest(tmp_path / "ds")
    assert manifest["sections"]["V1"]["platform"] == "visium" and manifest["sections"]["V1"]["patch_um"] == pytest.approx(224, rel=0.01)
    res = importer.dataset_resolution(tmp_path / "ds")
    assert res["mpp"] == pytest.approx(1.0, rel=0.01) and res["spot_pitch_um"] == 100.0


def test_visium_needs_the_full_resolution_image(tmp_path):
    v = write_visium(tmp_path / "v", mpp=1.0)
    (tmp_path / "v" / "other.jpg").write_bytes((tmp_path / "v" / "fullres.jpg").read_bytes())
    with pytest.raises(MaiError, match="which full-resolution image"):
        stage_visium(v["outs"], "V1")
    st = stage_visium(v["outs"], "V1", image=v["image"])
    assert len(st.spots) == int(v["in_tissue"].sum())
    st.close()


@pytest.mark.parametrize("with_wsi", [True, False])
def test_hest_sample_round_trip(tmp_path, with_wsi):
    h = write_hest(tmp_path / "hest", with_wsi=with_wsi)
    assert cli_main(["import", str(tmp_path / "hest"), "--out", str(tmp_path / "ds"), "--quiet"]) == 0
    ds = load_dataset(tmp_path / "ds")
    rows = _rows(ds, h["id"])
    assert len(rows) == len(h["codes"])
    expected = _norm(h["counts"])
    for k, code in enumerate(h["codes"][:6]):
        row = rows.loc[f"{h['id']}_{code}"]
        assert np.allclose(row[h["genes"]].to_numpy(float), expected[k], rtol=1e-5)
        assert np.array_equal(ds.image(f"{h['id']}_{code}"), h["patches"][k])  # WSI crop == HEST's own patch
    sec = importer.read_manifest(tmp_path / "ds")["sections"][h["id"]]
    assert sec["patch_mpp"] == pytest.approx(0.5)
    assert sec["mpp_source"] == "HEST metadata (pixel_size_um)" and sec["read_px"] == 224


def test_h5ad_with_image_round_trip(tmp_path):
    import anndata

    h = write_hest(tmp_path / "hest")
    ad = anndata.read_h5ad(tmp_path / "hest" / "st" / f"{h['id']}.h5ad")
    ad.layers["counts"] = ad.X.copy()
    ad.X = ad.X * 0.5  # something normalised in X: the importer takes layers['counts']
    ad.obs.loc[ad.obs_names[:2], "in_tissue"] = 0
    ad.write_h5ad(tmp_path / "mine.h5ad")
    Image.fromarray(h["image"]).save(tmp_path / "he.png")
    assert cli_main(["import", str(tmp_path / "mine.h5ad"), "--image", str(tmp_path / "he.png"), "--section", "A",
                     "--out", str(tmp_path / "ds"), "--quiet"]) == 0
    rows = _rows(load_dataset(tmp_path / "ds"), "A")
    assert len(rows) == len(h["codes"]) - 2
    code = h["codes"][5]
    assert np.allclose(rows.loc[f"A_{code}", h["genes"]].to_numpy(float), _norm(h["counts"])[5], rtol=1e-5)
    sec = importer.read_manifest(tmp_path / "ds")["sections"]["A"]
    assert sec["mpp"] == pytest.approx(0.5, rel=0.01)  # from the Visium array grid in obs


def test_patch_mpp_resamples_to_a_common_resolution(tmp_path):
    v = write_visium(tmp_path / "v", mpp=0.5)
    info = importer.import_sections([("V", lambda: stage_visium(v["outs"], "V"))], tmp_path / "ds", patch_mpp=1.0)
    sec = info["imported"][0]
    assert sec["read_px"] == 448 and sec["patch_mpp"] == 1.0
    ds = load_dataset(tmp_path / "ds")
    assert ds.images(indices=[0]).shape == (1, 224, 224, 3)
    with pytest.raises(MaiError, match="resolution is unknown"):
        _unknown_mpp(tmp_path)
    assert not (tmp_path / "ds2" / "train.csv").exists()


def _unknown_mpp(tmp_path):
    """A legacy-ST section whose spots cannot give a resolution (two spots), resampled: refused."""
    img = np.zeros((600, 600, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "u.png")
    pd.DataFrame({"x": [1, 2], "y": [1, 1], "pixel_x": [100, 300], "pixel_y": [100, 100], "selected": [1, 1]}).to_csv(
        tmp_path / "u.tsv", sep="\t", index=False)
    pd.DataFrame({"G": [3, 4]}, index=["1x1", "2x1"]).to_csv(tmp_path / "u_counts.tsv", sep="\t")
    importer.import_slide(tmp_path / "u.png", tmp_path / "u.tsv", tmp_path / "u_counts.tsv", "U", tmp_path / "ds2",
                          patch_mpp=1.0)


def test_counts_of_another_section_are_refused(tmp_path):
    img = np.full((800, 800, 3), 200, np.uint8)
    Image.fromarray(img).save(tmp_path / "he.png")
    xs, ys = np.meshgrid(np.arange(1, 7), np.arange(1, 7))
    spots = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "pixel_x": 100 + xs.ravel() * 100.0,
                          "pixel_y": 100 + ys.ravel() * 100.0, "selected": 1})
    spots.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    ids = [f"{x}x{y}" for x, y in zip(spots.x, spots.y)]
    other = ids[:6] + [f"{x}x{y}" for x in range(20, 26) for y in range(20, 26)]  # 6 of 36 spots match: 17 %
    pd.DataFrame({"G1": 5, "G2": 3}, index=other).to_csv(tmp_path / "other.tsv", sep="\t")
    with pytest.raises(MaiError) as ei:
        importer.import_slide(tmp_path / "he.png", tmp_path / "spots.tsv", tmp_path / "other.tsv", "S", tmp_path / "ds")
    text = ei.value.render()
    assert "counts match too few spots" in text and "6 of 36" in text and "17%" in text and "--min-match 0.16" in text
    assert not (tmp_path / "ds").exists()
    info = importer.import_slide(tmp_path / "he.png", tmp_path / "spots.tsv", tmp_path / "other.tsv", "S",
                                 tmp_path / "ds", min_match=0.16)
    assert info["rows"] == 6
    assert cli_main(["import-slide", "--image", str(tmp_path / "he.png"), "--spots", str(tmp_path / "spots.tsv"),
                     "--counts", str(tmp_path / "other.tsv"), "--section", "T", "--out", str(tmp_path / "ds"),
                     "--quiet"]) == 2
    with pytest.raises(MaiError, match="invalid --min-match"):
        importer.import_slide(tmp_path / "he.png", tmp_path / "spots.tsv", tmp_path / "other.tsv", "S",
                              tmp_path / "ds", min_match=1.5)


def test_import_command_detects_formats_and_reports_errors(tmp_path, capsys):
    v = write_visium(tmp_path / "visium", mpp=1.0)
    assert cli_main(["import", str(tmp_path / "visium"), "--section", "V1", "--out", str(tmp_path / "ds"),
                     "--quiet", "--top-genes", "5"]) == 0
    out = capsys.readouterr().out
    assert "format: visium" in out and "resolution 1" in out and "5 genes" in out
    assert cli_main(["import", str(tmp_path / "visium"), "--out", str(tmp_path / "ds"), "--quiet"]) == 2
    assert "--section is required" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    assert cli_main(["import", str(tmp_path / "junk"), "--section", "J", "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "unknown input format" in err and "Traceback" not in err
    assert cli_main(["import", "--format", "st", "--section", "S", "--spots", "x.tsv", "--out",
                     str(tmp_path / "ds")]) == 2
    assert "needs three files" in capsys.readouterr().err
    (tmp_path / "bad.h5ad").write_text("not hdf5")
    assert cli_main(["import", str(tmp_path / "bad.h5ad"), "--image", str(v["image"]), "--section", "B",
                     "--out", str(tmp_path / "ds")]) == 2
    assert "cannot read the AnnData file" in capsys.readouterr().err


def test_real_her2st_counts_from_another_section(her2st_dir, tmp_path):
    """C2's counts against C5's spots: only a fifth of C5's spots have a row; refused unless overridden."""
    with pytest.raises(MaiError) as ei:
        importer.import_slide(her2st_dir / "C5.jpg", her2st_dir / "C5_selection.tsv", her2st_dir / "C2.tsv.gz",
                              "C5", tmp_path / "ds")
    assert "counts match too few spots" in ei.value.render()
    assert not (tmp_path / "ds").exists()


def test_manifest_records_resolution_for_legacy_st(her2st_dir, tmp_path):
    info = importer.import_her2st(her2st_dir, tmp_path / "ds", sections=("C5",), top_genes=20)
    sec = importer.read_manifest(tmp_path / "ds")["sections"]["C5"]
    assert 0.67 < sec["mpp"] < 0.71 and sec["platform"] == "st" and "spot grid" in sec["mpp_source"]
    assert info["imported"][0]["read_px"] == 224
    assert json.loads((tmp_path / "ds" / "slides" / "manifest.json").read_text())["sections"]["C5"]["patch_um"] > 150
