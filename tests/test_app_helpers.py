"""Helpers behind the pages, tested without a running page: units, slider ranges, label placement,
colours, CAM scaling, heatmap box selection, grouping names, background tasks."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest


# ---------------------------------------------------------------------------------------------- units
def test_expression_unit_sources(tmp_path, demo_dir):
    from mai_core.data import expression_unit

    assert expression_unit(demo_dir).source == "demo"
    assert "log1p" in expression_unit(demo_dir).label
    assert expression_unit(tmp_path).source == "undeclared"
    assert "not declared" in expression_unit(tmp_path).axis()
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "manifest.json").write_text(json.dumps({"norm": "cp10k", "sections": {}}))
    assert expression_unit(tmp_path).label == "counts per 10k"
    (tmp_path / "units.json").write_text(json.dumps({"expression": "log2(TPM + 1)"}))
    u = expression_unit(tmp_path)
    assert (u.label, u.source) == ("log2(TPM + 1)", "units.json")
    assert u.axis("mean") == "mean, log2(TPM + 1)"
    (tmp_path / "units.json").write_text("not json")
    assert expression_unit(tmp_path).label == "counts per 10k"  # unreadable declaration: next source


def test_split_truth_reads_test_truth_csv(demo_dir):
    import pandas as pd

    from mai_core.data import load_dataset, split_truth

    ds = load_dataset(demo_dir)
    test = split_truth(ds, "test")
    expected = pd.read_csv(demo_dir / "test_truth.csv", dtype={"ID": str}).set_index("ID")
    assert list(test.index) == ds.test_ids and list(test.columns) == ds.genes
    assert np.allclose(test.to_numpy(), expected.loc[ds.test_ids, ds.genes].to_numpy(), atol=1e-6)
    assert np.allclose(split_truth(ds, "train").to_numpy(), ds.X)


def test_split_truth_none_without_truth(demo_dir, tmp_path):
    import shutil

    from mai_core.data import load_dataset, split_truth

    copy = tmp_path / "d"
    shutil.copytree(demo_dir, copy)
    (copy / "test_truth.csv").unlink()
    assert split_truth(load_dataset(copy), "test") is None


# ---------------------------------------------------------------------------------------------- sliders
@pytest.mark.parametrize("largest", [0.8734, 0.03, 1.0, 12.7, 0.00123, 0.5])
def test_slider_range_reaches_the_largest_value(largest):
    from mai_core.app.widgets import slider_range

    top, step, decimals = slider_range(largest)
    assert top >= largest
    n = round(top / step)
    assert abs(n * step - top) < 1e-9  # top is a multiple of the step: the slider can stand on it
    assert n <= 400 and top - largest <= step + 1e-12
    assert round(top, decimals) == top


# ---------------------------------------------------------------------------------------------- labels
def _boxes(x, y, labels, pos, w=700.0, h=420.0, char=7.0, line=14.0):
    """Label boxes in the same pixel frame label_positions uses."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx = (x - x.min()) / (x.max() - x.min()) * w * 0.9
    sy = (y - y.min()) / (y.max() - y.min()) * h * 0.9
    out = []
    for i, p in enumerate(pos):
        wd = len(labels[i]) * char
        dx = {"center": (-wd / 2, wd / 2), "right": (2, 2 + wd), "left": (-2 - wd, -2)}[p.split()[-1]]
        dy = {"top": (2, 2 + line), "bottom": (-2 - line, -2), "middle": (-line / 2, line / 2)}[p.split()[0]]
        out.append((sx[i] + dx[0], sx[i] + dx[1], sy[i] + dy[0], sy[i] + dy[1]))
    return out


def test_label_positions_separate_close_labels():
    from mai_core.app.plots import label_positions

    # three augmentations with nearly the same scores, as Identity / flips / rotations score
    x = [0.0, 0.001, 0.002, 0.30, 0.31, 0.9]
    y = [0.0, 0.0005, 0.001, 0.20, 0.205, 0.7]
    labels = ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "HEDJitter", "ColorJitter", "Mixup"]
    pos = label_positions(x, y, labels)
    boxes = _boxes(x, y, labels, pos)
    naive = _boxes(x, y, labels, ["top center"] * len(x))

    def overlaps(bs):
        return sum(1 for i in range(len(bs)) for j in range(i + 1, len(bs))
                   if min(bs[i][1], bs[j][1]) > max(bs[i][0], bs[j][0])
                   and min(bs[i][3], bs[j][3]) > max(bs[i][2], bs[j][2]))

    assert overlaps(naive) >= 2
    assert overlaps(boxes) < overlaps(naive)
    assert len(set(pos[:3])) == 3  # the three stacked points each take another side


def test_distinct_and_ordered_colours():
    from mai_core.app.plots import BACKGROUND, distinct_colours, group_colours, ordered_colours

    many = distinct_colours(60)
    assert len(set(many)) == 60
    cols = group_colours([str(i) for i in range(15)] + ["unassigned"])
    assert cols["unassigned"] == BACKGROUND and len(set(cols.values())) == 16
    seq = ordered_colours(4)
    lum = [0.299 * int(c[1:3], 16) + 0.587 * int(c[3:5], 16) + 0.114 * int(c[5:7], 16) for c in seq]
    assert lum == sorted(lum)  # light grows with the order of the categories


# ---------------------------------------------------------------------------------------------- Grad-CAM
def test_shared_scale_keeps_relative_strength():
    from mai_core.explain import shared_scale

    cams = np.ones((1, 3, 4, 4), np.float32)
    peaks = np.array([[0.5, 2.0, 0.0]], np.float32)
    out = shared_scale(cams, peaks)
    assert np.allclose(out[0, 0], 0.25) and np.allclose(out[0, 1], 1.0) and np.allclose(out[0, 2], 0.0)
    with pytest.raises(Exception):
        shared_scale(cams, peaks[:, :2])


def test_weighted_overlay_leaves_low_values_untouched():
    from mai_core.explain import overlay

    img = np.full((8, 8, 3), 200, np.uint8)
    cam = np.zeros((8, 8), np.float32)
    cam[:4] = 1.0
    out = overlay(img, cam, 0.8, "inferno", weighted=True)
    assert (out[4:] == 200).all()  # zero map: the tissue shows as it is
    assert not (out[:4] == 200).all()
    flat = overlay(img, cam, 0.8, "jet")
    assert not (flat[4:] == 200).all()  # the plain blend tints everything


# ---------------------------------------------------------------------------------------------- genes
def test_heatmap_box_covers_blocks(demo_dir):
    from mai_core import genes as G
    from mai_core.data import load_dataset

    ds = load_dataset(demo_dir)
    ov = G.correlation_overview(ds.X, ds.genes, max_cells=20)
    n = len(ov.block_labels)
    assert ov.blocks_in_box([2.6, 4.4], [2.6, 4.4]) == [3, 4]
    assert ov.blocks_in_box([0.1, 0.2], [7.8, 8.3]) == [0, 8]  # off-diagonal box: its columns and rows
    assert ov.blocks_in_box([-3, n + 5], [0, 0]) == list(range(n))
    genes = ov.genes_in_box([2.6, 4.4], [2.6, 4.4])
    assert genes == ov.block_genes(3) + ov.block_genes(4)


def test_suggested_grouping_names(demo_dir):
    from mai_core import genes as G
    from mai_core.data import load_dataset

    ds = load_dataset(demo_dir)
    assert G.suggested_grouping_name(G.kmeans_genes(ds.X, ds.genes, k=3)) == "kmeans_k3"
    assert G.suggested_grouping_name(G.kmeans_genes(ds.X, ds.genes, k=2, seed=4)) == "kmeans_k2_seed4"
    assert G.suggested_grouping_name(G.prefix_groups(ds.genes, min_size=3)) == "prefix_min3"
    sets = G.parse_gmt(demo_dir / "modules.gmt")
    gs = G.geneset_groups(ds.genes, sets, min_size=2)
    assert G.suggested_grouping_name(gs, "modules.gmt") == "geneset_modules_min2"
    assert G.suggested_grouping_name(gs, "h.all.v7.0.symbols.gmt") == "geneset_h_all_v7_0_symbols_min2"


# ---------------------------------------------------------------------------------------------- tasks
def test_background_task_progress_result_and_cancel():
    from mai_core.app import tasks

    gate = threading.Event()

    def work(n, report):
        for i in range(n):
            gate.wait(5)
            report(i + 1, n, what=f"step {i + 1}")
        return "done"

    t = tasks.start_task("t-ok", "Counting", work, 3, unit="steps")
    assert t.running and tasks.start_task("t-ok", "Counting", work, 3) is t  # same key: the same task
    gate.set()
    for _ in range(100):
        if not t.running:
            break
        time.sleep(0.05)
    assert t.ok and t.result == "done" and t.done == 3 and "3/3 steps" in t.text()

    stop = threading.Event()

    def slow(report):
        for i in range(1000):
            report(i, 1000)
            time.sleep(0.01)
        stop.set()

    c = tasks.start_task("t-cancel", "Slow", slow)
    time.sleep(0.1)
    c.cancel()
    for _ in range(100):
        if not c.running:
            break
        time.sleep(0.05)
    assert c.cancelled and not c.ok and not stop.is_set() and c.done < 1000
    again = tasks.start_task("t-cancel", "Slow", lambda report: 1)  # a cancelled task starts again
    assert again is not c
    tasks.forget_task("t-ok")
    tasks.forget_task("t-cancel")
    assert tasks.get_task("t-ok") is None


def test_background_task_reports_errors_as_words():
    from mai_core.app import tasks
    from mai_core.errors import MaiError

    def bad(report):
        raise MaiError("the CSV has no path column")

    t = tasks.start_task("t-err", "Predicting", bad)
    for _ in range(100):
        if not t.running:
            break
        time.sleep(0.05)
    assert t.error == "the CSV has no path column" and t.error_obj is not None and not t.ok
    tasks.forget_task("t-err")


def test_scatters_use_svg_until_they_are_large():
    from mai_core.app.plots import WEBGL_FROM, scatter_mode

    assert scatter_mode(60) == "svg" and scatter_mode(WEBGL_FROM) == "svg"
    assert scatter_mode(WEBGL_FROM + 1) == "webgl"


def test_an_error_inside_a_fragment_gets_the_pages_handling():
    """A fragment reruns on its own: its errors still become our messages, never Streamlit's or a traceback."""
    from streamlit.testing.v1 import AppTest

    script = '''
import streamlit as st
from mai_core.app.guard import guarded
from mai_core.errors import MaiError, Problem

@st.fragment
@guarded
def ours():
    raise MaiError("the grouping cannot be used", [Problem("grouping", "empty", "save it again")])

@st.fragment
@guarded
def unexpected():
    raise RuntimeError("secret contents of /etc/shadow")

ours()
unexpected()
st.write("the rest of the page")
'''
    at = AppTest.from_string(script, default_timeout=60).run()
    assert not at.exception, [e.message for e in at.exception]
    errors = [e.value for e in at.error]
    assert "the grouping cannot be used" in errors
    from mai_core.app.guard import UNEXPECTED_ERROR

    assert UNEXPECTED_ERROR in errors
    assert not any("secret" in e for e in errors)
    assert any("the rest of the page" in m.value for m in at.markdown)


def test_background_imports_wait_until_no_page_has_run_for_a_while(monkeypatch):
    """The server's background imports start only once no page script is running and none has ended for
    ``quiet_s`` seconds: a page being drawn in the browser never shares the CPU with them."""
    import sys
    import threading
    import time

    from mai_core.app import frame

    name = "mai_core_test_warm_probe_module"
    monkeypatch.setattr(frame, "_WARM", {})
    monkeypatch.setattr(frame, "_ACTIVITY", {"running": 0, "last_end": 0.0})
    monkeypatch.setenv("MAI_APP_WARM", "1")
    imported = threading.Event()

    class Finder:  # a module that records when it is imported
        def find_spec(self, fullname, path=None, target=None):
            if fullname != name:
                return None
            import importlib.util

            class Loader:
                def create_module(self, spec):
                    return None

                def exec_module(self, module):
                    imported.set()

            return importlib.util.spec_from_loader(name, Loader())

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, name, raising=False)
    frame._page_started()  # a page is running
    frame.warm_imports((name,), quiet_s=0.5)
    assert not imported.wait(1.0), "imported while a page was running"
    frame._page_ended()
    started = time.monotonic()
    assert imported.wait(5.0), "never imported once the server was idle"
    assert time.monotonic() - started >= 0.45  # the quiet time after the last page ended
    assert frame.server_idle(0.0)


def test_the_app_command_loads_the_first_dataset_into_the_shared_cache_while_the_server_starts(demo_dir, monkeypatch):
    from mai_core.app import frame
    from mai_core.app.serve import preload_dataset

    loads = []
    real = frame.load_dataset
    monkeypatch.setattr(frame, "load_dataset", lambda path: loads.append(path) or real(path))
    monkeypatch.setenv("MAI_DATA", str(demo_dir))
    frame._load_cached.clear()
    try:
        preload_dataset().join(60)
        assert loads == [str(demo_dir.resolve())]
        ds = frame.cached_dataset(str(demo_dir))  # what the first page asks for: already there
        assert loads == [str(demo_dir.resolve())] and ds.n_train > 0
    finally:
        frame._load_cached.clear()
