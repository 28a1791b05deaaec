"""Process liveness on this machine (used by run status and the job manager)."""

from __future__ import annotations

import os
from pathlib import Path


def process_start_time(pid) -> int | None:
    """Start time of a process (clock ticks since boot, /proc/<pid>/stat field 22); None if unknown."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError, TypeError):
        return None
    # the command name (field 2) is in parentheses and may itself contain spaces or ')'
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0] if fields else None


def process_alive(pid, start_time: int | None = None) -> bool:
    """Whether ``pid`` is a live (non-zombie) process, and the same one that started at ``start_time``."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    if Path("/proc").is_dir():
        state = _process_state(pid)
        if state is None or state in ("Z", "X"):
            return False
        if start_time is not None and process_start_time(pid) != int(start_time):
            return False  # the pid was recycled by an unrelated process
    return True
