"""Page speed in a real browser: first render, revisit and one interaction per page of the app.

    python bench/pages.py [--data DEMO_DIR] [--workspace DIR] [--repeats 2] [--no-run] [--pages Home,Results]

Starts ``streamlit run app.py`` on a free localhost port with the demo dataset (generated if ``--data`` is
not given: 120 train / 40 test tiles, 60 genes) and a workspace holding one tiny trained run (unless
``--no-run``), opens it in headless Chromium (/usr/bin/chromium, Playwright) and measures, for each page:

- first render: the first visit after the server started (cold caches: everything computed once), typed into
  a new browser context (its HTTP cache empty: Streamlit's and Plotly's JavaScript loaded and compiled too);
- first visit: what a user meets the first time they open each page in their session: on a second fresh
  server, the app opened on Home, then every page's sidebar link clicked in turn (each page's first run on
  that server, its caches cold; the browser keeps what it has loaded, as it does for a user), ``--think`` (3)
  seconds after the previous page settled: the server imports the other pages' libraries in such pauses
  (``mai_core.app.frame.warm_imports``), never while a page runs or is being drawn;
- revisit: the page opened again in a new tab and reloaded there ``--repeats`` times (warm caches), median;
- sidebar switch: from Home, a click on the page's sidebar link until the page has settled;
- interaction: the first slider on the page moved one step with the keyboard, until the rerun settled.

"Settled" means the script is not running, no element is a loading skeleton or spinner, for 0.6 s in a row;
the times stop at the first of those checks. Work a page hands to the background with its own progress bar
(Gene clusters' first UMAP map, shown meanwhile on principal components) is not waited for. The baseline, measured in the same run and the same browser,
is a bare Streamlit page (a title and a line of text) served by a second server: the cost of Streamlit
itself. Every figure is also printed as a ratio to it, since the machine's load changes from run to run.
Goals: first render ≤ 3 s, reload ≤ 2 s, slider move ≤ 0.5 s.

Where the time goes: the server runs with ``MAI_APP_TIMING=1`` and says how long each run of a page's script
took; the "server" figures are those runs' total during a first render or during one revisit (the median
run). The rest of a figure is the browser's: loading and compiling Streamlit's and Plotly's JavaScript (every
first render and the first revisit start in a new browser context, whose cache is empty), drawing, and the
round trips, all on the same cores as the server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mai_core.procs import CHROMIUM, app_argv, chromium_options, free_port, serving, streamlit_argv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAGES = [  # (url path, sidebar link text)
    ("", "Home"),
    ("Gene_Correlation", "Gene correlation"),
    ("Gene_Clusters", "Gene clusters"),
    ("Augmentation_Lab", "Augmentation lab"),
    ("Results", "Results"),
    ("Grad_CAM", "Grad-CAM"),
]
STATE_JS = """() => [document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state'),
    document.querySelectorAll('[data-testid=stSkeleton]').length,
    document.querySelectorAll('[data-testid=stSpinner]').length,
    document.querySelectorAll('[data-testid=stMain] [data-testid=stElementContainer]').length]"""


def settled_at(page, t0: float, rerun: bool, timeout: float = 300, ran=None) -> float:
    """Seconds from ``t0`` until the page settled (see the module docstring). ``ran``: a callable saying whether
    the server has finished a run of the page's script since ``t0``; calm moments before that do not count (a
    fresh page can look calm before its script has started)."""
    if rerun:  # an action was taken: give its rerun up to 3 s to start
        start = time.time() + 3
        while time.time() < start and page.evaluate(STATE_JS)[0] != "running":
            time.sleep(0.02)
    end = time.time() + timeout
    first_calm, calm = None, 0
    while time.time() < end:
        state, skeletons, spinners, elements = page.evaluate(STATE_JS)
        if state != "running" and not skeletons and not spinners and elements and (ran is None or ran()):
            first_calm = first_calm or time.time()
            calm += 1
            if calm >= 6:
                return first_calm - t0
        else:
            first_calm, calm = None, 0
        time.sleep(0.1)
    raise RuntimeError(f"page {page.url} did not settle in {timeout:.0f} s")


class ServerClock:
    """The script run times the server reported since the last call (``[page-timing]`` lines of its log)."""

    def __init__(self, log_path: Path):
        self.log_path, self.offset = Path(log_path), 0

    def ran(self) -> bool:
        """Whether the server has reported a finished script run that :meth:`runs` has not handed out yet."""
        from mai_core.app.frame import TIMING_MARK

        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.offset)
                return TIMING_MARK.encode() in fh.read()
        except OSError:
            return False

    def runs(self) -> list[float]:
        from mai_core.app.frame import TIMING_MARK

        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.offset)
                text = fh.read().decode("utf-8", errors="replace")
                self.offset = fh.tell()
        except OSError:
            return []
        return [float(line.rsplit(" ran in ", 1)[1].split()[0]) for line in text.splitlines()
                if TIMING_MARK in line and " ran in " in line]


def load(browser, url: str, repeats: int = 1, clock=None) -> float:
    """Open ``url`` in a new browser context (empty HTTP cache); later repeats reload it there: median."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    times = []
    try:
        for _ in range(repeats):
            t0 = time.time()
            page.goto(url, wait_until="commit")
            times.append(settled_at(page, t0, rerun=False, ran=clock.ran if clock is not None and not times else None))
        return statistics.median(times)
    finally:
        ctx.close()


def start_server(script: str, env: dict, log_path: Path):
    """The app (``script`` "app.py") as the README starts it, ``python -m mai_core.app``, or ``streamlit run
    SCRIPT`` for any other script (the bare baseline), with the shipped settings on a free port (``MAI_BENCH_LAUNCH
    =streamlit``: the app by ``streamlit run app.py`` too): a context giving (process, url)."""
    port = free_port()
    plain = script != "app.py" or os.environ.get("MAI_BENCH_LAUNCH") == "streamlit"
    return serving(streamlit_argv(script, port) if plain else app_argv(port), port, REPO, env, log_path)


def switch(browser, base: str, link: str) -> float:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    try:
        page.goto(base, wait_until="commit")
        settled_at(page, time.time(), rerun=False)
        target = page.get_by_test_id("stSidebarNav").get_by_text(link, exact=True)
        t0 = time.time()
        target.click()
        return settled_at(page, t0, rerun=True)
    finally:
        ctx.close()


def tour(browser, base: str, clock: ServerClock, think: float = 0.0) -> dict[str, tuple[float, float]]:
    """A user's first visit to every page: the app opened on Home, then each page's sidebar link clicked in
    turn, ``think`` seconds after the previous page settled, on a fresh server (every page's first run, its caches
    cold). {link: (seconds, server seconds)}."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    out = {}
    try:
        t0 = time.time()
        page.goto(base, wait_until="commit")
        out["Home"] = (settled_at(page, t0, rerun=False, ran=clock.ran), sum(clock.runs()))
        for _path, link in PAGES[1:]:
            time.sleep(think)
            clock.runs()  # runs in the pause (a page's own refreshes) are not this visit's
            target = page.get_by_test_id("stSidebarNav").get_by_text(link, exact=True)
            t0 = time.time()
            target.click()
            out[link] = (settled_at(page, t0, rerun=True, ran=clock.ran), sum(clock.runs()))
            print(f"  first visit from the sidebar {link}: {out[link][0]:.2f} s (server {out[link][1]:.2f} s)",
                  flush=True)
        return out
    finally:
        ctx.close()


def interact(browser, url: str) -> tuple[float | None, str]:
    """Move the page's first slider one step; (seconds, slider label), or (None, why not)."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    try:
        page.goto(url, wait_until="commit")
        settled_at(page, time.time(), rerun=False)
        sliders = page.get_by_test_id("stMain").get_by_test_id("stSlider")
        for i in range(sliders.count()):
            thumb = sliders.nth(i).locator("input[type=range]")
            if thumb.count() == 0 or thumb.first.is_disabled():
                continue
            thumb = thumb.first
            label = (thumb.get_attribute("aria-label") or "slider").strip()
            at_max = thumb.input_value() == thumb.get_attribute("max")
            thumb.focus()
            t0 = time.time()
            thumb.press("ArrowLeft" if at_max else "ArrowRight")
            return settled_at(page, t0, rerun=True), label
        return None, "no slider"
    finally:
        ctx.close()


def prepare(args, tmp: Path) -> tuple[Path, Path]:
    from mai_core.cli import main as cli
    from mai_core.data.demo import generate_demo

    data = Path(args.data) if args.data else tmp / "demo"
    if not args.data:
        generate_demo(data, n_train=120, n_test=40, n_genes=60, seed=0)
    ws = Path(args.workspace) if args.workspace else tmp / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    if not args.no_run and not (ws / "runs" / "tiny").exists():
        os.environ["MAI_WORKSPACE"] = str(ws)
        t0 = time.time()
        code = cli(["train", "--data", str(data), "--out", str(ws / "runs" / "tiny"), "--backbone",
                    "test_efficientnet", "--weights", "random", "--image-size", "64", "--batch-size", "16",
                    "--workers", "1", "--epochs", "1", "--tta", "off", "--quiet", "--seed", "5"])
        if code != 0:
            raise SystemExit("training the tiny run failed")
        print(f"tiny run trained in {time.time() - t0:.0f} s")
    return data, ws


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="dataset folder (default: a generated demo dataset)")
    ap.add_argument("--workspace", help="workspace folder (default: a temporary one)")
    ap.add_argument("--repeats", type=int, default=2, help="revisits per page (median reported)")
    ap.add_argument("--no-run", action="store_true", help="no trained run (Results and Grad-CAM stay empty)")
    ap.add_argument("--think", type=float, default=3.0,
                    help="first visits: seconds a user looks at a page before clicking the next one (default 3; "
                         "0: each click as soon as the previous page settled)")
    ap.add_argument("--pages", help="comma-separated sidebar names to measure (default: all), e.g. Home,Results")
    args = ap.parse_args()
    if args.pages:
        wanted = {w.strip().lower() for w in args.pages.split(",") if w.strip()}
        unknown = wanted - {link.lower() for _p, link in PAGES}
        if unknown:
            print(f"unknown page(s) {sorted(unknown)}; choose from {', '.join(link for _p, link in PAGES)}",
                  file=sys.stderr)
            return 2
        PAGES[:] = [(p, link) for p, link in PAGES if link.lower() in wanted or link == "Home"]
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} not found: install Debian's chromium package", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="mai_bench_pages_") as tmp_s:
        tmp = Path(tmp_s)
        data, ws = prepare(args, tmp)
        env = dict(os.environ, MAI_DATA=str(data), MAI_WORKSPACE=str(ws), HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(REPO), MAI_APP_TIMING="1")
        bare = tmp / "bare.py"
        bare.write_text('import streamlit as st\n\nst.title("Baseline")\nst.write("A bare Streamlit page.")\n')
        rows, baseline = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(**chromium_options())
            try:
                with start_server(str(bare), env, tmp / "server.log") as (_proc, base):
                    load(browser, base)  # warm the browser itself
                    baseline.append(load(browser, base, args.repeats))
                with start_server("app.py", env, tmp / "app.log") as (_proc, base):
                    clock = ServerClock(tmp / "app.log")
                    clock.runs()
                    for path, link in PAGES:  # first visits, in sidebar order, on a fresh server
                        url = f"{base}/{path}"
                        first = load(browser, url, clock=clock)
                        server_first = sum(clock.runs())
                        print(f"  first render {link}: {first:.2f} s (server {server_first:.2f} s)", flush=True)
                        rows.append({"page": link, "url": url, "first": first, "server_first": server_first})
                    for row in rows:
                        row["revisit"] = load(browser, row["url"], args.repeats + 1)  # first of them is a new tab
                        runs = clock.runs()
                        row["server_revisit"] = statistics.median(runs) if runs else None
                        row["switch"] = switch(browser, base, row["page"]) if row["page"] != "Home" else None
                        clock.runs()
                        row["interact"], row["slider"] = interact(browser, row["url"])
                        runs = clock.runs()  # the page's load, then the slider's rerun
                        row["server_slider"] = runs[-1] if row["interact"] is not None and len(runs) > 1 else None
                        print(f"  {row['page']}: revisit {row['revisit']:.2f} s", flush=True)
                with start_server("app.py", env, tmp / "app2.log") as (_proc, base):
                    clock = ServerClock(tmp / "app2.log")
                    clock.runs()
                    visits = tour(browser, base, clock, args.think)
                    for row in rows:
                        row["tour"], row["server_tour"] = visits.get(row["page"], (None, None))
                with start_server(str(bare), env, tmp / "server.log") as (_proc, base):
                    baseline.append(load(browser, base, args.repeats))
            finally:
                browser.close()

    baseline = statistics.mean(baseline)  # measured before and after the pages

    def cell(v):
        return "—" if v is None else f"{v:5.2f} s ({v / baseline:4.1f}×)"

    print(f"\nPage times in headless Chromium, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; ratio to the baseline = a bare Streamlit page, {baseline:.2f} s")
    print(f"{'page':<18} {'first render':>18} {'(server)':>9} {'first visit':>18} {'(server)':>9} "
          f"{'revisit':>18} {'(server)':>9} {'sidebar switch':>18} {'slider step':>18} {'(server)':>9}  slider")

    def secs(v):
        return "—" if v is None else f"{v:.2f} s"

    for r in rows:
        print(f"{r['page']:<18} {cell(r['first']):>18} {secs(r['server_first']):>9} {cell(r['tour']):>18} "
              f"{secs(r['server_tour']):>9} {cell(r['revisit']):>18} "
              f"{secs(r['server_revisit']):>9} {cell(r['switch']):>18} {cell(r['interact']):>18} "
              f"{secs(r['server_slider']):>9}  {r['slider']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
