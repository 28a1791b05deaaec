"""The pages as a user meets them, in headless Chromium against `streamlit run app.py` on the demo data.

One server for the module (demo dataset, a workspace with one tiny trained run), one browser; each test
opens its page fresh. Each test pins down a behaviour that once went wrong:

- Gene clusters: the grouping name follows the method and its parameters; saving over a name asks first.
- Gene correlation: a box dragged on the heatmap selects its genes for the full-resolution view.
- Results: a running job shows words, never a literal ``None``, and the page refreshes itself when it ends.
- Grad-CAM: the chosen genes survive a switch to another mode and back; the test split shows its truth.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_browser import _fake_job

from mai_core.procs import CHROMIUM, chromium_options, free_port, serving, streamlit_argv

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

SETTLED_JS = """() => [document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state'),
    document.querySelectorAll('[data-testid=stSkeleton]').length,
    document.querySelectorAll('[data-testid=stSpinner]').length,
    document.querySelectorAll('[data-testid=stMain] [data-testid=stElementContainer]').length]"""


@pytest.fixture(scope="module")
def server(demo_dir, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run browser tests")
    pytest.importorskip("playwright.sync_api")
    from mai_core.cli import main

    ws = tmp_path_factory.mktemp("browser_pages") / "workspace"
    ws.mkdir()
    with pytest.MonkeyPatch.context() as mp:  # one tiny run for Results and Grad-CAM
        mp.setenv("MAI_WORKSPACE", str(ws))
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert main(["train", "--data", str(demo_dir), "--out", str(ws / "runs" / "tiny"), "--backbone",
                     "test_efficientnet", "--weights", "random", "--image-size", "64", "--batch-size", "16",
                     "--workers", "1", "--epochs", "1", "--tta", "off", "--quiet", "--seed", "5"]) == 0
    port = free_port()
    env = dict(os.environ, MAI_DATA=str(demo_dir), MAI_WORKSPACE=str(ws), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    with serving(streamlit_argv("app.py", port), port, REPO, env, ws.parent / "server.log") as (proc, url):
        yield {"url": url, "proc": proc, "ws": ws, "data": demo_dir}


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(**chromium_options())
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser):
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    expect.set_options(timeout=30_000)  # a rerun on the shared 2-core machine can take several seconds
    try:
        yield pg
    finally:
        ctx.close()


def settle(page, timeout: float = 90, rerun: bool = True) -> None:
    """Wait until the script has finished, nothing is loading and the page shows elements (3 checks in a row).

    ``rerun``: an action was just taken, so first give its rerun up to 3 s to start (a busy server is slow
    to pick it up; without this wait the page before the action would count as settled).
    """
    if rerun:
        start = time.time() + 3
        while time.time() < start and page.evaluate(SETTLED_JS)[0] != "running":
            time.sleep(0.05)
    end = time.time() + timeout
    calm = 0
    while time.time() < end:
        state, skeletons, spinners, elements = page.evaluate(SETTLED_JS)
        calm = calm + 1 if state != "running" and not skeletons and not spinners and elements else 0
        if calm >= 3:
            return
        time.sleep(0.2)
    raise AssertionError(f"the page did not settle in {timeout:.0f} s")


def open_page(page, server, path: str) -> None:
    page.goto(f"{server['url']}/{path}", wait_until="domcontentloaded")
    settle(page, rerun=False)


def table_rows(frame) -> list[list[str]]:
    """Cell texts of a Streamlit dataframe (from the grid's accessible table), header row first."""
    table = frame.locator("table").first
    table.wait_for(state="attached")
    return [[c.strip() for c in row.locator("th, td").all_inner_texts()] for row in table.locator("tr").all()]


def slider_to(page, label: str, value: int) -> None:
    """Move a Streamlit integer slider to ``value`` with the keyboard (one rerun when the key is released)."""
    thumb = page.get_by_test_id("stSlider").filter(has_text=label).locator("input[type=range]")
    now = int(thumb.input_value())
    thumb.focus()
    key = "ArrowLeft" if value < now else "ArrowRight"
    for _ in range(abs(value - now)):
        thumb.press(key)
    settle(page)
    assert int(thumb.input_value()) == value


# ------------------------------------------------------------------------------------------- Gene clusters
def test_grouping_name_follows_method_and_parameters_and_asks_before_replacing(page, server):
    from playwright.sync_api import expect

    open_page(page, server, "Gene_Clusters")
    main = page.get_by_test_id("stMain")
    name = main.get_by_role("textbox", name="Grouping name")
    expect(name).to_have_value("kmeans_k5")
    slider_to(page, "Clusters (K)", 2)
    expect(name).to_have_value("kmeans_k2")  # follows K instead of keeping the first default
    page.get_by_role("button", name="Save grouping").click()
    expect(page.get_by_text(re.compile(r"Saved kmeans_k2 \(2 groups\)"))).to_be_visible()
    saved = server["ws"] / "groupings" / "kmeans_k2.csv"
    assert saved.is_file() and not (server["ws"] / "groupings" / "kmeans_k5.csv").exists()
    first = saved.read_bytes()

    main.get_by_test_id("stRadio").filter(has_text="k-means").get_by_text("prefix", exact=True).click()
    settle(page)
    expect(name).to_have_value(re.compile(r"^prefix_min\d+$"))  # another method, another name

    # back to k-means with K = 3, saved under the existing name kmeans_k2: the page asks first
    main.get_by_test_id("stRadio").filter(has_text="k-means").get_by_text("k-means", exact=True).click()
    settle(page)
    expect(name).to_have_value("kmeans_k2")
    slider_to(page, "Clusters (K)", 3)
    expect(name).to_have_value("kmeans_k3")
    name.fill("kmeans_k2")
    name.press("Enter")
    settle(page)
    page.get_by_role("button", name="Save grouping").click()
    settle(page)
    expect(page.get_by_text(re.compile("A grouping named kmeans_k2 already exists"))).to_be_visible()
    assert saved.read_bytes() == first  # nothing replaced before the answer
    page.get_by_role("button", name="Keep it").click()
    settle(page)
    expect(page.get_by_text(re.compile("Nothing saved"))).to_be_visible()
    assert saved.read_bytes() == first
    page.get_by_role("button", name="Save grouping").click()
    settle(page)
    page.get_by_role("button", name="Replace").click()
    settle(page)
    expect(page.get_by_text(re.compile(r"Saved kmeans_k2 \(3 groups\)"))).to_be_visible()
    assert saved.read_bytes() != first


# ------------------------------------------------------------------------------------------- Gene correlation
def test_box_dragged_on_the_correlation_heatmap_selects_its_genes(page, server):
    from playwright.sync_api import expect

    open_page(page, server, "Gene_Correlation")
    page.get_by_text("Heatmap selection", exact=True).click()
    settle(page)
    expect(page.get_by_text(re.compile("Drag a box over the heatmap above"))).to_be_visible()
    charts = page.get_by_test_id("stPlotlyChart").count()
    heat = page.get_by_test_id("stPlotlyChart").first
    heat.scroll_into_view_if_needed()
    area = heat.locator(".nsewdrag").first.bounding_box()
    x0, y0 = area["x"] + area["width"] * 0.1, area["y"] + area["height"] * 0.1
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + area["width"] * 0.15, y0 + area["height"] * 0.15, steps=8)
    page.mouse.move(x0 + area["width"] * 0.3, y0 + area["height"] * 0.3, steps=8)
    page.mouse.up()
    caption = page.get_by_text(re.compile(r"^\d+ heatmap block\(s\) selected: \d+ genes\.$"))
    expect(caption).to_be_visible(timeout=60_000)
    settle(page)
    n_genes = int(re.search(r": (\d+) genes", caption.inner_text()).group(1))
    assert 2 <= n_genes < 60  # the demo has 60 genes; the box covers part of them
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(charts + 1)  # the selection at full resolution


# ------------------------------------------------------------------------------------------- Results
def _row(page, name: str) -> dict[str, str]:
    rows = table_rows(page.get_by_test_id("stDataFrame").first)
    header = rows[0]
    for r in rows[1:]:
        cells = dict(zip(header[-len(r):], r))
        if cells.get("name") == name:
            return cells
    return {}


def test_results_shows_a_running_job_in_words_and_refreshes_when_it_ends(page, server):
    from playwright.sync_api import expect

    sleeper = subprocess.Popen(["sleep", "120"])
    run = None
    try:
        run = _fake_job(server["ws"], "busy", sleeper.pid)
        open_page(page, server, "Results")
        row = _row(page, "busy")
        assert row["state"] == "running · epoch 1/4", row
        assert row["best val PCC"] == "—" and row["final val PCC"] == "—" and row["test PCC"] == "—", row
        cells = [c for r in table_rows(page.get_by_test_id("stDataFrame").first) for c in r]
        assert not [c for c in cells if "None" in c or c == "nan"], cells
        expect(page.get_by_text(re.compile("this page updates itself"))).to_be_visible()

        # the run ends (status written, process gone): the page redraws by itself, no reload
        status = json.loads((run / "status.json").read_text())
        status.update(state="finished", epoch=4, best_val_gene_pcc=0.4321, final_val_gene_pcc=0.4567,
                      progress=1.0)
        (run / "status.json").write_text(json.dumps(status))
        sleeper.kill()
        sleeper.wait()
        end = time.time() + 30
        while time.time() < end and _row(page, "busy").get("state") != "finished":
            time.sleep(0.5)
        row = _row(page, "busy")
        assert row["state"] == "finished" and row["best val PCC"] == "0.4321", row
        assert row["final val PCC"] == "0.4567", row
        expect(page.get_by_text(re.compile("this page updates itself"))).to_have_count(0)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        if run is not None:  # the other tests see the tiny run only
            import shutil

            shutil.rmtree(run, ignore_errors=True)
            (server["ws"] / "jobs" / "busy.json").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- Grad-CAM
def _tags(page) -> list[str]:
    return page.get_by_test_id("stMultiSelect").first.locator("[data-tag]").all_inner_texts()


def test_gradcam_keeps_chosen_genes_across_modes_and_shows_test_truth(page, server):
    from playwright.sync_api import expect

    from mai_core.runs import RunDir

    genes = RunDir(server["ws"] / "runs" / "tiny").read_genes()
    open_page(page, server, "Grad_CAM")
    assert _tags(page) == genes[:3]
    page.get_by_role("button", name=f"Remove {genes[0]}").click()
    settle(page)
    assert _tags(page) == genes[1:3]

    genes_radio = page.get_by_test_id("stRadio").filter(has_text="by prefix")
    genes_radio.get_by_text("by prefix", exact=True).click()
    settle(page)
    expect(page.get_by_test_id("stMultiSelect")).to_have_count(0)
    genes_radio.get_by_text("by name", exact=True).click()
    settle(page)
    assert _tags(page) == genes[1:3]  # the user's choice, not the default and not empty

    page.get_by_test_id("stRadio").filter(has_text="Split").get_by_text("test", exact=True).click()
    settle(page)
    expect(page.get_by_text(re.compile(r"test patch: never seen in training"))).to_be_visible()
    lines = page.get_by_text(re.compile(r"^predicted ")).all_inner_texts()
    assert len(lines) == 2, lines
    assert all(re.search(r"true -?\d+\.\d{3}$", v) for v in lines), lines  # the demo's test truth is known
    expect(page.get_by_text(re.compile("this split has no known expression"))).to_have_count(0)
