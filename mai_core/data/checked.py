"""Images already decoded without error, remembered by file identity so a dataset is not decoded again.

Validation decodes every image in full (a truncated JPEG fails only when its last rows are decoded), which
costs about 10 ms per 224×224 patch: 1.5 s for a 160-patch dataset, minutes for 50,000. Every load
validates, and the app loads a dataset more than once (once to use it, once to list its problems), so each
image that decoded fine is remembered by its resolved path, size, modification time (ns) and inode: in this
process, and per dataset folder in the workspace cache (``cache/image_checks/<hash of the folder>.json``),
so a later process (another command, a restarted app) skips it too. A file that changes in any of these
is decoded again; a file that failed is never remembered.

The cache is an optimisation only: when it cannot be read or written, every image is decoded as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

_LOCK = threading.Lock()
_GOOD: dict[str, tuple[int, int, int]] = {}  # resolved path -> (size, mtime_ns, inode)
_LOADED: set[str] = set()  # folders whose record was read from the cache in this process
_DIRTY: set[str] = set()  # folders with images remembered since their record was last written
MAX_SHARED = 200_000  # files kept in one folder's record
MAX_RECORDS = 64  # folders remembered in the cache; the least recently written go first


def identity(st: os.stat_result) -> tuple[int, int, int]:
    return int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)


def _record_path(folder: Path) -> Path | None:
    try:
        from mai_core.workspace import cache_dir

        digest = hashlib.sha1(str(folder).encode("utf-8", "surrogatepass")).hexdigest()[:20]
        return cache_dir() / "image_checks" / f"{digest}.json"
    except Exception:  # no usable workspace
        return None


def _load(folder: Path) -> None:
    key = str(folder)
    if key in _LOADED:
        return
    _LOADED.add(key)
    path = _record_path(folder)
    try:
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return
    if not isinstance(data, dict) or data.get("folder") != key or not isinstance(data.get("files"), dict):
        return
    for rel, ident in data["files"].items():
        if isinstance(ident, list) and len(ident) == 3 and all(isinstance(v, int) for v in ident):
            _GOOD.setdefault(str(folder / rel), tuple(ident))


def known_good(folder: Path, full: Path, st: os.stat_result) -> bool:
    """Whether ``full`` (inside ``folder``, both resolved) decoded fine before and has not changed since."""
    with _LOCK:
        _load(folder)
        return _GOOD.get(str(full)) == identity(st)


def remember_good(folder: Path, full: Path, st: os.stat_result) -> None:
    with _LOCK:
        _GOOD[str(full)] = identity(st)
        _DIRTY.add(str(folder))


def save(folder: Path) -> None:
    """Write the folder's record (the images under it known to decode) to the workspace cache, atomically."""
    with _LOCK:
        if str(folder) not in _DIRTY:
            return
        _DIRTY.discard(str(folder))
    path = _record_path(folder)
    if path is None:
        return
    prefix = str(folder) + os.sep
    with _LOCK:
        files = {k[len(prefix):]: list(v) for k, v in _GOOD.items() if k.startswith(prefix)}
    if not files or len(files) > MAX_SHARED:
        return
    try:
        from mai_core.io import atomic_path

        with atomic_path(path, suffix=".json") as tmp:
            tmp.write_text(json.dumps({"folder": str(folder), "files": files}))
        records = sorted(path.parent.glob("*.json"), key=lambda q: q.stat().st_mtime_ns)
        for old in records[:-MAX_RECORDS]:
            old.unlink(missing_ok=True)
    except Exception:  # a read-only or full workspace: the next process decodes again
        return
