"""End to end in a real browser: the app as the README starts it (`python -m mai_core.app`) opened in headless
Chromium via Playwright.

Checks the home page shows the dataset, the Results page opens from the navigation, the sidebar
job list refreshes itself while a job runs, and the server sits idle (near-zero CPU) once nothing runs.
A fresh server whose first visit is a page URL shows app.py's grouped navigation, not the pages/ folder.
Set MAI_SCREENSHOT=1 to (re)write assets/app_home.png.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from mai_core.procs import CHROMIUM, app_argv, chromium_options, free_port, serving

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.fixture()
def server(demo_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run browser tests")
    pytest.importorskip("playwright.sync_api")
    ws = tmp_path / "workspace"
    ws.mkdir()
    port = free_port()
    env = dict(os.environ, MAI_DATA=str(demo_dir), MAI_WORKSPACE=str(ws), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), MAI_APP_WARM="1")  # as shipped: background imports after the first page
    with serving(app_argv(port), port, REPO, env, tmp_path / "server.log") as (proc, url):
        yield {"url": url, "proc": proc, "ws": ws, "log": tmp_path / "server.log"}


def _fake_job(ws: Path, name: str, pid: int, state: str = "running") -> Path:
    """A job record + run dir as the queue runner and training would leave them."""
    from mai_core.procs import process_start_time

    run = ws / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("kind: run\nmodel: {backbone: efficientnet_lite0}\noptim: {epochs: 4}\n")
    (run / "status.json").write_text(json.dumps({"state": state, "pid": pid, "epoch": 1, "epochs": 4,
                                                 "progress": 0.3, "eta_s": 90, "started": time.time()}))
    (run / "log.txt").write_text("epoch 1/4\n")
    (ws / "jobs").mkdir(exist_ok=True)
    (ws / "jobs" / f"{name}.json").write_text(json.dumps({
        "id": name, "run_dir": str(run), "device": "cpu", "argv": ["train"], "state": "running",
        "queued_at": time.time(), "pid": pid, "pid_start": process_start_time(pid), "started": time.time()}))
    return run


def test_app_in_real_browser(server, demo_dir):
    from playwright.sync_api import expect, sync_playwright

    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        _fake_job(server["ws"], "busy", sleeper.pid)
        with sync_playwright() as p:
            browser = p.chromium.launch(**chromium_options())
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server["url"], wait_until="domcontentloaded")
            # home page: dataset counts of the demo (120 train / 40 test patches)
            expect(page.get_by_text("Training patches", exact=True)).to_be_visible(timeout=90_000)
            metrics = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
            assert "120" in metrics and "40" in metrics, metrics
            # the sidebar job list shows the running job and refreshes itself
            expect(page.get_by_text("busy", exact=True)).to_be_visible(timeout=30_000)
            stamp = page.get_by_text(re.compile(r"^updated \d\d:\d\d:\d\d$"))
            first = stamp.inner_text(timeout=30_000)
            page.wait_for_function(
                "s => [...document.querySelectorAll('[data-testid=stCaptionContainer]')]"
                ".some(e => /^updated /.test(e.innerText) && e.innerText !== s)", arg=first, timeout=20_000)
            if os.environ.get("MAI_SCREENSHOT") == "1":
                time.sleep(2)
                (REPO / "assets").mkdir(exist_ok=True)
                page.screenshot(path=str(REPO / "assets" / "app_home.png"), full_page=False)
            # the process dies: the job turns failed, the list stops refreshing
            sleeper.kill()
            sleeper.wait()
            expect(page.get_by_text("exited without finishing").first).to_be_visible(timeout=30_000)
            # navigate to the Results page
            page.get_by_role("link", name=re.compile("Results")).first.click()
            expect(page.get_by_role("heading", name=re.compile("Results"))).to_be_visible(timeout=90_000)
            # the run table lists the (now failed) job's run, with the per-run tabs below it
            expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=60_000)
            expect(page.get_by_role("tab", name="Correlation structure")).to_be_visible()
            expect(page.get_by_role("combobox", name="Run")).to_have_value("busy")
            # idle: nothing runs, so the server should do (almost) nothing while the page stays open, once
            # it has imported the pages' libraries in the background (after the first page)
            from mai_core.app.frame import WARM_DONE

            end = time.time() + 180
            while WARM_DONE not in server["log"].read_text(errors="replace") and time.time() < end:
                time.sleep(0.5)
            assert WARM_DONE in server["log"].read_text(errors="replace")
            time.sleep(3)
            pid = server["proc"].pid
            before = _cpu_seconds(pid)
            time.sleep(6)
            used = _cpu_seconds(pid) - before
            assert used < 0.6, f"server used {used:.2f} s CPU in 6 s while idle"
            browser.close()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_page_url_loaded_first_shows_the_grouped_navigation(server):
    """A fresh server whose first visitor opens a page URL directly (a bookmark, a shared link).

    Streamlit routes the first runs by the ``pages/`` folder until the entry point has declared its
    navigation; the visitor must still get app.py's grouped navigation, on that load and after a rerun.
    """
    from playwright.sync_api import expect, sync_playwright

    headers = ["Data", "Genes", "Models", "Slides"]
    folder_links = re.compile(r"^(app|Gene Correlation|Grad CAM|Augmentation Lab)$")
    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium_options())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server['url']}/Results", wait_until="domcontentloaded")
            for _ in range(2):  # the first load, then a rerun of the same page
                expect(page.get_by_role("heading", name=re.compile("Results"))).to_be_visible(timeout=90_000)
                nav = page.get_by_test_id("stSidebarNav")
                expect(nav.get_by_test_id("stNavSectionHeader")).to_have_text(
                    [re.compile(rf"^{h}") for h in headers], timeout=30_000)  # header text + its fold icon
                links = nav.get_by_test_id("stSidebarNavLink").all_inner_texts()
                assert [t for t in links if folder_links.match(t.strip())] == [], links
                assert any("Grad-CAM" in t for t in links), links
                assert page.url.rstrip("/").endswith("/Results"), page.url
                page.keyboard.press("r")  # Streamlit's rerun shortcut
                page.wait_for_timeout(500)
        finally:
            browser.close()
