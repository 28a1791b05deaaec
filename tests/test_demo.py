"""The synthetic demo dataset: format, determinism, planted signal and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mai_core.cli import main
from mai_core.data.dataset import load_dataset
from mai_core.data.demo import MODULES, _gene_catalogue, generate_demo, render_tile
from mai_core.errors import MaiError

TEXT_FILES = ("train.csv", "test.csv", "test_truth.csv", "activities.csv", "modules.gmt", "truth.json")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "ds", n_train=40, n_test=10, n_genes=60, seed=0)


def _pixels(root, sample):
    with Image.open(root / "images" / f"{sample}.png") as im:
        return np.asarray(im)


def test_output_is_a_valid_dataset(demo):
    ds = load_dataset(demo)
    assert ds.X.shape == (40, 60)
    assert ds.n_test == 10
    assert list(ds.test.columns) == ["ID", "path"]
    assert set(ds.ids).isdisjoint(ds.test_ids)
    img = ds.image(0)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    # H&E-like: pink/purple dominated (red and blue above green on average), not flat.
    mean = img.reshape(-1, 3).mean(0)
    assert mean[0] > mean[1] and mean[2] > mean[1]
    assert img.std() > 10
    truth_x = pd.read_csv(demo / "test_truth.csv")
    assert list(truth_x["ID"]) == ds.test_ids and list(truth_x.columns[1:]) == ds.genes


def test_same_seed_same_bytes_other_seed_differs(tmp_path, demo):
    """Same seed gives the same files (also when rendered by several processes)."""
    a = generate_demo(tmp_path / "a", n_train=6, n_test=2, n_genes=30, seed=3)
    b = generate_demo(tmp_path / "b", n_train=6, n_test=2, n_genes=30, seed=3, workers=2)
    c = generate_demo(tmp_path / "c", n_train=6, n_test=2, n_genes=30, seed=4)
    for name in TEXT_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for sample in ("train_00000", "train_00005", "test_00001"):
        assert np.array_equal(_pixels(a, sample), _pixels(b, sample))
        assert not np.array_equal(_pixels(a, sample), _pixels(c, sample))
        with np.load(a / "masks" / f"{sample}.npz") as ma, np.load(b / "masks" / f"{sample}.npz") as mb:
            assert all(np.array_equal(ma[m], mb[m]) for m in MODULES)
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    # A tile depends only on (seed, split, index), not on how many tiles are generated.
    d = generate_demo(tmp_path / "d", n_train=2, n_test=1, n_genes=30, seed=0)
    assert np.array_equal(_pixels(d, "train_00001"), _pixels(demo, "train_00001"))


def test_masks_match_activities(demo):
    act = pd.read_csv(demo / "activities.csv", dtype={"ID": str})
    assert len(act) == 50 and list(act.columns) == ["ID", "split", *MODULES]
    regional = [m for m in MODULES if m != "housekeeping"]
    for row in act.itertuples(index=False):
        with np.load(demo / "masks" / f"{row.ID}.npz") as masks:
            assert sorted(masks.files) == sorted(MODULES)
            for m in MODULES:
                assert masks[m].shape == (224, 224) and masks[m].dtype == bool
            # A localised module's activity is the share of the tile its region covers.
            for m in regional:
                assert abs(masks[m].mean() - getattr(row, m)) < 1e-5
            # Tissue regions do not overlap; what they leave is loose connective tissue.
            cover = sum(masks[m].astype(int) for m in regional)
            assert cover.max() <= 1 and cover.mean() <= 0.975
            # Housekeeping follows the nuclear chromatin factor, not an area; its mask is the nuclei.
            assert 0.0 <= row.housekeeping <= 1.0
            assert 0.0 < masks["housekeeping"].mean() < 0.9
    # Tiles differ in composition (the signal a model has to read from the image).
    assert (act[list(MODULES)].std() > 0.03).all()


def test_chromatin_factor_darkens_nuclei(demo):
    """The housekeeping driver is visible: nuclei are darker in tiles with a higher chromatin factor."""
    act = pd.read_csv(demo / "activities.csv", dtype={"ID": str})
    darkness = []
    for sample in act["ID"]:
        gray = _pixels(demo, sample).astype(float).mean(axis=2)
        with np.load(demo / "masks" / f"{sample}.npz") as masks:
            nuclei = masks["housekeeping"]
        darkness.append(-np.log10((gray[nuclei].mean() + 1) / 256) if nuclei.sum() > 200 else np.nan)
    darkness = np.asarray(darkness)
    ok = np.isfinite(darkness)
    assert ok.sum() >= 30
    assert np.corrcoef(darkness[ok], act["housekeeping"].to_numpy()[ok])[0, 1] > 0.5


def test_module_activities_are_decorrelated():
    """Each module is driven by its own factor, so co-expression can tell the modules apart."""
    acts = np.array([render_tile(np.random.default_rng([0, 2, 0, i]))[2] for i in range(200)])
    r = np.corrcoef(acts.T)
    np.fill_diagonal(r, 0)
    assert np.abs(r).max() < 0.6, r.round(2)
    assert (acts.std(axis=0) > 0.05).all()


def test_planted_signal_is_learnable(demo):
    ds = load_dataset(demo)
    truth = json.loads((demo / "truth.json").read_text())
    act = pd.read_csv(demo / "activities.csv").set_index("ID").loc[ds.ids]
    mod_r, free_r = [], []
    for j, gene in enumerate(ds.genes):
        x = ds.X[:, j]
        if x.std() == 0 or x.mean() < 0.3:  # low counts are mostly sampling noise
            continue
        module = truth["gene_module"][gene]
        if module is None:
            free_r.append(max(abs(np.corrcoef(x, act[m])[0, 1]) for m in MODULES))
        else:
            mod_r.append(np.corrcoef(x, act[module])[0, 1])
    assert len(mod_r) >= 10
    assert np.mean(mod_r) > 0.5, np.mean(mod_r)
    # Genes outside every module do not follow the image.
    assert np.mean(free_r) < np.mean(mod_r) - 0.2


def test_gene_names_scales_and_sparsity(demo):
    ds = load_dataset(demo)
    genes = ds.genes
    truth = json.loads((demo / "truth.json").read_text())
    assert truth["seed"] == 0 and truth["version"]
    assert len(set(genes)) == len(genes) == 60
    assert any(g.startswith("MT-") for g in genes)
    assert any(re.fullmatch(r"RP[LS]\w+", g) for g in genes)
    assert any(re.fullmatch(r"LINC\d{5}", g) for g in genes)
    assert any(re.fullmatch(r"AL\d{6}\.\d", g) for g in genes)
    assert any(re.fullmatch(r"AC\d{6}\.\d", g) for g in genes)
    assert not any(re.fullmatch(r"GENE\d+", g) for g in genes)
    assert all(truth["gene_module"][g] == "housekeeping" for g in genes if g.startswith("MT-"))
    # Prefix families share modules partly, not exactly.
    fam_modules: dict[str, set] = {}
    for g in genes:
        fam_modules.setdefault(truth["gene_family"][g], set()).add(truth["gene_module"][g])
    assert any(len(mods) > 1 for mods in fam_modules.values())
    hk_families = {truth["gene_family"][g] for g in genes if truth["gene_module"][g] == "housekeeping"}
    assert len(hk_families) > 1
    X = ds.X
    assert (X >= 0).all()
    means = X.mean(0)
    assert means.max() / max(means.min(), 1e-6) > 100
    assert means.max() > 2 and means.min() < 0.1
    assert (X == 0).mean() > 0.1


def test_prefix_families_overlap_modules_at_scale():
    spec = _gene_catalogue(1000, np.random.default_rng(0))
    assert len(set(spec.names)) == 1000
    immune = MODULES.index("immune")
    linc = np.array([n.startswith("LINC") for n in spec.names])
    in_immune = (spec.module[linc] == immune).mean()
    assert 0.3 < in_immune < 0.8  # LINC genes lean immune but are not the immune module
    assert (spec.module[~linc] == immune).sum() > 10  # ... which holds other genes too
    for mi in range(len(MODULES)):
        assert (spec.module == mi).sum() >= 20
    assert (spec.module == -1).sum() > 200


def test_gmt_lists_true_modules(demo):
    truth = json.loads((demo / "truth.json").read_text())
    lines = (demo / "modules.gmt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == list(MODULES)
    genes = set(load_dataset(demo).genes)
    for line in lines:
        name, description, *members = line.split("\t")
        assert description and len(members) >= 2
        assert set(members) <= genes
        assert {g for g, m in truth["gene_module"].items() if m == name} == set(members)


def test_bad_settings_raise_mai_error(tmp_path):
    for kwargs in ({"n_train": 0}, {"n_test": -1}, {"n_genes": 5}, {"seed": -2}, {"n_train": 2.5},
                   {"workers": 0}):
        with pytest.raises(MaiError):
            generate_demo(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_never_replaces_foreign_folders(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(MaiError, match="refusing"):
        generate_demo(precious, n_train=2, n_test=1, n_genes=20)
    assert (precious / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(MaiError, match="is a file"):
        generate_demo(tmp_path / "file", n_train=2, n_test=1, n_genes=20)
    # An earlier demo dataset is replaced.
    first = generate_demo(tmp_path / "d", n_train=2, n_test=1, n_genes=20, seed=1)
    generate_demo(first, n_train=3, n_test=1, n_genes=20, seed=1)
    assert len(pd.read_csv(first / "train.csv")) == 3


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["demo", "--out", str(out), "--n-train", "0"]) == 2
    assert "--n-train" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--n-genes", "3"]) == 2
    assert "n-genes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(out), "--n-test", "many"])
    assert exc.value.code == 2
    assert not out.exists()
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--n-train", "3", "--n-test", "1", "--n-genes", "20",
                 "--quiet"]) == 0
    assert "3 train + 1 test tiles" in capsys.readouterr().out
    stamp = (out / "train.csv").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--if-missing"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "train.csv").stat().st_mtime_ns == stamp
