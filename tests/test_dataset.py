"""MAI CSV format: loading, lazy images, and validation of every kind of bad input."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mai_core.cli import main
from mai_core.data.dataset import collect_problems, load_dataset, read_id_path_csv
from mai_core.errors import MaiError


def make_dataset(root, n=6, genes=("GENE_A", "MT-CO1", "LINC01770"), test_n=2):
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n + test_n):
        arr = rng.integers(0, 255, size=(224, 224, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "img" / f"s{i}.png")
        rows.append({"ID": f"s{i}", "path": f"img/s{i}.png"})
    train = pd.DataFrame(rows[:n])
    for j, g in enumerate(genes):
        train[g] = rng.random(n).astype(np.float32) * (10 ** j)
    train.to_csv(root / "train.csv", index=False)
    if test_n:
        pd.DataFrame(rows[n:]).to_csv(root / "test.csv", index=False)
    return root


def whats(root):
    problems, _, _ = collect_problems(root)
    return [f"{p.where} | {p.what}" for p in problems]


def test_clean_dataset_loads(tmp_path):
    root = make_dataset(tmp_path / "d")
    ds = load_dataset(root)
    assert ds.genes == ["GENE_A", "MT-CO1", "LINC01770"]
    assert ds.ids == [f"s{i}" for i in range(6)]
    assert ds.test_ids == ["s6", "s7"]
    assert ds.X.dtype == np.float32 and ds.X.shape == (6, 3)
    img = ds.image("s2")
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, np.asarray(Image.open(root / "img" / "s2.png")))
    assert ds.images("test").shape == (2, 224, 224, 3)
    stats = ds.gene_stats()
    assert list(stats.columns) == ["gene", "mean", "std", "cv", "zero_fraction"]
    assert len(ds.fingerprint) == 16


def test_torch_view_yields_float_images_and_targets(tmp_path):
    root = make_dataset(tmp_path / "d")
    ds = load_dataset(root)
    tds = ds.torch_dataset()
    x, y = tds[1]
    assert tuple(x.shape) == (3, 224, 224) and float(x.max()) <= 1.0
    np.testing.assert_allclose(y.numpy(), ds.X[1])


def test_metadata_columns_are_not_genes(tmp_path):
    root = make_dataset(tmp_path / "d")
    df = pd.read_csv(root / "train.csv")
    df.insert(2, "section", "C2")
    df.insert(3, "px", 100)
    df.insert(4, "py", 200)
    df.to_csv(root / "train.csv", index=False)
    ds = load_dataset(root)
    assert ds.meta_columns == ["section", "px", "py"]
    assert "section" not in ds.genes


def test_fingerprint_changes_with_content(tmp_path):
    root = make_dataset(tmp_path / "d")
    fp1 = load_dataset(root).fingerprint
    df = pd.read_csv(root / "train.csv")
    df.loc[0, "GENE_A"] = 123.0
    df.to_csv(root / "train.csv", index=False)
    assert load_dataset(root).fingerprint != fp1


@pytest.mark.parametrize("case, expect", [
    ("missing_image", "not found"),
    ("unreadable_image", "unreadable"),
    ("wrong_size", "expected 224x224"),
    ("wrong_mode", "expected RGB"),
    ("non_numeric", "non-numeric value"),
    ("nan", "missing/NaN"),
    ("inf", "infinite"),
    ("duplicate_id", "duplicate ID 's1'"),
    ("duplicate_gene", "duplicate column name 'MT-CO1'"),
    ("absolute_path", "absolute path"),
    ("dotdot_path", "escapes the dataset folder"),
    ("test_genes", "gene columns differ"),
    ("no_train", "train.csv is missing"),
    ("no_path_col", "column 'path' is missing"),
])
def test_each_bad_input_is_reported(tmp_path, case, expect):
    root = make_dataset(tmp_path / "d")
    df = pd.read_csv(root / "train.csv", dtype={"ID": str})
    if case == "missing_image":
        (root / "img" / "s3.png").unlink()
    elif case == "unreadable_image":
        (root / "img" / "s3.png").write_bytes(b"not a png at all")
    elif case == "wrong_size":
        Image.new("RGB", (100, 224)).save(root / "img" / "s3.png")
    elif case == "wrong_mode":
        Image.new("L", (224, 224)).save(root / "img" / "s3.png")
    elif case == "non_numeric":
        df["GENE_A"] = df["GENE_A"].astype(object)
        df.loc[3, "GENE_A"] = "high"
    elif case == "nan":
        df.loc[3, "GENE_A"] = np.nan
    elif case == "inf":
        df.loc[3, "GENE_A"] = np.inf
    elif case == "duplicate_id":
        df.loc[3, "ID"] = "s1"
    elif case == "duplicate_gene":
        df.columns = ["ID", "path", "GENE_A", "MT-CO1", "MT-CO1"]
    elif case == "absolute_path":
        df.loc[3, "path"] = str(root / "img" / "s3.png")
    elif case == "dotdot_path":
        df.loc[3, "path"] = "../outside.png"
    elif case == "test_genes":
        test = pd.read_csv(root / "test.csv")
        test["OTHER"] = 1.0
        test.to_csv(root / "test.csv", index=False)
    elif case == "no_train":
        (root / "train.csv").unlink()
    elif case == "no_path_col":
        df = df.rename(columns={"path": "file"})
    if case != "no_train":
        df.to_csv(root / "train.csv", index=False)
    found = whats(root)
    assert any(expect in f for f in found), found
    if case in ("missing_image", "unreadable_image", "wrong_size", "wrong_mode", "non_numeric", "nan",
                "inf", "absolute_path", "dotdot_path"):
        assert any("row 5" in f for f in found), found  # row 4 of the table = line 5 of the file
    with pytest.raises(MaiError):
        load_dataset(root)


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "img" / "s0.png").unlink()
    Image.new("RGB", (10, 10)).save(root / "img" / "s1.png")
    df = pd.read_csv(root / "train.csv")
    df.loc[2, "MT-CO1"] = np.nan
    df.to_csv(root / "train.csv", index=False)
    assert len(whats(root)) == 3


def test_validate_cli_exit_codes(tmp_path, capsys):
    root = make_dataset(tmp_path / "d")
    assert main(["validate", "--data", str(root)]) == 0
    assert "6 train samples" in capsys.readouterr().out
    (root / "img" / "s3.png").unlink()
    before = sorted(p.name for p in root.rglob("*"))
    assert main(["validate", "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written
    assert main(["validate", "--data", str(tmp_path / "nope")]) == 2


def test_prediction_csv_refuses_missing_images(tmp_path):
    root = make_dataset(tmp_path / "d")
    df, paths = read_id_path_csv(root / "test.csv")
    assert list(df["ID"]) == ["s6", "s7"] and all(p.exists() for p in paths)
    (root / "img" / "s7.png").unlink()
    with pytest.raises(MaiError, match="cannot be used for prediction") as info:
        read_id_path_csv(root / "test.csv")
    assert "s7.png" in info.value.render()
