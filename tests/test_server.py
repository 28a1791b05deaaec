"""The app as shipped: `python -m mai_core.app` (Streamlit's `streamlit run app.py` from the repository root with
`.streamlit/config.toml`, the first page's libraries imported before it listens).

Starts the real server (a free port, bounded start-up, always stopped) and checks that it listens on the
loopback address only, and that an unexpected error on a page shows the app's generic notice in a real
browser — never a traceback, an exception's type or its text — while the details reach the server log.
The error is forced from outside the product: the launcher below replaces the dataset loader with one that
raises before it hands over to Streamlit's own command line, so the app itself holds no test switch.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from mai_core.procs import CHROMIUM, chromium_options, free_port, serving

REPO = Path(__file__).resolve().parents[1]
MARK = "forced-failure-7d1e /root/secret-notes.txt"

pytestmark = pytest.mark.slow

# exactly `python -m mai_core.app --port PORT` (the module entry calls the same serve.main), after breaking one loader
LAUNCH = f"""
import sys
import mai_core.app.frame as frame

def broken_loader(path):
    raise RuntimeError({MARK!r})

frame.cached_dataset = broken_loader
from mai_core.app.serve import main
sys.exit(main(["--port", sys.argv[1]]))
"""


@pytest.fixture(scope="module")
def shipped_server(demo_dir, tmp_path_factory):
    psutil = pytest.importorskip("psutil")
    base = tmp_path_factory.mktemp("server")
    (base / "workspace").mkdir()
    port = free_port()
    env = dict(os.environ, MAI_DATA=str(demo_dir), MAI_WORKSPACE=str(base / "workspace"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    for key in [k for k in env if k.startswith("STREAMLIT_")]:  # nothing may override the shipped config
        env.pop(key)
    with serving([sys.executable, "-c", LAUNCH, str(port)], port, REPO, env, base / "server.log",
                 timeout_s=90) as (proc, _url):
        yield {"proc": proc, "port": port, "log": base / "server.log", "psutil": psutil}


def test_shipped_config_listens_on_loopback_only(shipped_server):
    psutil, port = shipped_server["psutil"], shipped_server["port"]
    server = psutil.Process(shipped_server["proc"].pid)
    listening = [c.laddr for p in [server, *server.children(recursive=True)]
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening, "the server holds no listening socket"
    assert {(a.ip, a.port) for a in listening} == {("127.0.0.1", port)}, listening
    # and from the outside: this machine's other addresses do not answer on that port
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()
    urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5).close()


def test_unexpected_error_shows_the_generic_notice_never_a_traceback(shipped_server):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run browser tests")
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect, sync_playwright

    from mai_core.app.guard import UNEXPECTED_ERROR

    url = f"http://127.0.0.1:{shipped_server['port']}"
    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium_options())
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            seen = []
            for path, title in (("", "Spatial gene expression from H&E"), ("/Results", "Results & ensembles")):
                page.goto(url + path, wait_until="domcontentloaded")
                expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=90_000)
                expect(page.get_by_text(UNEXPECTED_ERROR[:40])).to_be_visible(timeout=90_000)
                page.wait_for_timeout(1000)  # anything rendered after the notice would show up now
                seen.append(page.locator("body").inner_text())
                # the shipped toolbar is a viewer's: no hosting or developer entries
                expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
        finally:
            browser.close()
    for text in seen:
        assert UNEXPECTED_ERROR in text
        for leak in ("Traceback", "RuntimeError", "forced-failure", "secret-notes", "frame.py", "redacted"):
            assert leak not in text, (leak, text[:2000])
        assert not re.search(r'File ".*", line \d+', text)
    log = shipped_server["log"].read_text()
    assert "forced-failure-7d1e" in log and "Traceback" in log  # the details went to the server console


def test_shipped_config_spends_no_cpu_between_or_after_runs():
    """No source-file polling, and no full garbage collection after every script run (0.33 s each with the
    pages' libraries loaded: every page view, slider move and live job-list refresh paid it)."""
    import tomllib

    cfg = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["fileWatcherType"] == "none"
    assert cfg["runner"]["postScriptGC"] is False
    assert cfg["client"]["toolbarMode"] == "viewer"


def test_the_app_command_says_what_is_wrong_with_its_options():
    import subprocess

    for bad, said in ((["--port", "70000"], "expected a port number from 1 to 65535, got 70000"),
                      (["--port", "web"], "expected a port number, got 'web'")):
        out = subprocess.run([sys.executable, "-m", "mai_core.app", *bad], cwd=REPO, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_app_command_hands_its_options_to_streamlit_run():
    from mai_core.app.serve import streamlit_run_args

    assert streamlit_run_args("app.py") == ["run", "app.py"]  # the shipped settings decide address and port
    assert streamlit_run_args("app.py", 8600, "0.0.0.0") == ["run", "app.py", "--server.port", "8600",
                                                             "--server.address", "0.0.0.0"]
