"""Tests for mai_core.slide (import of spatial-transcriptomics sections) and the import-slide command."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mai_core.data import importer, slideimage, stfiles
from mai_core.metrics import top_variable_genes
from mai_core.cli import main as cli_main
from mai_core.data.dataset import load_dataset
from mai_core.errors import MaiError

SHARED_HER2ST = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"
SIZE = 1000

# (x, y, pixel_x, pixel_y, selected)
SPOTS = [
    (1, 1, 300.0, 400.0, 1),
    (2, 1, 520.4, 410.6, 1),    # rounds to (520, 411)
    (3, 1, 700.5, 650.5, 1),    # rounds half up to (701, 651)
    (4, 1, 40.0, 960.0, 1),     # near the border: padded
    (5, 1, 500.0, 500.0, 0),    # not under tissue
    (6, 1, 600.0, 200.0, 1),    # selected but no counts row
]
GENES = ["GB", "GA", "GC"]
COUNTS = {  # spot -> counts for GENES
    "1x1": [1, 3, 6],
    "2x1": [0, 10, 0],
    "3x1": [5, 5, 0],
    "4x1": [2, 0, 2],
    "5x1": [9, 9, 9],  # not selected: ignored
}


def _write_image(path: Path, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 255, size=(SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _write_spots(path: Path, rows=SPOTS, sep="\t", columns=("x", "y", "pixel_x", "pixel_y", "selected")):
    df = pd.DataFrame(rows, columns=["x", "y", "pixel_x", "pixel_y", "selected"])
    df[list(columns)].to_csv(path, sep=sep, index=False)


def _write_counts(path: Path, counts=COUNTS, genes=GENES):
    df = pd.DataFrame.from_dict(counts, orient="index", columns=genes)
    df.to_csv(path, sep="\t", index_label="")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("slide_img") / "he.png"
    return path, _write_image(path)


@pytest.fixture
def section(tmp_path, image_file):
    img_path, arr = image_file
    _write_spots(tmp_path / "spots.tsv")
    _write_counts(tmp_path / "counts.tsv")
    return {"image": img_path, "spots": tmp_path / "spots.tsv", "counts": tmp_path / "counts.tsv",
            "arr": arr, "out": tmp_path / "ds"}


def _imp(sec, name="S1", **kw):
    return importer.import_slide(sec["image"], sec["spots"], sec["counts"], name, sec["out"], **kw)


def _train(out: Path) -> pd.DataFrame:
    """train.csv as written (values carry 6 significant digits, hence rel=1e-5 comparisons)."""
    return pd.read_csv(out / "train.csv", dtype={"ID": str})


def test_normalisation_matches_hand_computation(section):
    info = _imp(section)
    df = _train(section["out"]).set_index("ID")
    assert list(df.index) == ["S1_1x1", "S1_2x1", "S1_3x1", "S1_4x1"]
    # first import: genes sorted alphabetically
    assert [c for c in df.columns if c.startswith("G")] == ["GA", "GB", "GC"]
    # spot 1x1: GB=1, GA=3, GC=6, total 10
    assert df.loc["S1_1x1", "GA"] == pytest.approx(math.log1p(3 / 10 * 10_000), rel=1e-5)
    assert df.loc["S1_1x1", "GB"] == pytest.approx(math.log1p(1 / 10 * 10_000), rel=1e-5)
    assert df.loc["S1_1x1", "GC"] == pytest.approx(math.log1p(6 / 10 * 10_000), rel=1e-5)
    # spot 2x1: everything in GA
    assert df.loc["S1_2x1", "GA"] == pytest.approx(math.log1p(10_000), rel=1e-5)
    assert df.loc["S1_2x1", "GB"] == 0 and df.loc["S1_2x1", "GC"] == 0
    assert df.loc["S1_3x1", "GB"] == pytest.approx(math.log1p(5000), rel=1e-5)
    assert info["rows"] == 4 and info["n_genes"] == 3 and info["norm"] == "log1p_cp10k"
    assert df.loc["S1_1x1", "section"] == "S1"
    assert (df.loc["S1_1x1", "array_x"], df.loc["S1_1x1", "array_y"]) == (1, 1)


@pytest.mark.parametrize("norm, expected", [
    ("raw", {"GA": 3, "GB": 1, "GC": 6}),
    ("log1p", {"GA": math.log1p(3), "GB": math.log1p(1), "GC": math.log1p(6)}),
    ("cp10k", {"GA": 3000, "GB": 1000, "GC": 6000}),
])
def test_other_normalisations(section, norm, expected):
    _imp(section, norm=norm)
    row = _train(section["out"]).set_index("ID").loc["S1_1x1"]
    for g, v in expected.items():
        assert row[g] == pytest.approx(v, rel=1e-5)


def test_patch_content_and_padding(section):
    info = _imp(section)
    arr = section["arr"]
    df = _train(section["out"]).set_index("ID")
    for sid, (cx, cy) in {"S1_1x1": (300, 400), "S1_2x1": (520, 411), "S1_3x1": (701, 651)}.items():
        assert (df.loc[sid, "px"], df.loc[sid, "py"]) == (cx, cy)
        patch = np.asarray(Image.open(section["out"] / df.loc[sid, "path"]))
        assert patch.shape == (224, 224, 3) and patch.dtype == np.uint8
        assert np.array_equal(patch[112, 112], arr[cy, cx])
        assert np.array_equal(patch, arr[cy - 112:cy + 112, cx - 112:cx + 112])
    border = np.asarray(Image.open(section["out"] / df.loc["S1_4x1", "path"]))
    assert np.array_equal(border[112, 112], arr[960, 40])
    assert (border[:, :72] == 255).all()          # columns left of x=0
    assert (border[152:, :] == 255).all()          # rows below y=999
    assert np.array_equal(border[:152, 72:], arr[848:1000, 0:152])
    s = info["imported"][0]
    assert s["padded"] == 1
    assert s["skipped"]["no_counts"] == 1 and s["skipped"]["no_counts_examples"] == ["6x1"]
    assert s["skipped"]["not_selected"] == 1
    assert s["skipped"]["counts_rows_not_selected"] == 1
    text = importer.format_summary(info)
    assert "padded with white" in text and "without a counts row" in text and "6x1" in text
    ds = load_dataset(section["out"])
    assert ds.n_train == 4 and ds.genes == ["GA", "GB", "GC"]


def test_cut_patch_fully_outside_corner_is_white():
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    patch, padded = slideimage.cut_patch(img, 0, 0, size=8)
    assert padded and patch.shape == (8, 8, 3)
    assert (patch[:4, :] == 255).all() and (patch[4:, 4:] == 0).all()


def test_append_second_section_unions_genes(section, tmp_path):
    _imp(section)
    counts2 = {"1x1": [4, 4], "2x1": [1, 0], "3x1": [2, 2], "4x1": [7, 1]}
    _write_counts(tmp_path / "counts2.tsv", counts2, genes=["GD", "GB"])
    info = importer.import_slide(section["image"], section["spots"], tmp_path / "counts2.tsv", "S2", section["out"])
    df = _train(section["out"]).set_index("ID")
    assert list(df.columns[-4:]) == ["GA", "GB", "GC", "GD"]  # existing order, new genes appended
    assert len(df) == 8 and info["sections"] == ["S1", "S2"]
    assert (df.loc[[i for i in df.index if i.startswith("S1_")], "GD"] == 0).all()
    assert (df.loc[[i for i in df.index if i.startswith("S2_")], ["GA", "GC"]] == 0).all().all()
    assert df.loc["S2_1x1", "GD"] == pytest.approx(math.log1p(4 / 8 * 1e4), rel=1e-5)
    assert (section["out"] / "images" / "S2" / "1x1.png").is_file()
    ds = load_dataset(section["out"])
    assert ds.n_train == 8 and len(ds.genes) == 4


def test_reimport_replaces_rows_and_stale_images(section, tmp_path):
    _imp(section)
    fewer = {k: v for k, v in COUNTS.items() if k != "3x1"}
    _write_counts(tmp_path / "fewer.tsv", fewer)
    info = importer.import_slide(section["image"], section["spots"], tmp_path / "fewer.tsv", "S1", section["out"])
    df = _train(section["out"])
    assert sorted(df["ID"]) == ["S1_1x1", "S1_2x1", "S1_4x1"]
    assert info["imported"][0]["replaced"] is True
    assert "replaced" in importer.format_summary(info)
    assert not (section["out"] / "images" / "S1" / "3x1.png").exists()
    assert info["stale_images_removed"] == 1
    load_dataset(section["out"])


def test_jpeg_patches(section):
    _imp(section, image_format="jpeg")
    df = _train(section["out"])
    assert all(p.endswith(".jpg") for p in df["path"])
    with Image.open(section["out"] / df["path"].iat[0]) as im:
        assert im.format == "JPEG" and im.size == (224, 224) and im.mode == "RGB"


def test_gene_list_keeps_order_and_absent_genes(section, tmp_path):
    (tmp_path / "panel.txt").write_text("GC\n# comment\nGZ\n\nGA\n")
    info = _imp(section, genes=tmp_path / "panel.txt")
    df = _train(section["out"])
    assert list(df.columns[7:]) == ["GC", "GZ", "GA"]
    assert (df["GZ"] == 0).all() and info["genes_absent"] == ["GZ"]
    assert "GZ" in importer.format_summary(info)
    # the selection is remembered by the next import of the folder
    info2 = _imp(section, name="S2")
    assert list(_train(section["out"]).columns[7:]) == ["GC", "GZ", "GA"]
    assert any("kept from earlier" in n for n in info2["notes"])
    # and can be cleared
    _imp(section, name="S2", all_genes=True)
    assert list(_train(section["out"]).columns[7:]) == ["GA", "GB", "GC"]


def test_gene_list_without_overlap_is_rejected(section, tmp_path):
    (tmp_path / "panel.txt").write_text("ENSG000001\nENSG000002\n")
    with pytest.raises(MaiError, match="no gene of the gene list"):
        _imp(section, genes=tmp_path / "panel.txt")
    assert not (section["out"] / "train.csv").exists()


def test_top_genes_over_union_of_sections(section, tmp_path):
    # S1 alone: GA varies most, GB and GC less.
    _imp(section, top_genes=1, norm="raw")
    assert list(_train(section["out"]).columns[7:]) == ["GA"]
    # S2 brings GD with huge spread; over the union GD must win.
    counts2 = {"1x1": [1], "2x1": [1000], "3x1": [1], "4x1": [1000]}
    _write_counts(tmp_path / "c2.tsv", counts2, genes=["GD"])
    importer.import_slide(section["image"], section["spots"], tmp_path / "c2.tsv", "S2", section["out"])
    df = _train(section["out"])
    assert list(df.columns[7:]) == ["GD"] and len(df) == 8
    X = np.array([[3, 1, 6, 0], [10, 0, 0, 0], [5, 5, 0, 0], [0, 2, 2, 0],
                  [0, 0, 0, 1], [0, 0, 0, 1000], [0, 0, 0, 1], [0, 0, 0, 1000]], dtype=float)
    assert list(sorted(top_variable_genes(X, 2))) == [0, 3]


def test_normalisation_change_renormalises_all_sections(section, tmp_path):
    _imp(section)
    _imp(section, name="S2")
    info = _imp(section, name="S2", norm="raw")
    df = _train(section["out"]).set_index("ID")
    assert df.loc["S1_1x1", "GC"] == 6 and df.loc["S2_1x1", "GC"] == 6
    assert any("re-normalised" in n for n in info["notes"])


def test_min_counts_skips_low_spots(section):
    info = _imp(section, min_counts=5)  # 4x1 has total 4
    assert info["imported"][0]["skipped"]["below_min_counts"] == 1
    assert "S1_4x1" not in set(_train(section["out"])["ID"])


def test_transposed_counts_and_comma_spots(section, tmp_path):
    df = pd.DataFrame.from_dict(COUNTS, orient="index", columns=GENES).T
    df.to_csv(tmp_path / "genes_by_spots.csv")
    _write_spots(tmp_path / "spots.csv", sep=",")
    info = importer.import_slide(section["image"], tmp_path / "spots.csv", tmp_path / "genes_by_spots.csv",
                              "S1", section["out"])
    assert info["rows"] == 4 and any("transposed" in n for n in info["imported"][0]["notes"])


def _expect_error(fn, *needles):
    with pytest.raises(MaiError) as ei:
        fn()
    text = ei.value.render()
    for n in needles:
        assert n in text, text
    return text


def test_bad_inputs_raise_clear_errors(section, tmp_path):
    out = section["out"]
    _expect_error(lambda: importer.import_slide(tmp_path / "nope.jpg", section["spots"], section["counts"], "S1", out),
                  "H&E image not found", "nope.jpg")
    _write_spots(tmp_path / "nocols.tsv", columns=("x", "y", "selected"))
    _expect_error(lambda: importer.import_slide(section["image"], tmp_path / "nocols.tsv", section["counts"], "S1", out),
                  "lacks required columns", "pixel_x", "pixel_y")
    _write_counts(tmp_path / "other.tsv", {"90x90": [1, 2, 3], "91x90": [1, 1, 1]})
    _expect_error(lambda: importer.import_slide(section["image"], section["spots"], tmp_path / "other.tsv", "S1", out),
                  "do not match", "0 of 5 selected spots", "90x90")
    (tmp_path / "text.tsv").write_text("\tGA\tGB\n1x1\t3\tlots\n2x1\t1\t\n")
    _expect_error(lambda: importer.import_slide(section["image"], section["spots"], tmp_path / "text.tsv", "S1", out),
                  "invalid values", "non-numeric count ('lots')", "spot '1x1', gene 'GB'", "missing count")
    _write_counts(tmp_path / "neg.tsv", {"1x1": [1, -2, 3]})
    _expect_error(lambda: importer.import_slide(section["image"], section["spots"], tmp_path / "neg.tsv", "S1", out),
                  "negative count")
    far = SPOTS[:1] + [(7, 1, 1500.0, 20.0, 1)]
    _write_spots(tmp_path / "far.tsv", rows=far)
    _write_counts(tmp_path / "far_counts.tsv", {"1x1": [1, 1, 1], "7x1": [1, 1, 1]})
    _expect_error(lambda: importer.import_slide(section["image"], tmp_path / "far.tsv", tmp_path / "far_counts.tsv",
                                             "S1", out), "outside the image", "7x1", "1000x1000")
    _expect_error(lambda: _imp(section, name="../evil"), "invalid section name")
    _expect_error(lambda: _imp(section, norm="zscore"), "unknown normalisation")
    _expect_error(lambda: _imp(section, top_genes=0), "invalid --top-genes")
    (tmp_path / "spots_bad.tsv").write_text("x\ty\tpixel_x\tpixel_y\tselected\n1\t1\tabc\t400\t1\n")
    _expect_error(lambda: importer.import_slide(section["image"], tmp_path / "spots_bad.tsv", section["counts"], "S1",
                                             out), "not a number ('abc')", "pixel_x")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    _expect_error(lambda: importer.import_slide(tmp_path / "broken.jpg", section["spots"], section["counts"], "S1", out),
                  "cannot decode the H&E image")
    assert not out.exists() or not (out / "train.csv").exists()  # nothing half-written


def test_foreign_dataset_folder_is_refused(section):
    section["out"].mkdir()
    (section["out"] / "train.csv").write_text("ID,path,G\n")
    _expect_error(lambda: _imp(section), "not made by import-slide")


def test_failed_import_leaves_existing_dataset_untouched(section, tmp_path):
    _imp(section)
    before = (section["out"] / "train.csv").read_bytes()
    _write_counts(tmp_path / "other.tsv", {"90x90": [1, 2, 3]})
    with pytest.raises(MaiError):
        importer.import_slide(section["image"], section["spots"], tmp_path / "other.tsv", "S2", section["out"])
    assert (section["out"] / "train.csv").read_bytes() == before
    load_dataset(section["out"])


def test_pixel_limit_is_explicit_and_restored(section):
    old = Image.MAX_IMAGE_PIXELS
    _expect_error(lambda: _imp(section, max_pixels=500_000), "larger than the pixel limit", "--max-pixels 1000000")
    assert Image.MAX_IMAGE_PIXELS == old
    arr = slideimage.load_slide_image(section["image"], max_pixels=SIZE * SIZE)
    assert arr.shape == (SIZE, SIZE, 3) and Image.MAX_IMAGE_PIXELS == old


def test_cli_success_and_error_exit_codes(section, tmp_path, capsys):
    args = ["import-slide", "--image", str(section["image"]), "--spots", str(section["spots"]),
            "--counts", str(section["counts"]), "--section", "S1", "--out", str(section["out"]), "--quiet"]
    assert cli_main(args + ["--top-genes", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 spots" in out and "2 genes" in out
    bad = list(args)
    bad[bad.index("--counts") + 1] = str(tmp_path / "missing.tsv.gz")
    assert cli_main(bad) == 2
    err = capsys.readouterr().err
    assert "counts table not found" in err and "Traceback" not in err


def test_cli_subprocess_exit_code_2_without_traceback(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, "-m", "mai_core", "import-slide", "--image", str(tmp_path / "x.jpg"),
                          "--spots", str(tmp_path / "s.tsv"), "--counts", str(tmp_path / "c.tsv"),
                          "--section", "S1", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert res.returncode == 2
    assert "error:" in res.stderr and "not found" in res.stderr and "Traceback" not in res.stderr


def test_cli_norm_choices_match_library():
    from mai_core.commands import import_data, import_slide

    assert set(import_data._NORMS) == set(importer.NORMS) and import_slide.NAME == "import-slide"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_HER2ST.is_dir(), reason=f"HER2ST data not found at {SHARED_HER2ST}")
def test_real_her2st_section(tmp_path):
    info = importer.import_her2st(SHARED_HER2ST, tmp_path / "her2st", sections=("C5",), top_genes=200)
    assert 170 <= info["rows"] <= 190 and info["n_genes"] == 200
    assert info["imported"][0]["skipped"]["no_counts"] == 2
    ds = load_dataset(tmp_path / "her2st")
    assert ds.n_train == info["rows"] and len(ds.genes) == 200
    assert set(ds.train["section"]) == {"C5"} and ds.train["ID"].str.startswith("C5_").all()
    imgs = ds.images(indices=range(3))
    assert imgs.shape == (3, 224, 224, 3) and imgs.dtype == np.uint8
    with Image.open(ds.image_path(0)) as im:
        assert im.mode == "RGB" and im.size == (224, 224)
    assert np.isfinite(ds.X).all() and ds.X.max() > 3  # log1p(cp10k) of abundant genes


def test_duplicate_gene_columns_are_summed(tmp_path):
    (tmp_path / "dup.tsv").write_text("\tGA\tGB\tGA\n1x1\t1\t2\t3\n2x1\t0\t1\t4\n")
    c = stfiles.read_counts(tmp_path / "dup.tsv")
    assert c.genes == ["GA", "GB"] and c.values.tolist() == [[4, 2], [4, 1]]
    assert any("summed" in n for n in c.notes)
