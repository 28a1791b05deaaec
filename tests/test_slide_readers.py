"""Whole-slide readers (OpenSlide, tifffile, PIL), resolution from metadata and spot grids, position tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _slide_data import write_pyramid
from mai_core.data import mpp as mppmod
from mai_core.data import positions, wsi
from mai_core.errors import MaiError


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((1500, 2100, 3), 240, np.uint8)
    img[200:1300, 300:1800] = rng.integers(0, 255, (1100, 1500, 3), dtype=np.uint8)
    return img


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory, image):
    return write_pyramid(tmp_path_factory.mktemp("wsi") / "slide.tif", image, mpp=0.25, levels=3)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_pyramidal_tiff_levels_mpp_and_regions(pyramid, image, backend):
    with wsi.open_slide(pyramid, backend=backend) as s:
        assert s.backend == backend and (s.width, s.height) == (2100, 1500)
        assert [d for d in s.level_dims] == [(2100, 1500), (1050, 750), (525, 375)]
        assert s.mpp == pytest.approx(0.25) and s.mpp_source != "unknown"
        inside = s.read_region(310, 220, 500, 300)
        assert np.array_equal(inside, image[220:520, 310:810])
        edge = s.read_region(2000, 1400, 300, 200)  # past the bottom-right corner: white
        assert np.array_equal(edge[:100, :100], image[1400:, 2000:]) and (edge[100:] == 255).all()
        assert (edge[:, 100:] == 255).all()
        assert np.array_equal(s.read_level(1, 100, 100, 64, 64), image[::2, ::2][100:164, 100:164])
        thumb, scale = s.thumbnail(300)
        assert max(thumb.shape[:2]) == 300 and scale == pytest.approx(300 / 2100)


def test_backends_agree_on_resampled_patches(pyramid):
    centres = np.array([[500, 400], [1000, 800], [2090, 10], [5, 1495]])
    with wsi.open_slide(pyramid, backend="tifffile") as a, wsi.open_slide(pyramid, backend="openslide") as b:
        pa = np.stack([a.read_patch(x, y, 448, 224) for x, y in centres])
        pb = np.stack([b.read_patch(x, y, 448, 224) for x, y in centres])
        assert np.array_equal(pa, pb)
        # blockwise reading gives the same pixels as one patch at a time
        out = np.empty_like(pa)
        for idx, patches in wsi.iter_patches(a, centres, 448, 224, block=512):
            out[idx] = patches
        assert np.array_equal(out, pa)
        assert a.patch_plan(448, 224)[0] == 1  # 2x downsampling is read from level 1, not level 0


def test_native_patches_equal_cut_patch(tmp_path, image):
    from mai_core.data.slideimage import cut_patch

    Image.fromarray(image).save(tmp_path / "he.png")
    with wsi.open_slide(tmp_path / "he.png") as s:
        assert s.backend == "pil" and s.mpp is None
        for cx, cy in [(700, 600), (3, 3), (2099, 1499)]:
            assert np.array_equal(s.read_patch(cx, cy, 224), cut_patch(image, cx, cy)[0])


def test_jpeg_thumbnail_without_full_decode(tmp_path, image):
    Image.fromarray(image).save(tmp_path / "he.jpg", quality=92)
    with wsi.open_slide(tmp_path / "he.jpg") as s:
        thumb, scale = s.thumbnail(256)
        assert s._image is None  # the DCT-domain thumbnail never decoded the whole image
        assert thumb.shape == (183, 256, 3) and scale == pytest.approx(256 / 2100)
        ref = np.asarray(Image.fromarray(image).resize((256, 183), Image.BILINEAR), dtype=np.float64)
        assert np.abs(thumb.astype(np.float64) - ref).mean() < 12


def test_mpp_override_and_bad_files(tmp_path, pyramid):
    with wsi.open_slide(pyramid, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "--mpp"
    with pytest.raises(MaiError, match="implausible resolution"):
        wsi.open_slide(pyramid, mpp=500)
    (tmp_path / "notes.svs").write_text("this is not a slide")
    with pytest.raises(MaiError) as ei:
        wsi.open_slide(tmp_path / "notes.svs")
    assert "cannot decode the H&E image" in ei.value.render()
    with pytest.raises(MaiError, match="not found"):
        wsi.open_slide(tmp_path / "missing.tif")
    big = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000), "white").save(big)
    with pytest.raises(MaiError) as ei:
        wsi.open_slide(big, max_pixels=1000)
    assert "--max-pixels 1200000" in ei.value.render()


def test_tiff_without_resolution_has_unknown_mpp(tmp_path, image):
    p = write_pyramid(tmp_path / "plain.tif", image[:600, :600], mpp=None, levels=1)
    with wsi.open_slide(p) as s:
        assert s.mpp is None and s.mpp_source == "unknown"


def test_mpp_from_legacy_st_and_visium_grids():
    rng = np.random.default_rng(1)
    ax, ay = np.meshgrid(np.arange(5, 25), np.arange(3, 20))
    arr = np.c_[ax.ravel(), ay.ravel()].astype(float)
    px = arr * 290.0 + 100 + rng.normal(0, 2, arr.shape)  # 200 µm per step at 0.69 µm/px
    mpp, how = mppmod.estimate_mpp(px, arr, "st")
    assert mpp == pytest.approx(200 / 290, rel=0.005) and "array fit" in how
    mpp_nn, how_nn = mppmod.estimate_mpp(px, None, "st")
    assert mpp_nn == pytest.approx(200 / 290, rel=0.02) and "spacing" in how_nn
    from _slide_data import hex_spots

    _, rows, cols, xs, ys = hex_spots(10, 12, mpp=0.3)
    assert mppmod.estimate_mpp(np.c_[xs, ys], np.c_[cols, rows], "visium")[0] == pytest.approx(0.3, rel=1e-6)
    assert mppmod.estimate_mpp(np.c_[xs, ys], None, "visium")[0] == pytest.approx(0.3, rel=1e-6)
    assert mppmod.mpp_from_scalefactors({"spot_diameter_fullres": 130.0}) == pytest.approx(0.5)
    assert mppmod.estimate_mpp(np.zeros((2, 2)), None, "st") == (None, "unknown")


def test_her2st_grid_resolution(her2st_dir):
    pos = positions.read_positions(her2st_dir / "C5_selection.tsv")
    assert pos.kind == "st" and pos.ids[0] == "19x6"
    mpp, how = mppmod.estimate_mpp(pos.xy, pos.array_xy, "st")
    assert 0.67 < mpp < 0.71, (mpp, how)  # ~290 px between spots 200 µm apart


def test_position_layouts(tmp_path):
    (tmp_path / "ids.csv").write_text("id,px,py\na,10,20\nb,30.5,40\n")
    p = positions.read_positions(tmp_path / "ids.csv")
    assert p.kind == "csv" and p.ids == ["a", "b"] and p.xy.tolist() == [[10, 20], [30.5, 40]]
    rows = ["AAAC-1,1,0,0,200,100", "AAAG-1,0,0,2,200,300", "AAAT-1,1,1,1,373,200"]
    (tmp_path / "tissue_positions_list.csv").write_text("\n".join(rows) + "\n")
    v = positions.read_positions(tmp_path / "tissue_positions_list.csv")
    assert v.kind == "visium" and v.ids == ["AAAC-1", "AAAT-1"] and v.xy.tolist() == [[100, 200], [200, 373]]
    assert v.array_xy.tolist() == [[0, 0], [1, 1]]
    pd.DataFrame({"x": [1, 2], "y": [1, 1], "pixel_x": [5, 9], "pixel_y": [5, 5], "selected": [1, 0]}).to_csv(
        tmp_path / "sel.tsv", sep="\t", index=False)
    s = positions.read_positions(tmp_path / "sel.tsv")
    assert s.kind == "st" and s.ids == ["1x1"] and s.platform == "st"
    (tmp_path / "weird.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MaiError, match="unknown spot position layout"):
        positions.read_positions(tmp_path / "weird.csv")
    with pytest.raises(MaiError) as ei:
        positions.check_inside(p, 20, 30, "slide.tif")
    assert "1 of 2 position(s) lie outside the slide" in ei.value.render() and "b" in ei.value.render()
