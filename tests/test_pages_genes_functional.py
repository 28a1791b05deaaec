"""Functional (term) clustering and biclustering on the Gene Clusters page; hub genes on the network view."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def page_env(demo_dir, workspace, monkeypatch):
    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    monkeypatch.chdir(REPO)
    from mai_core import genes

    # the map is not what these tests look at: skip UMAP (and its numba compilation)
    monkeypatch.setattr(genes, "cached_umap", lambda *a, **kw: None)
    monkeypatch.setattr(genes, "umap_embedding", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("off")))
    return workspace


def _app(name: str):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(REPO / "pages" / name), default_timeout=120)


def _group_table(at):
    for df in at.dataframe:
        if list(df.value.columns[:2]) == ["group", "genes"]:
            return df.value
    raise AssertionError("no group table on the page")


def test_functional_and_bicluster_methods_group_the_demo_genes(page_env):
    at = _app("2_Gene_Clusters.py")
    at.run()
    at.radio(key="method").set_value("functional (terms)").run()
    assert not at.exception, at.exception
    table = _group_table(at)
    assert table["genes"].sum() == 60
    assert any(g.startswith("F") for g in table["group"])
    assert any(h.startswith("Annotation terms: MDS map") for h in (s.value for s in at.subheader))

    at.radio(key="method").set_value("bicluster").run()
    assert not at.exception, at.exception
    at.slider(key="k").set_value(3).run()
    assert not at.exception, at.exception
    table = _group_table(at)
    assert table["genes"].sum() == 60 and {"B1", "B2", "B3"} <= set(table["group"])
    assert at.text_input(key="grouping_name").value.startswith("bicluster")


def test_network_view_lists_hub_genes_of_its_modules(page_env, demo_dir):
    from mai_core import genes as G
    from mai_core.data.dataset import load_dataset

    at = _app("1_Gene_Correlation.py")
    at.run()
    assert not at.exception, at.exception
    assert any(s.value.startswith("Hub genes of the co-expression modules") for s in at.subheader)
    hubs = next(df.value for df in at.dataframe if "k_within" in df.value.columns)
    assert len(hubs) and (hubs["k_scaled"] <= 1.0 + 1e-9).all()
    # the hubs are the most connected genes of their module
    ds = load_dataset(demo_dir)
    first = hubs["module"].iloc[0]
    beta = int(next(s.value for s in at.subheader if s.value.startswith("Hub genes")).split("β = ")[1].rstrip(")"))
    full = G.hub_genes(ds.X, ds.genes, G.tom_modules(ds.X, ds.genes, beta=beta, min_size=6), beta=beta)
    top = full[full["module"] == first].sort_values("k_within", ascending=False)["gene"].head(5)
    assert set(hubs[hubs["module"] == first]["gene"]) == set(top)
