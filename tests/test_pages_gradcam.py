"""The Grad-CAM page, driven through Streamlit's AppTest with a tiny trained run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mai_core import explain
from mai_core.cli import main

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "5_Grad_CAM.py")


@pytest.fixture(scope="module")
def ws_with_run(demo_dir, tmp_path_factory):
    ws = tmp_path_factory.mktemp("gradcam_ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAI_WORKSPACE", str(ws))
        mp.setenv("HF_HUB_OFFLINE", "1")
        args = ["train", "--data", str(demo_dir), "--out", str(ws / "runs" / "tiny"), "--backbone",
                "test_efficientnet", "--weights", "random", "--image-size", "64", "--batch-size", "16",
                "--workers", "1", "--epochs", "1", "--tta", "off", "--quiet", "--seed", "5"]
        assert main(args) == 0
    return ws


@pytest.fixture()
def app_env(demo_dir, ws_with_run, monkeypatch):
    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    monkeypatch.setenv("MAI_WORKSPACE", str(ws_with_run))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return ws_with_run


@pytest.fixture()
def compute_calls(monkeypatch):
    calls = []
    original = explain.CamExplainer._compute

    def counting(self, x, genes, spec):
        calls.append((x.shape[0], len(genes), spec.name))
        return original(self, x, genes, spec)

    monkeypatch.setattr(explain.CamExplainer, "_compute", counting)
    return calls


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_page_without_runs_says_how_to_get_one(demo_dir, workspace, monkeypatch):
    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    at = _page()
    assert any("No trained runs yet" in i.value for i in at.info)


def test_page_shows_overlays_predictions_and_similarity(app_env, compute_calls):
    from mai_core.runs import RunDir

    genes = RunDir(app_env / "runs" / "tiny").read_genes()
    at = _page()
    assert at.selectbox(key="gc_run").value == "tiny"
    assert at.multiselect(key="gc_genes").value == genes[:3]
    lines = [m.value for m in at.markdown if m.value.startswith("predicted **")]
    assert len(lines) == 3 and all(re.search(r"true -?\d+\.\d{3}$", v) for v in lines)  # train image: truth known
    assert "Map similarity between genes" in [h.value for h in at.subheader]
    assert len(at.get("plotly_chart")) == 1
    assert compute_calls  # maps were computed for the chosen image (and the similarity images)
    n_calls = len(compute_calls)

    # a display-only change (opacity) reuses the cached maps
    at.slider(key="gc_alpha").set_value(0.8).run()
    assert not at.exception, at.exception
    assert len(compute_calls) == n_calls

    # a gene family by prefix: one overlay per matching gene
    prefix = explain.gene_family(genes[0])
    family = [g for g in genes if g.upper().startswith(prefix)][:24]
    at.radio(key="gc_mode").set_value("by prefix").run()
    at.text_input(key="gc_prefix").set_value(prefix).run()
    assert not at.exception, at.exception
    assert sum(m.value.startswith("predicted **") for m in at.markdown) == len(family) > 0


def test_page_reports_a_bad_layer_without_crashing(app_env):
    at = _page()
    at.text_input(key="gc_layer").set_value("no.such.layer").run()
    assert not at.exception
    assert any("not found" in e.value for e in at.error)



def test_chosen_genes_survive_other_modes_and_test_split_shows_truth(app_env, demo_dir):
    import pandas as pd

    from mai_core.runs import RunDir

    genes = RunDir(app_env / "runs" / "tiny").read_genes()
    at = _page()
    pick = genes[5:8]
    at.multiselect(key="gc_genes").set_value(pick).run()
    at.radio(key="gc_mode").set_value("by prefix").run()
    at.radio(key="gc_mode").set_value("by cluster").run()
    at.radio(key="gc_mode").set_value("by name").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="gc_genes").value == pick  # back to "by name": the chosen genes are still there

    # the original patch sits beside the overlays; the role of the patch and the unit are said
    captions = [img.caption for e in at.get("image") for img in e.proto.imgs]
    assert "original patch" in captions and captions.index("original patch") < captions.index(pick[0])
    assert any("training patch of this run" in m.value or "validation patch of this run" in m.value
               for m in at.markdown)
    assert any("log1p(size-normalised counts)" in m.value for m in at.markdown)

    # the demo's test split has a known truth (test_truth.csv): shown, not "true —"
    at.radio(key="gc_split").set_value("test").run()
    assert not at.exception, at.exception
    image_id = at.selectbox(key="gc_image").value
    truth = pd.read_csv(demo_dir / "test_truth.csv", dtype={"ID": str}).set_index("ID")
    lines = [m.value for m in at.markdown if m.value.startswith("predicted **")]
    assert len(lines) == 3
    for line, gene in zip(lines, pick):
        assert line.endswith(f"true {truth.at[image_id, gene]:.3f}"), line
    assert any("test patch: never seen" in m.value for m in at.markdown)

    # per-map scaling by default, a shared scale on request; the colour bar says which is in use
    def bar_caption():
        return next(img.caption for e in at.get("image") for img in e.proto.imgs if img.caption.startswith("map value"))

    assert "each map stretched to its own maximum" in bar_caption()
    at.radio(key="gc_scaling").set_value("shared").run()
    assert not at.exception, at.exception
    assert "one scale across the genes shown" in bar_caption()
