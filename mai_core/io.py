"""Atomic file output, and the one rule for output targets.

Writes go to a temporary path next to the target, then a rename: a crash or a validation failure never
leaves a half-written output behind. Outputs get the permissions the user's umask gives a new file
(``tempfile`` alone would make them readable by the owner only).

Every command that writes an ``--out`` (train, predict, evaluate, ensemble, gradcam, demo) goes through
:func:`check_replaceable`: an existing target is only replaced when it holds an earlier output of the same
kind, unless the user passes ``--force``. Folders are recognised by their layout (a callable per kind);
single files by a small marker written next to them (:func:`mark_output`), which records the kind and
the content hash of what was written, so a file a user put at that name is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

# the longest path text accepted from users (Linux PATH_MAX is 4096, one name at most 255 bytes)
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255


def _read_umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # once, at import (before any worker thread exists)
    os.umask(old)
    return old


_UMASK = _read_umask()


def _chmod_new(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode & ~_UMASK)
    except OSError:
        pass  # a file system without permissions (e.g. some network shares): keep what it gave


def _named(exc: OSError, target: Path) -> OSError:
    """The same OS error, naming ``target`` when it names no file (a full disk, a quota, an I/O error)."""
    if exc.filename is not None:
        return exc
    if exc.errno:
        return type(exc)(exc.errno, exc.strerror or str(exc), str(target))
    return type(exc)(f"{exc} (writing {target})")


def check_path_text(text: str, where: str) -> list:
    """Problems with a path typed by a user (NUL byte, absurd length) before the OS sees it."""
    from mai_core.errors import Problem

    text = str(text)
    if "\x00" in text:
        return [Problem(where, "the path contains a NUL byte", "type the path again without control characters")]
    if len(text) > MAX_PATH_CHARS:
        return [Problem(where, f"the path is {len(text):,} characters long (at most {MAX_PATH_CHARS:,})",
                        "use a shorter path")]
    long_part = next((p for p in text.replace("\\", "/").split("/") if len(p.encode("utf-8", "replace"))
                      > MAX_NAME_BYTES), None)
    if long_part is not None:
        return [Problem(where, f"one folder or file name in the path is {len(long_part):,} characters long "
                        f"(at most {MAX_NAME_BYTES} bytes)", "use shorter names")]
    return []


def shown_path(text: str, limit: int = 120) -> str:
    """A path for a message: control characters escaped, very long ones shortened in the middle."""
    text = str(text).encode("unicode_escape").decode("ascii") if any(ord(c) < 32 for c in str(text)) else str(text)
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-limit // 2:]} ({len(text):,} characters)"


def _raise_named(exc: OSError, target: Path):
    """Re-raise an OS error met while writing ``target``: as our message naming the path when it is one we
    explain (disk full, permissions, …), else unchanged."""
    named = _named(exc, target)
    if named is exc:
        raise exc
    raise named from exc


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _named(exc, target) from None
    tmp_path = Path(tmp)
    _chmod_new(tmp_path, 0o666)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        _raise_named(exc, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# ---------------------------------------------------------------------------------------------- targets
def _marker(target: Path) -> Path:
    return target.with_name(f".{target.name}.mai-output")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mark_output(target: str | os.PathLike, kind: str) -> None:
    """Record that ``target`` (a file just written) is our output of ``kind`` (see :func:`is_marked`)."""
    target = Path(target)
    write_text(_marker(target), json.dumps({"kind": kind, "sha256": _sha256(target)}) + "\n")


def is_marked(target: str | os.PathLike, kind: str) -> bool:
    """Whether ``target`` is an unchanged output of ``kind`` written by :func:`mark_output`."""
    target = Path(target)
    try:
        mark = json.loads(_marker(target).read_text())
        return isinstance(mark, dict) and mark.get("kind") == kind and mark.get("sha256") == _sha256(target)
    except (OSError, ValueError):
        return False


def check_replaceable(target: str | os.PathLike, replaceable: Callable[[Path], bool] | None, what: str,
                      force: bool = False) -> None:
    """Refuse an existing ``target`` that does not hold an earlier output of the same kind (``what``).

    ``replaceable`` recognises a folder output of that kind; ``None`` means the output is one file,
    recognised by its marker (:func:`mark_output`). An empty folder is always usable. ``force`` (the
    commands' ``--force``) accepts any existing target of the right type (file or folder).
    """
    from mai_core.errors import MaiError, Problem

    target = Path(target)
    try:
        exists, is_dir = target.exists(), target.is_dir()
    except (OSError, ValueError) as exc:
        raise MaiError(f"cannot use {shown_path(target)} as the {what}",
                       check_path_text(str(target), "--out") or [Problem(shown_path(target), str(exc))]) from None
    if not exists:
        return
    folder = replaceable is not None
    if folder and not is_dir:
        raise MaiError(f"cannot write the {what} to {target}: it is a file", hint="pass a folder path")
    if not folder and is_dir:
        raise MaiError(f"cannot write the {what} to {target}: it is a folder", hint="pass a file path")
    if force:
        return
    if folder:
        if not any(target.iterdir()) or replaceable(target):
            return
        raise MaiError(f"refusing to replace {target}: it is not empty and holds no {what}",
                       [Problem(str(target), f"an existing folder that this program did not write as a {what}",
                                "pass a new or empty folder, or --force to replace it on purpose")],
                       hint=f"an earlier {what} in that place is replaced without --force")
    if is_marked(target, what):
        return
    raise MaiError(f"refusing to replace {target}: it is not a {what} written by this program",
                   [Problem(str(target), "an existing file (a dataset table, a config, ...?)",
                            "pass a new file name, or --force to replace it on purpose")],
                   hint=f"an earlier {what} written to that name is replaced without --force")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replaceable: Callable[[Path], bool], what: str,
               force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; it replaces ``target`` on success.

    An existing non-empty ``target`` is only replaced when ``replaceable(target)`` says it holds an earlier
    output of the same kind (``what``), or with ``force``, so a mistyped output path never deletes a
    user's data (:func:`check_replaceable`).
    """
    target = Path(target)
    check_replaceable(target, replaceable, what, force=force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise _named(exc, target) from None
    _chmod_new(tmp, 0o777)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        _raise_named(exc, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(target: str | os.PathLike, df: pd.DataFrame, **kwargs) -> None:
    kwargs.setdefault("index", False)
    with atomic_path(target, suffix=".csv") as tmp:
        df.to_csv(tmp, **kwargs)


def write_parquet(target: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_path(target, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)
