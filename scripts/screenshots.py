"""Screenshots of the app for the README, taken from the current code in headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out assets] [--pages home,correlation,...]

Sets up what ``bench/pages.py`` uses (the demo dataset and a workspace with one tiny trained run), starts
``streamlit run app.py`` on a free localhost port, opens each page at 1400 × 1000, takes a step a user would
take where a page needs one to show its point (a box on the correlation heatmap, the test split in Grad-CAM)
and writes ``assets/app_<page>.png`` (each page is visited once before, so caches are warm). Needs /usr/bin/chromium and Playwright, like the browser tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_spec = importlib.util.spec_from_file_location("bench_pages", REPO / "bench" / "pages.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _drag_box(page) -> None:
    heat = page.get_by_test_id("stPlotlyChart").first
    area = heat.locator(".nsewdrag").first.bounding_box()
    x0, y0 = area["x"] + area["width"] * 0.05, area["y"] + area["height"] * 0.05
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + area["width"] * 0.2, y0 + area["height"] * 0.2, steps=10)
    page.mouse.up()


def _correlation(page) -> None:
    page.get_by_text("Heatmap selection", exact=True).click()
    bench.settled_at(page, time.time(), rerun=True)
    _drag_box(page)
    bench.settled_at(page, time.time(), rerun=True)
    page.get_by_test_id("stPlotlyChart").first.scroll_into_view_if_needed()


def _gradcam(page) -> None:
    page.get_by_test_id("stRadio").filter(has_text="Split").get_by_text("test", exact=True).click()
    bench.settled_at(page, time.time(), rerun=True)
    page.get_by_test_id("stRadio").filter(has_text="by prefix").first.evaluate(
        "e => e.scrollIntoView({block: 'start'})")  # the gene choice, the colour bar and the overlays


def _clusters(page) -> None:
    """The UMAP map is computed in the background on the first visit: wait for it (at most 3 min)."""
    from playwright.sync_api import expect

    expect(page.get_by_text("Computing the UMAP map")).to_have_count(0, timeout=180_000)
    bench.settled_at(page, time.time(), rerun=False)


SHOTS = {  # name: (url path, what to do before the picture)
    "home": ("", None),
    "correlation": ("Gene_Correlation", _correlation),
    "clusters": ("Gene_Clusters", _clusters),
    "augmentation": ("Augmentation_Lab", None),
    "results": ("Results", None),
    "gradcam": ("Grad_CAM", _gradcam),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "assets"), help="folder for app_<page>.png (default: assets/)")
    ap.add_argument("--pages", default=",".join(SHOTS), help=f"comma-separated, from: {', '.join(SHOTS)}")
    args = ap.parse_args()
    names = [n.strip() for n in args.pages.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHOTS]
    if unknown:
        print(f"unknown page(s): {', '.join(unknown)}; choose from {', '.join(SHOTS)}", file=sys.stderr)
        return 2
    if not bench.CHROMIUM.exists():
        print(f"{bench.CHROMIUM} not found: install Debian's chromium package", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mai_screenshots_") as tmp_s:
        tmp = Path(tmp_s)
        data, ws = bench.prepare(argparse.Namespace(data=None, workspace=None, no_run=False), tmp)
        env = dict(os.environ, MAI_DATA=str(data), MAI_WORKSPACE=str(ws), HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(REPO))
        with sync_playwright() as p, bench.start_server("app.py", env, tmp / "server.log") as (_proc, base):
            browser = p.chromium.launch(**bench.chromium_options())
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                for name in names:  # a first visit of every page fills the caches, as for a user who looked around
                    page.goto(f"{base}/{SHOTS[name][0]}", wait_until="commit")
                    bench.settled_at(page, time.time(), rerun=False)
                for name in names:
                    path, step = SHOTS[name]
                    page.goto(f"{base}/{path}", wait_until="commit")
                    bench.settled_at(page, time.time(), rerun=False)
                    if step is not None:
                        step(page)
                    time.sleep(1.5)  # plots finish their transitions
                    target = out / f"app_{name}.png"
                    tmp_png = target.with_name(f".{target.name}.tmp.png")
                    page.screenshot(path=str(tmp_png), full_page=False)
                    os.replace(tmp_png, target)
                    print(f"wrote {target}")
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
