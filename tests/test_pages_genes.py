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


def test_gene_clusters_page_k_slider_methods_and_save(page_env, demo_dir, monkeypatch):
    from mai_core import genes

    umap_calls = []
    real_umap = genes.umap_embedding
    monkeypatch.setattr(genes, "umap_embedding", lambda *a, **kw: umap_calls.append(kw) or real_umap(*a, **kw))
    at = _app("2_Gene_Clusters.py")
    at.run(timeout=FIRST_RUN_TIMEOUT)
    assert not at.exception, at.exception
    assert len(_group_table(at)) == 5  # default K
    assert at.metric and "Adjusted Rand" in at.metric[0].label  # demo ships its true modules
    embedded = len(umap_calls)

    at.slider(key="k").set_value(8).run()
    assert not at.exception, at.exception
    table = _group_table(at)
    assert len(table) == 8 and table["genes"].sum() == 60
    assert len(umap_calls) == embedded  # moving K never recomputes the embedding

    at.radio(key="method").set_value("prefix").run()
    assert not at.exception, at.exception
    assert "other" in _group_table(at)["group"].tolist()

    at.radio(key="method").set_value("gene set").run()
    assert not at.exception, at.exception
    groups = set(_group_table(at)["group"])
    assert {"immune", "stroma_ecm", "unassigned"} <= groups  # the demo's own modules.gmt

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
