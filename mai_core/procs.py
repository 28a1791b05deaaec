"""Process liveness on this machine (used by run status and the job manager), on every operating system."""

from __future__ import annotations


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
