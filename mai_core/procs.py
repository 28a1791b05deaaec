"""Processes on this machine: liveness (run status, the job manager) on every operating system, and starting,
waiting for and stopping a local web app (tests and benchmarks)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

# the browser the browser tests, page benchmarks and screenshots drive (Debian's chromium, through Playwright)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update")


def chromium_options() -> dict:
    """Keyword arguments of Playwright's ``chromium.launch`` for :data:`CHROMIUM` with :data:`CHROMIUM_FLAGS`."""
    return {"executable_path": str(CHROMIUM), "args": list(CHROMIUM_FLAGS)}


def process_start_time(pid) -> int | None:
    """When a process started, as a whole number of hundredths of a second since the epoch; None if unknown.

    Stored next to a pid, it tells a recycled pid (an unrelated process) from the one that was started.
    """
    import psutil

    try:
        return int(round(psutil.Process(int(pid)).create_time() * 100))
    except (psutil.Error, ValueError, TypeError, OverflowError):
        return None


def process_alive(pid, start_time: int | None = None) -> bool:
    """Whether ``pid`` is a live (non-zombie) process, and the same one that started at ``start_time``."""
    import psutil

    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        if start_time is not None and int(round(proc.create_time() * 100)) != int(start_time):
            return False  # the pid was recycled by an unrelated process
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return start_time is None  # exists, owned by someone else: its start time cannot be checked
    except (psutil.Error, OverflowError, ValueError):
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (on ``host``)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(proc, wait_s: float = 10.0) -> None:
    """Terminate a child process, kill it if it has not ended after ``wait_s``, and reap it."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def streamlit_argv(script: str, port: int) -> list[str]:
    """``streamlit run SCRIPT`` on ``port`` with the repository's shipped server settings (loopback only),
    without a file watcher."""
    import sys

    return [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
            "--server.fileWatcherType", "none"]


def app_argv(port: int) -> list[str]:
    """The app as the README starts it (``python -m mai_core.app``) on ``port``, with the shipped settings."""
    import sys

    return [sys.executable, "-m", "mai_core.app", "--port", str(port)]


@contextmanager
def serving(argv: list[str], port: int, cwd, env: dict, log_path, timeout_s: float = 60.0):
    """Start a web app (``argv``, e.g. :func:`streamlit_argv`) listening on 127.0.0.1:``port``, wait until its
    health endpoint answers, yield ``(process, url)``, and always stop it. RuntimeError with the end of its log
    when it exits or does not answer within ``timeout_s``."""
    import subprocess
    import time
    import urllib.request
    from pathlib import Path

    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            end = time.time() + timeout_s
            while True:
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).close()
                    break
                except OSError:
                    if time.time() > end or proc.poll() is not None:
                        log.flush()
                        tail = Path(log_path).read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"the app did not start within {timeout_s:.0f} s:\n{tail}") from None
                    time.sleep(0.5)
            yield proc, url
        finally:
            stop_process(proc)
