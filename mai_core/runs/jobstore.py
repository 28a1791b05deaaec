"""Job records on disk (``workspace/jobs/<id>.json``) and the locks that guard them.

``records.lock`` serialises read-modify-write of records; ``device-<dev>.lock`` is held by the queue
runner of a device while it works (:func:`device_lock`). Locks are ``filelock`` locks, so they work on
every operating system.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from mai_core.errors import MaiError, Problem
from mai_core.io import write_json

TERMINAL = ("finished", "failed", "stopped")


def jobs_root() -> Path:
    from mai_core.workspace import jobs_dir

    return jobs_dir()


def record_path(job_id: str) -> Path:
    return jobs_root() / f"{job_id}.json"


@contextlib.contextmanager
def records_lock():
    """Exclusive access to the job records (blocks until free)."""
    from filelock import FileLock

    with FileLock(str(jobs_root() / "records.lock")):
        yield


def device_slug(device: str) -> str:
    return device.replace(":", "")


@contextlib.contextmanager
def device_lock(device: str):
    """Try to own ``device``'s queue: yields True while held, False when another runner holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(jobs_root() / f"device-{device_slug(device)}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def read_record(job_id: str) -> dict:
    p = record_path(job_id)
    if not p.is_file():
        known = ", ".join(sorted(r["id"] for r in all_records())) or "none"
        raise MaiError(f"no job named '{job_id}'", [Problem(str(p.parent), f"known jobs: {known}",
                                                            "see `python -m mai_core jobs list`")])
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        raise MaiError(f"job record {p} is unreadable ({exc})", hint="delete the file and start the job again")


def write_record(rec: dict) -> None:
    write_json(record_path(rec["id"]), rec)


def all_records() -> list[dict]:
    """Every readable job record, oldest first."""
    out = []
    for p in jobs_root().glob("*.json"):
        try:
            rec = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(rec, dict) and "id" in rec:
            out.append(rec)
    out.sort(key=lambda r: (r.get("queued_at", 0), r["id"]))
    return out


def update_record(job_id: str, **fields) -> dict:
    with records_lock():
        rec = read_record(job_id)
        rec.update(fields)
        write_record(rec)
        return rec
