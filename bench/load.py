"""Load: N concurrent browser sessions on the demo app while a small training job runs.

    .venv/bin/python bench/load.py [--sessions 8] [--switches 8] [--duration 300] [--epochs 2] [--think 0]
                                   [--data DIR]

Starts the app as shipped (`python -m mai_core.app`: `streamlit run app.py` from the repository root, `.streamlit/config.toml`:
127.0.0.1 only) on a free port with a fresh workspace, then three phases, all in this one run:

baseline job     : the training job (finetune EfficientNet-Lite0, tiny demo) alone, the app idle;
baseline session : one headless Chromium session switching between pages, no job (the first round of
                   page visits warms the app's caches and is not counted);
load             : the same job again, and N sessions at once, each switching pages until the job has
                   ended and it has made at least --switches switches (or --duration has passed).

``--think S``: each session pauses S seconds (±50 %, seeded) on a page before its next click, as a person
reading the page would; 0 (the default) clicks again at once, a stress test rather than a model of users.

A page switch is timed from the click on the sidebar link to the new page's title being shown and the
app no longer running the page. Errors: a switch that times out, a Streamlit exception box or the app's
generic error notice on the page, a lost connection. Prints p50/p95 per phase and their ratio, the error
count, and whether the job under load finished with the same validation score (same seed) and how much
slower it ran, and where the CPU went during the load phase (app server, browsers, the rest): the browsers
share the server's cores here, as they would not in use. The server's own part is printed too: p50/p95 of the
wall time of every page-script run it logged during the load phase (``MAI_APP_TIMING=1``). Goal: 8 sessions, p95 <= 3 s, zero errors, job unaffected.

Bounded: at most 16 sessions, --duration at most 900 s, every wait has a timeout; the server, the browser
and the job are always stopped at the end. Connects to 127.0.0.1 only. Needs Debian's chromium and
Playwright's Python package (the browser extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mai_core.procs import CHROMIUM, app_argv, chromium_options, free_port, serving

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (sidebar link, page title) visited in turn; the heavy model pages (Augmentation Lab, Grad-CAM) are left out
PAGES = [("Home", "Spatial gene expression from H&E"), ("Gene correlation", "Gene Correlation"),
         ("Gene clusters", "Gene Clusters"), ("Results", "Results & ensembles")]
MAX_SESSIONS, MAX_DURATION, SWITCH_TIMEOUT_S = 16, 900, 60
GOAL = "goal: 8 sessions, p95 page switch <= 3 s, zero errors, the job unaffected"


def start_app(data: Path, workspace: Path, log_path: Path):
    """The app with the shipped config on a free port: a context giving (process, url)."""
    port = free_port()
    env = dict(os.environ, MAI_DATA=str(data), MAI_WORKSPACE=str(workspace), PYTHONPATH=str(REPO),
               MAI_APP_TIMING="1")  # the server logs how long each run of a page's script took
    return serving(app_argv(port), port, REPO, env, log_path, timeout_s=120)


def server_runs(log_path: Path, offset: int) -> tuple[list[float], int]:
    """Wall seconds of the page-script runs the server logged after byte ``offset``, and the new offset."""
    from mai_core.app.frame import TIMING_MARK

    with open(log_path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", errors="replace")
        end = fh.tell()
    return [float(line.rsplit(" ran in ", 1)[1].split()[0]) for line in text.splitlines()
            if TIMING_MARK in line and " ran in " in line], end


def submit_job(data: Path, name: str, epochs: int):
    from mai_core.runs import jobs

    spec = jobs.TrainSpec(data=str(data), name=name, model="finetune", backbone="efficientnet_lite0",
                          epochs=epochs, batch_size=16, device="cpu",
                          extra=["--image-size", "128", "--seed", "0", "--workers", "0"])
    return jobs.submit(spec)


def wait_job(name: str, timeout_s: float):
    from mai_core.runs import jobs

    return jobs.wait(name, timeout_s=timeout_s, poll_s=0.25)


def stop_job_if_active(name: str) -> None:
    from mai_core.runs import jobs

    try:
        if jobs.job_info(name).is_active:
            jobs.stop(name, force=True, wait_s=10)
    except Exception as exc:  # the bench must still stop the server and browser
        print(f"could not stop job {name}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- browsers
async def _settled(page, title: str, timeout_s: float) -> None:
    """The page's title is shown and the app has stopped running the page script."""
    await page.get_by_role("heading", name=title, exact=True).first.wait_for(state="visible",
                                                                            timeout=timeout_s * 1000)
    await page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')", timeout=timeout_s * 1000)


def _notice_text() -> str:
    import streamlit.logger

    streamlit.logger.set_log_level("error")  # imported outside a running app: no cache warnings
    from mai_core.app.guard import UNEXPECTED_ERROR

    return UNEXPECTED_ERROR


async def _page_errors(page) -> list[str]:
    found = []
    if await page.locator('[data-testid="stException"]').count():
        found.append("exception box")
    if await page.get_by_text(_notice_text()[:40]).count():
        found.append("generic error notice")
    if await page.get_by_text("Connection error").count():
        found.append("connection lost")
    return found


async def session(k: int, browser, url: str, min_switches: int, deadline: float, job_ended: asyncio.Event,
                  samples: list, errors: list, skip_first_round: bool, think_s: float = 0.0) -> None:
    from playwright.async_api import Error as PlaywrightError

    pauses = np.random.default_rng(k)

    context = await browser.new_context(viewport={"width": 1300, "height": 900})
    try:
        page = await context.new_page()
        try:
            await page.goto(url, wait_until="domcontentloaded", timeout=SWITCH_TIMEOUT_S * 1000)
            await _settled(page, PAGES[0][1], SWITCH_TIMEOUT_S)
        except PlaywrightError as exc:
            errors.append((k, "open", str(exc).splitlines()[0]))
            return
        i = 0
        while time.time() < deadline and (i < min_switches or not job_ended.is_set()):
            link, title = PAGES[(i + 1) % len(PAGES)]
            t0 = time.perf_counter()
            try:
                await page.get_by_role("link", name=link, exact=True).first.click(timeout=SWITCH_TIMEOUT_S * 1000)
                await _settled(page, title, SWITCH_TIMEOUT_S)
                seconds = time.perf_counter() - t0
                problems = await _page_errors(page)
            except PlaywrightError as exc:
                errors.append((k, link, "timed out" if "Timeout" in str(exc) else str(exc).splitlines()[0]))
                i += 1
                continue
            for what in problems:
                errors.append((k, link, what))
            if not (skip_first_round and i < len(PAGES)):
                samples.append((link, seconds, not job_ended.is_set()))
            i += 1
            if think_s > 0:
                await asyncio.sleep(think_s * pauses.uniform(0.5, 1.5))
    finally:
        await context.close()


async def run_sessions(url: str, n: int, min_switches: int, duration: float, job_name: str | None,
                       skip_first_round: bool, think_s: float = 0.0) -> tuple[list, list]:
    from playwright.async_api import async_playwright

    samples: list = []
    errors: list = []
    job_ended = asyncio.Event()
    ended_at: list[float] = []
    deadline = time.time() + duration

    async def watch_job():
        from mai_core.runs import jobs

        while time.time() < deadline:
            if not jobs.job_info(job_name).is_active:
                ended_at.append(time.time())
                break
            await asyncio.sleep(0.5)
        job_ended.set()

    if job_name is None:
        job_ended.set()
    async with async_playwright() as p:
        browser = await p.chromium.launch(**chromium_options())
        try:
            tasks = [session(k, browser, url, min_switches, deadline, job_ended, samples, errors, skip_first_round,
                             think_s) for k in range(n)]
            if job_name is not None:
                tasks.append(watch_job())
            await asyncio.gather(*tasks)
        finally:
            await browser.close()
    return samples, errors, (ended_at[0] if ended_at else None)


class CpuMeter:
    """CPU seconds used between :meth:`start` and :meth:`stop` by the app server, by the browsers, and by the
    whole machine (the rest: the job, the benchmark itself, anything else running). Processes are sampled
    every half second, so browser processes that start and end within the phase are counted."""

    def __init__(self, server_pid: int):
        import threading

        self.server_pid = server_pid
        self.first: dict = {}
        self.last: dict = {}
        self.kind: dict = {}
        self.halt = threading.Event()

    def _sample(self, at_start: bool = False) -> None:
        import psutil

        for proc in psutil.process_iter(["pid", "name"]):
            pid, name = proc.info["pid"], (proc.info["name"] or "").lower()
            kind = "server" if pid == self.server_pid else "browsers" if "chrom" in name else None
            if kind is None:
                continue
            try:
                t = proc.cpu_times()
            except Exception:  # ended meanwhile
                continue
            self.kind[pid] = kind
            self.first.setdefault(pid, t.user + t.system if at_start else 0.0)
            self.last[pid] = t.user + t.system

    def start(self) -> None:
        import threading

        import psutil

        self.t0, self.machine0 = time.time(), sum(psutil.cpu_times()[:3])  # user, nice, system
        self._sample(at_start=True)

        def loop():
            while not self.halt.wait(0.5):
                self._sample()

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self) -> str:
        import psutil

        self.halt.set()
        self.thread.join()
        self._sample()
        wall, machine = time.time() - self.t0, sum(psutil.cpu_times()[:3]) - self.machine0
        used = {"server": 0.0, "browsers": 0.0}
        for pid, kind in self.kind.items():
            used[kind] += self.last[pid] - self.first[pid]
        rest = machine - used["server"] - used["browsers"]
        return (f"CPU during the load phase ({wall:.0f} s wall, {wall * os.cpu_count():.0f} core-s): app server "
                f"{used['server']:.0f} s, browsers {used['browsers']:.0f} s, everything else (the job, this "
                f"benchmark, other work) {rest:.0f} s")


def percentiles(samples: list) -> tuple[float, float]:
    s = np.array([x[1] for x in samples], dtype=float)
    return (float(np.percentile(s, 50)), float(np.percentile(s, 95))) if len(s) else (float("nan"), float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--sessions", type=int, default=8, help=f"concurrent browser sessions (1-{MAX_SESSIONS})")
    ap.add_argument("--switches", type=int, default=8, help="page switches per session at least (default 8)")
    ap.add_argument("--duration", type=float, default=300, help=f"seconds the load phase may take (<= {MAX_DURATION})")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the training job (default 2)")
    ap.add_argument("--data", type=Path, help="dataset folder (default: a tiny generated demo)")
    ap.add_argument("--think", type=float, default=0.0,
                    help="seconds a session stays on a page before its next click, ±50 %% (default 0: at once)")
    args = ap.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS or not 10 <= args.duration <= MAX_DURATION or args.switches < 1 \
            or not 0 <= args.think <= 60:
        ap.error(f"--sessions must be 1-{MAX_SESSIONS}, --duration 10-{MAX_DURATION} s, --switches >= 1, "
                 "--think 0-60 s")
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} not found: install Debian's chromium package", file=sys.stderr)
        return 2
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        print("playwright is not installed: pip install -e '.[browser]'", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="mai-load-") as tmp:
        tmp = Path(tmp)
        os.environ["MAI_WORKSPACE"] = str(tmp / "workspace")
        data = args.data
        if data is None:
            from mai_core.data.demo import generate_demo

            data = tmp / "demo"
            generate_demo(data, n_train=120, n_test=40, n_genes=60, seed=0)
        server = contextlib.ExitStack()
        _proc, url = server.enter_context(start_app(data, tmp / "workspace", tmp / "server.log"))
        jobs_started = []
        try:
            print(f"app {url} (shipped config), data {data}, {args.sessions} session(s), think time "
                  f"{args.think:g} s, pages: " + ", ".join(p[0] for p in PAGES))
            # phase 1: the job alone
            t0 = time.time()
            jobs_started.append("alone")
            submit_job(data, "alone", args.epochs)
            alone = wait_job("alone", MAX_DURATION)
            alone_s = time.time() - t0
            print(f"baseline job      : {alone.state} in {alone_s:.1f} s, val gene PCC {alone.best_val_gene_pcc}")
            # phase 2: one session, no job
            base, base_err, _ = asyncio.run(run_sessions(url, 1, 2 * len(PAGES), 120, None, skip_first_round=True))
            b50, b95 = percentiles(base)
            print(f"baseline session  : {len(base)} switches, p50 {b50:.2f} s, p95 {b95:.2f} s, "
                  f"{len(base_err)} error(s)")
            # phase 3: N sessions while the job runs
            t0 = time.time()
            jobs_started.append("loaded")
            submit_job(data, "loaded", args.epochs)
            meter = CpuMeter(_proc.pid)
            _, log_at = server_runs(tmp / "server.log", 0)
            meter.start()
            load, load_err, job_end = asyncio.run(run_sessions(url, args.sessions, args.switches, args.duration, "loaded",
                                                               skip_first_round=False, think_s=args.think))
            cpu_line = meter.stop()
            loaded = wait_job("loaded", MAX_DURATION)
            # the job's own duration (it may end before the sessions do), not the length of the load phase
            loaded_s = (job_end if job_end is not None else time.time()) - t0
            l50, l95 = percentiles(load)
            during = [s for s in load if s[2]]
            d50, d95 = percentiles(during)
            print(f"load              : {len(load)} switches by {args.sessions} session(s), p50 {l50:.2f} s, "
                  f"p95 {l95:.2f} s ({l50 / b50:.1f}x / {l95 / b95:.1f}x the single session), "
                  f"{len(load_err)} error(s)")
            print(f"  while the job ran: {len(during)} switches, p50 {d50:.2f} s, p95 {d95:.2f} s")
            print(f"  {cpu_line}")
            runs, _ = server_runs(tmp / "server.log", log_at)
            if runs:
                r50, r95 = percentiles([(None, r) for r in runs])
                print(f"  the server's part: {len(runs)} page-script runs, p50 {r50:.2f} s, p95 {r95:.2f} s "
                      "(wall time of each run in the server, waiting for the CPU included)")
            for link, _t in PAGES:
                ts = [s for s in load if s[0] == link]
                if ts:
                    print(f"  {link:<17}: {len(ts):3d} switches, p50 {percentiles(ts)[0]:.2f} s, "
                          f"p95 {percentiles(ts)[1]:.2f} s")
            for k, where, what in (base_err + load_err)[:20]:
                print(f"  error: session {k}, {where}: {what}")
            same = (alone.best_val_gene_pcc is not None and loaded.best_val_gene_pcc is not None
                    and abs(alone.best_val_gene_pcc - loaded.best_val_gene_pcc) < 1e-4)
            print(f"job under load    : {loaded.state} in {loaded_s:.1f} s ({loaded_s / alone_s:.2f}x the job alone), "
                  f"val gene PCC {loaded.best_val_gene_pcc} ({'same as' if same else 'DIFFERS from'} alone)")
            unaffected = loaded.state == "finished" and same
            met = args.sessions >= 8 and l95 <= 3.0 and not (base_err or load_err) and unaffected
            print(f"{GOAL} -> {'met' if met else 'not met'} at this size "
                  f"({args.sessions} sessions, think time {args.think:g} s, p95 {l95:.2f} s, {len(base_err) + len(load_err)} errors, "
                  f"job {'unaffected' if unaffected else 'affected'})")
        finally:
            for name in jobs_started:
                stop_job_if_active(name)
            server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
