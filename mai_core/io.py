"""Atomic file output: write to a temporary path next to the target, then rename.

A crash or a validation failure never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_replaceable(target: Path, replaceable: Callable[[Path], bool], what: str) -> None:
    """Refuse to replace a file, or a non-empty folder that ``replaceable`` does not recognise as ``what``."""
    from mai_core.errors import MaiError

    if not target.exists():
        return
    if not target.is_dir():
        raise MaiError(f"cannot write the {what} to {target}: it is a file", hint="pass a folder path")
    if any(target.iterdir()) and not replaceable(target):
        raise MaiError(f"refusing to replace {target}: it is not empty and holds no {what}",
                       hint=f"pass a new or empty folder (an earlier {what} there is replaced)")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replaceable: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; it replaces ``target`` on success.

    An existing non-empty ``target`` is only replaced when ``replaceable(target)`` says it holds an earlier
    output of the same kind (``what``), so a mistyped output path never deletes a user's data.
    """
    target = Path(target)
    check_replaceable(target, replaceable, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
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
