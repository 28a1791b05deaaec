"""The Slide viewer in a real browser (headless Chromium via Playwright, `streamlit run app.py`).

A tiny run predicts a pyramidal TIFF made of demo tiles (with pathologist labels), and — when the HER2ST
sections are there — the real C5 section with its counts; the viewer draws each map over the H&E
thumbnail (measured beside predicted for C5), and clicking a spot shows its patch and Grad-CAM maps.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from _slide_data import tile_slide, write_pyramid
from mai_core.cli import main as cli_main
from test_browser import CHROMIUM, server  # noqa: F401  (the app server fixture)

pytestmark = pytest.mark.slow

TRAIN = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "64", "--batch-size", "16",
         "--workers", "1", "--epochs", "1", "--tta", "off", "--quiet", "--seed", "5"]


def _demo_prediction(ws, demo_dir, tmp_path):
    from mai_core.data import load_dataset
    from mai_core.spatial import predict_slide

    run = ws / "runs" / "tiny"
    assert cli_main(["train", "--data", str(demo_dir), "--out", str(run)] + TRAIN) == 0
    ds = load_dataset(demo_dir)
    tiles = ds.images(indices=range(30))
    img, centres = tile_slide(tiles, cols=6)
    write_pyramid(tmp_path / "demo_slide.tif", img, mpp=0.5, levels=3)
    pd.DataFrame({"id": ds.ids[:30], "px": centres[:, 0], "py": centres[:, 1]}).to_csv(tmp_path / "spots.csv",
                                                                                        index=False)
    pd.DataFrame({"id": ds.ids[:12], "label": ["tumour"] * 6 + ["stroma"] * 6}).to_csv(
        tmp_path / "labels.tsv", sep="\t", index=False)
    predict_slide(run, tmp_path / "demo_slide.tif", ws / "slides" / "demo" / "prediction.h5ad",
                  spots=tmp_path / "spots.csv", labels=tmp_path / "labels.tsv", device="cpu", progress=False)
    return ds.ids[:30]


def _her2st_prediction(ws, tmp_path):
    """C5 imported, a tiny run trained on it, the section predicted at its spots with its counts."""
    from conftest import SHARED_DATA
    from mai_core.data import import_her2st
    from mai_core.spatial import predict_slide

    her2st = SHARED_DATA / "her2st"
    if not (her2st / "C5.jpg").exists():
        return False
    import_her2st(her2st, tmp_path / "c5", sections=("C5",), top_genes=12)
    run = ws / "runs" / "c5"
    assert cli_main(["train", "--data", str(tmp_path / "c5"), "--out", str(run)] + TRAIN) == 0
    predict_slide(run, her2st / "C5.jpg", ws / "slides" / "C5" / "prediction.h5ad",
                  spots=her2st / "C5_selection.tsv", counts=her2st / "C5.tsv.gz", device="cpu", progress=False)
    return True


# the screen position of spot `i` of the first map (plotly's own axis conversion)
SPOT_XY = """([i]) => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const fl = gd._fullLayout, tr = gd._fullData.find(t => t.customdata && t.customdata.includes(i));
  const k = tr.customdata.indexOf(i), box = gd.getBoundingClientRect();
  return [box.left + fl.xaxis._offset + fl.xaxis.l2p(tr.x[k]), box.top + fl.yaxis._offset + fl.yaxis.l2p(tr.y[k])];
}"""


def _click_spot(page, i: int) -> None:
    page.wait_for_function("() => { const g = document.querySelector('[data-testid=\"stPlotlyChart\"] "
                           ".js-plotly-plot'); return g && g._fullLayout && g._fullData.length > 0; }",
                           timeout=60_000)
    x, y = page.evaluate(SPOT_XY, [i])
    page.mouse.move(x - 4, y - 4)
    page.mouse.move(x, y)  # plotly picks the point under the pointer on hover, then selects it on click
    page.wait_for_timeout(500)
    page.mouse.click(x, y)


# where the chart's parts landed on screen: colour bars, their titles, panel titles, the toolbar, the second panel
LAYOUT = """() => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const r = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
  const box = gd.getBoundingClientRect(), fl = gd._fullLayout;
  return {bars: [...gd.querySelectorAll('g.colorbar')].map(r),
          units: [...gd.querySelectorAll('g.colorbar .cbtitle')].map(e => e.textContent),
          titles: [...gd.querySelectorAll('g.annotation')].map(r),
          toolbar: r(gd.querySelector('.modebar-container .modebar')),
          panel2: fl.xaxis2 ? box.left + fl.xaxis2._offset : null,
          unselected: gd._fullData.filter(t => t.customdata).map(t => t.unselected.marker.opacity)};
}"""


def _layout(page) -> dict:
    page.get_by_test_id("stPlotlyChart").first.hover()  # the toolbar shows while the pointer is on the chart
    page.wait_for_timeout(300)
    return page.evaluate(LAYOUT)


def _assert_readable(page, unit: str) -> None:
    """Colour bars titled with the short unit; the toolbar covers no panel title; a colour bar (with its title)
    stays out of the next panel."""
    got = _layout(page)
    assert got["units"] and set(got["units"]) == {unit}, got["units"]
    assert got["titles"], "every panel has a title"

    def overlap(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    assert not any(overlap(got["toolbar"], t) for t in got["titles"]), got
    if got["panel2"] is not None:
        assert got["bars"][0][2] <= got["panel2"], got


def _map_is_drawn(page, expect) -> None:
    chart = page.get_by_test_id("stPlotlyChart").first
    expect(chart).to_be_visible(timeout=90_000)
    expect(chart.locator("g.imagelayer image").first).to_be_attached(timeout=30_000)  # the H&E thumbnail
    expect(chart.locator("canvas").first).to_be_attached()  # WebGL spots


def test_slide_viewer_in_real_browser(server, demo_dir, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    ws = server["ws"]
    real = _her2st_prediction(ws, tmp_path)
    ids = _demo_prediction(ws, demo_dir, tmp_path)  # newest: the page opens on it, a prediction without counts
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
            "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server["url"], wait_until="domcontentloaded")
        expect(page.get_by_text("Training patches", exact=True)).to_be_visible(timeout=90_000)
        page.get_by_role("link", name=re.compile("Slide viewer")).first.click()
        expect(page.get_by_role("heading", name=re.compile("Slide viewer"))).to_be_visible(timeout=90_000)
        picker = page.get_by_role("combobox", name="Slide prediction")
        expect(picker).to_have_value(re.compile(r"^demo · "), timeout=30_000)
        _map_is_drawn(page, expect)
        expect(page.get_by_text("30 spots · 60 genes", exact=False)).to_be_visible(timeout=30_000)
        expect(page.get_by_text(re.compile(r"Each dot is one spot \(Ø 112 µm\)")).first).to_be_visible()
        _assert_readable(page, "training-table units")
        heading = page.get_by_role("heading", name=f"Spot {ids[4]}")
        for attempt in range(3):  # a click that lands while the map is still being replaced is lost: click again
            _click_spot(page, 4)
            try:
                expect(heading).to_be_visible(timeout=20_000)
                break
            except AssertionError:
                if attempt == 2:
                    raise
        expect(page.get_by_text("pathologist label: tumour", exact=False)).to_be_visible()
        # the map keeps its colours after the click (Plotly would fade every other spot)
        assert _layout(page)["unselected"] == [pytest.approx(0.8)], "unselected spots keep the map's opacity"
        expect(page.get_by_text("patch the model saw (224 px = 112 µm)")).to_be_visible()
        # units in the value headers; no empty "measured" column when the section has no counts
        headers = page.get_by_test_id("stDataFrame").first.locator("th")
        expect(headers.first).to_be_attached(timeout=30_000)
        assert headers.all_text_contents() == ["gene", "predicted, training-table units", "validation r"]
        cam = page.get_by_test_id("stImageCaption").filter(has_text=re.compile(r"^Grad-CAM "))
        expect(cam.first).to_be_visible(timeout=90_000)
        expect(page.get_by_text(re.compile(r"^model output -?\d+\.\d{3} training-table units"))).to_be_visible()
        cam_image = page.get_by_test_id("stImage").filter(has=cam.first)
        assert cam_image.bounding_box()["width"] <= 400, "one gene's Grad-CAM stays patch-sized"
        if real:  # opened after a prediction without counts: the measured map is still shown beside
            picker.click()
            page.get_by_role("option", name=re.compile(r"^C5 · ")).click()
            expect(picker).to_have_value(re.compile(r"^C5 · "), timeout=30_000)
            _map_is_drawn(page, expect)
            # the measured panel says how far the two maps agree on this section, and so does a line below
            expect(page.get_by_text(re.compile(r"— measured · r -?\d\.\d\d with predicted \(18\d spots\)$")).first
                   ).to_be_visible(timeout=30_000)
            expect(page.get_by_text(re.compile(r"on this section: Pearson r -?\d\.\d\d between predicted and "
                                               r"measured over 18\d spots")).first).to_be_visible()
            expect(page.get_by_text(re.compile(r"18\d spots · 12 genes"))).to_be_visible()
            expect(page.get_by_text(re.compile(r"Each dot is one spot \(Ø 100 µm\); the model read the 154 µm")
                                    ).first).to_be_visible()
            _assert_readable(page, "log1p(counts per 10k)")
        assert page.get_by_text("Traceback").count() == 0
        browser.close()


def test_grid_dots_are_tiles_and_leave_the_tissue_visible():
    """On a grid the dots are as wide as the tile the model read, not the grid step, so the H&E shows between."""
    from test_slide_viewer import _slide_map

    from mai_core.spatial import map_figure, spot_scale_note

    sm = _slide_map(n_side=40)
    sm.spot_px, sm.meta = 100.0, {"positions": "grid", "read_px": 56, "slide_mpp": 2.0}
    grid = map_figure(sm, sm.X[:, 0], "G0").data[0].marker.size
    sm.meta["positions"] = "st"
    spots = map_figure(sm, sm.X[:, 0], "G0").data[0].marker.size
    assert 3 < grid < 30 and grid == pytest.approx(spots * 56 / 100)
    sm.meta["positions"] = "grid"
    assert spot_scale_note(sm).startswith("Each dot is one tile of 112 µm × 112 µm on a grid over the tissue, 200 µm apart")
