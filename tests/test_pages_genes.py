"""Gene Correlation and Gene Clusters pages, driven headless with Streamlit's AppTest."""

from __future__ import annotations

from pathlib import Path

import pytest

from mai_core.genes.grouping import load_grouping

REPO = Path(__file__).resolve().parents[1]
# the first run of the clusters page compiles UMAP's numba kernels
FIRST_RUN_TIMEOUT = 240


@pytest.fixture()
def page_env(demo_dir, workspace, monkeypatch):
    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    monkeypatch.chdir(REPO)
    return workspace


def _app(name: str):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(REPO / "pages" / name), default_timeout=60)


def _group_table(at):
    for df in at.dataframe:
        value = df.value
        if list(value.columns[:2]) == ["group", "genes"]:
            return value
    raise AssertionError("no group table on the page")


def test_gene_correlation_page_renders(page_env):
    at = _app("1_Gene_Correlation.py")
    at.run(timeout=FIRST_RUN_TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error
    titles = [s.value for s in at.subheader]
    assert "Scale-free topology fit (soft threshold)" in titles
    at.radio(key="corr_method").set_value("spearman").run()
    assert not at.exception, at.exception
    at.radio(key="full_source").set_value("Gene list").run()
    assert not at.exception, at.exception
    # network terms come with a plain-language gloss; axes name the expression unit
    assert any("Soft threshold β" in c.value and "signed R²" in c.value for c in at.caption)
    assert any("expression unit: log1p(size-normalised counts)" in c.value for c in at.caption)
    at.radio(key="full_source").set_value("Heatmap selection").run()
    assert not at.exception, at.exception
    assert any("Drag a box over the heatmap" in i.value for i in at.info)


def _wait_for_umap(at, timeout=FIRST_RUN_TIMEOUT):
    """The first map of a setting is computed in the background: wait for it, then redraw the page."""
    import time

    from mai_core.app import tasks

    end = time.time() + timeout
    while time.time() < end:
        running = [t for k, t in list(tasks._TASKS.items()) if k.startswith("umap:") and t.running]
        if not running:
            break
        time.sleep(0.5)
    at.run()
    assert not at.exception, at.exception


def _subheaders(at) -> list[str]:
    return [s.value for s in at.subheader]


def test_gene_clusters_page_k_slider_methods_and_save(page_env, demo_dir, monkeypatch):
    from mai_core import genes

    umap_calls = []
    real_umap = genes.umap_embedding
    monkeypatch.setattr(genes, "umap_embedding", lambda *a, **kw: umap_calls.append(kw) or real_umap(*a, **kw))
    at = _app("2_Gene_Clusters.py")
    at.run(timeout=FIRST_RUN_TIMEOUT)
    assert not at.exception, at.exception
    # no stored map yet: the page answers at once with the PCA map while UMAP runs in the background
    assert any(h.startswith("PCA map of genes") for h in _subheaders(at)), _subheaders(at)
    assert len(_group_table(at)) == 5  # default K
    _wait_for_umap(at)
    assert any(h.startswith("UMAP map of genes") for h in _subheaders(at)), _subheaders(at)
    assert at.metric and "Adjusted Rand" in at.metric[0].label  # demo ships its true modules
    embedded = len(umap_calls)
    assert embedded == 1

    at.slider(key="k").set_value(8).run()
    assert not at.exception, at.exception
    table = _group_table(at)
    assert len(table) == 8 and table["genes"].sum() == 60
    assert len(umap_calls) == embedded  # moving K never recomputes the embedding
    assert [t.label for t in at.tabs] == ["Groups", "Choosing K"]

    at.radio(key="method").set_value("prefix").run()
    assert not at.exception, at.exception
    assert "other" in _group_table(at)["group"].tolist()
    assert [t.label for t in at.tabs] == ["Groups"]  # choosing K only means something for k-means
    assert any("**other** (grey)" in c.value for c in at.caption)

    at.radio(key="method").set_value("gene set").run()
    assert not at.exception, at.exception
    groups = set(_group_table(at)["group"])
    assert {"immune", "stroma_ecm", "unassigned"} <= groups  # the demo's own modules.gmt
    assert any("**unassigned** (grey)" in c.value for c in at.caption)

    at.text_input(key="grouping_name").set_value("demo_sets").run()
    at.button(key="save_grouping").click().run()
    assert not at.exception, at.exception
    saved = page_env / "groupings" / "demo_sets.csv"
    assert saved.is_file()
    gr = load_grouping(saved)
    assert gr.method == "geneset" and len(gr.genes) == 60

    at.text_input(key="grouping_name").set_value("../bad name").run()
    at.button(key="save_grouping").click().run()
    assert not at.exception
    assert any("invalid grouping name" in e.value for e in at.error)


def test_grouping_name_follows_the_method_and_saving_over_a_name_asks(page_env, monkeypatch):
    import numpy as np

    from mai_core import genes

    # the map is not what this test is about: a stored one, so no UMAP runs in the background
    monkeypatch.setattr(genes, "cached_umap", lambda fp, n, **kw: np.zeros((n, 2), np.float32))
    at = _app("2_Gene_Clusters.py")
    at.run(timeout=FIRST_RUN_TIMEOUT)
    assert not at.exception, at.exception
    name = at.text_input(key="grouping_name")
    assert name.value == "kmeans_k5"
    at.slider(key="k").set_value(2).run()
    assert at.text_input(key="grouping_name").value == "kmeans_k2"  # the default follows K
    at.button(key="save_grouping").click().run()
    k2 = page_env / "groupings" / "kmeans_k2.csv"
    assert k2.is_file() and load_grouping(k2).params["k"] == 2
    assert any("kmeans_k2" in s.value for s in at.success)

    at.radio(key="method").set_value("gene set").run()
    assert at.text_input(key="grouping_name").value == "geneset_modules_min1"  # and the method
    at.button(key="save_grouping").click().run()
    assert (page_env / "groupings" / "geneset_modules_min1.csv").is_file()
    assert load_grouping(k2).method == "kmeans"  # the k-means grouping was not overwritten

    # the same name again: the page asks first and leaves the file alone until told to replace it
    at.radio(key="method").set_value("k-means").run()
    at.slider(key="k").set_value(3).run()
    at.text_input(key="grouping_name").set_value("kmeans_k2").run()
    before = k2.read_bytes()
    at.button(key="save_grouping").click().run()
    assert any("already exists" in w.value for w in at.warning)
    assert k2.read_bytes() == before
    at.button(key="save_grouping_keep").click().run()
    assert not any("already exists" in w.value for w in at.warning)
    assert k2.read_bytes() == before
    at.button(key="save_grouping").click().run()
    at.button(key="save_grouping_overwrite").click().run()
    assert not at.exception, at.exception
    assert load_grouping(k2).params["k"] == 3
    # a typed name is the user's: it stays when K moves
    at.slider(key="k").set_value(4).run()
    assert at.text_input(key="grouping_name").value == "kmeans_k2"
