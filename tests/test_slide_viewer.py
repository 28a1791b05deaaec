"""The slide viewer's science without a browser: a 20,000-spot map within the payload budget, layers, spot values,
the one place slide predictions live (the CLI default is what the viewer lists), and the page's form starting a
prediction as a background job (paths outside the app's folders refused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mai_core.errors import MaiError
from mai_core.spatial import (MAX_PAYLOAD, SlideMap, layer_kinds, list_predictions, load_slide_map, map_figure,
                              map_layer, payload_bytes, spot_clusters, spot_values)

PAGE = Path(__file__).resolve().parents[1] / "pages" / "6_Slide_Viewer.py"


def _slide_map(n_side: int = 142, genes: int = 30, seed: int = 0, measured: bool = True) -> SlideMap:
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    xy = np.c_[gx.ravel(), gy.ravel()].astype(np.float32) * 100 + 200
    n = len(xy)
    X = rng.normal(size=(n, genes)).astype(np.float32)
    names = [f"G{i}" for i in range(genes)]
    pcc = np.linspace(-0.1, 0.8, genes).astype(np.float32)
    pcc[3] = np.nan
    meas = X + rng.normal(size=X.shape).astype(np.float32) if measured else None
    if meas is not None:
        meas[:, 5] = np.nan  # a gene without counts
    labels = np.where(xy[:, 0] < xy[:, 0].mean(), "tumour", "").astype(object)
    progs = pd.DataFrame({"p1": X[:, :5].mean(1), "p2": X[:, 5:9].mean(1)})
    w = h = int(xy.max() + 200)
    thumb = rng.integers(150, 255, (1000, 1000, 3), dtype=np.uint8)
    return SlideMap(path=Path("x.h5ad"), ids=np.array([f"s{i}" for i in range(n)]), xy=xy,
                    genes=names, pcc=pcc, X=X, measured=meas, labels=labels, programmes=progs, thumb=thumb,
                    scale=1000 / w, spot_px=55.0, width=w, height=h, meta={"units": "log1p CPM"})


def test_twenty_thousand_spots_fit_the_payload_budget_side_by_side():
    sm = _slide_map()
    assert sm.n >= 20_000
    layer = map_layer(sm, "gene", "G7")
    fig = map_figure(sm, layer.values, layer.title, layer.unit, measured=layer.measured, outline_labels=True)
    size = payload_bytes(fig)
    assert size < MAX_PAYLOAD, size
    assert len([t for t in fig.data if t.type == "scattergl"]) >= 2  # one WebGL trace per panel
    assert fig.layout.xaxis2.matches == "x" and fig.layout.images[0].source.startswith("data:image/jpeg")
    assert fig.data[0].marker.colorbar.title.text == "log1p CPM"


def test_layers_trust_order_and_spot_values():
    sm = _slide_map(n_side=20)
    assert layer_kinds(sm) == ["gene", "programme", "cluster", "label"]
    ranked = sm.genes_by_trust()
    assert ranked[0] == "G29" and ranked[-1] == "G3"  # highest validation r first, unknown last
    assert map_layer(sm, "gene", "G5").measured is None  # no counts for this gene: no measured panel
    g = map_layer(sm, "gene", "G7")
    assert np.array_equal(g.values, sm.X[:, 7]) and "validation r 0.12" in g.title
    p = map_layer(sm, "programme", "p2")
    assert p.unit == "mean z-score" and np.allclose(p.values, sm.programmes["p2"])
    cl = spot_clusters(sm.X, 4)
    c = map_layer(sm, "cluster", clusters=cl)
    assert c.categorical and len(set(c.values)) == 4
    fig = map_figure(sm, c.values, c.title, categorical=True)
    assert {t.name for t in fig.data} == {f"cluster {k}" for k in range(1, 5)}
    t = spot_values(sm, 11, ["G1", "G5"])
    assert t["predicted"].tolist() == pytest.approx(sm.X[11, [1, 5]].tolist())
    assert np.isnan(t["measured"][1]) and t["measured"][0] == pytest.approx(float(sm.measured[11, 1]))
    for bad in (lambda: map_layer(sm, "gene", "NOPE"), lambda: map_layer(sm, "programme", "zz"),
                lambda: map_layer(sm, "cluster"), lambda: spot_values(sm, 10_000, ["G1"])):
        with pytest.raises(MaiError):
            bad()
    plain = _slide_map(n_side=5, measured=False)
    plain.labels, plain.programmes = None, None
    assert layer_kinds(plain) == ["gene", "cluster"]


@pytest.mark.slow
def test_predict_slide_writes_where_the_viewer_looks_by_default(demo_dir, workspace, tmp_path, monkeypatch):
    """Without --out, predict-slide writes under the workspace's slides/, which the viewer lists."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _slide_data import tile_slide, write_pyramid
    from mai_core.cli import main
    from mai_core.data import load_dataset

    run = workspace / "runs" / "tiny"
    assert main(["train", "--data", str(demo_dir), "--out", str(run), "--backbone", "test_efficientnet", "--weights",
                 "random", "--image-size", "64", "--batch-size", "16", "--workers", "1", "--epochs", "1", "--tta",
                 "off", "--quiet", "--seed", "5"]) == 0
    ds = load_dataset(demo_dir)
    img, centres = tile_slide(ds.images(indices=range(6)), cols=3)
    write_pyramid(tmp_path / "s.tif", img, mpp=0.5, levels=2)
    pd.DataFrame({"id": ds.ids[:6], "px": centres[:, 0], "py": centres[:, 1]}).to_csv(tmp_path / "p.csv", index=False)
    assert main(["predict-slide", "--run", str(run), "--image", str(tmp_path / "s.tif"), "--spots",
                 str(tmp_path / "p.csv"), "--device", "cpu", "--quiet"]) == 0
    found = list_predictions()
    assert len(found) == 1 and found[0].path.parent.parent == workspace / "slides"
    assert found[0].name.startswith("tiny-s-")
    sm = load_slide_map(found[0].path)
    assert sm.n == 6 and sm.spot_patch(0).shape == (224, 224, 3)
    np.testing.assert_array_equal(sm.spot_patch(2), ds.images(indices=[2])[0])
    # the same slide as a background job started from the viewer page's form (same queue as training)
    from streamlit.testing.v1 import AppTest

    from mai_core.runs import jobs
    from mai_core.spatial import is_slide_job

    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    monkeypatch.setenv("MAI_DATA_ROOTS", str(tmp_path))
    at = AppTest.from_file(str(PAGE), default_timeout=180).run()
    assert not at.exception and at.selectbox(key="sv_prediction").value.startswith("tiny-s-")
    submit = next(b for b in at.button if b.label == "Predict in the background")
    at.text_input(key="sv_image").input("/etc/hostname")
    submit.click().run()
    assert "outside the folders this app reads" in " ".join(e.value for e in at.error) and not jobs.list_jobs()
    at.text_input(key="sv_image").input(str(tmp_path / "s.tif"))
    at.text_input(key="sv_spots").input(str(tmp_path / "p.csv"))
    at.selectbox(key="sv_tta").set_value(2)
    at.selectbox(key="sv_device").set_value("cpu")
    next(b for b in at.button if b.label == "Predict in the background").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job_id = at.session_state["sv_follow"]
    info = jobs.job_info(job_id)
    assert is_slide_job(info.command) and info.command[info.command.index("--tta") + 1] == "2"
    done = jobs.wait(job_id, timeout_s=240)
    assert done.state == "finished", (done.state, done.error, jobs.log_tail(done))
    assert done.epoch == done.epochs == 6  # tiles done / total, as the job lists show them
    bg = load_slide_map(workspace / "slides" / job_id / "prediction.h5ad")
    assert bg.meta["tta_views"] == 2 and bg.n == 6
    at.run()
    assert any(o.startswith(job_id) for o in at.selectbox(key="sv_prediction").options)


def test_job_names_never_share_a_folder(tmp_path, monkeypatch):
    """Two predictions of the same slide started within one second get different folders."""
    import time

    from mai_core.spatial import job_name

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")

    first = job_name("runs/tiny", "slides/s.tif", tmp_path)
    (tmp_path / first).mkdir()
    second = job_name("runs/tiny", "slides/s.tif", tmp_path)
    assert second != first and second.startswith("tiny-s-") and not (tmp_path / second).exists()
