"""Slide predictions in the workspace: where they live, how to list them, how to start one in the background.

``$MAI_WORKSPACE/slides/<name>/`` holds one background prediction: ``prediction.h5ad`` (when finished),
``status.json`` (state, progress, ETA, written by ``predict-slide --status-dir``) and ``log.txt``. Jobs run
through the same queue as training (:func:`mai_core.runs.jobs.submit` with a ``predict-slide`` command),
so a slide waits for a busy device and shows up in the sidebar's job list.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mai_core.errors import MaiError, Problem

PREDICTION_FILE = "prediction.h5ad"
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


def slides_dir() -> Path:
    from mai_core.workspace import workspace_dir

    p = workspace_dir() / "slides"
    p.mkdir(parents=True, exist_ok=True)
    return p


@dataclass
class SlidePrediction:
    path: Path
    name: str
    modified: float
    size: int


def list_predictions(root=None) -> list[SlidePrediction]:
    """Finished slide predictions (``*.h5ad``) under ``root`` (default: the workspace's slides/), newest first."""
    root = Path(root) if root is not None else slides_dir()
    found = []
    if root.is_dir():
        for p in list(root.glob("*.h5ad")) + list(root.glob(f"*/{PREDICTION_FILE}")):
            if p.name.startswith("."):
                continue
            st = p.stat()
            name = p.parent.name if p.name == PREDICTION_FILE else p.stem
            found.append(SlidePrediction(p, name, st.st_mtime, st.st_size))
    return sorted(found, key=lambda s: -s.modified)


def job_name(run, image, root: Path | None = None) -> str:
    """``<run>-<slide>-<date>-<time>``, with ``-2``, ``-3``… when a prediction of that name already exists in
    ``root`` (default :func:`slides_dir`): two predictions started within the same second never share a folder."""
    base = _NAME_RE.sub("-", f"{Path(run).name}-{Path(image).stem}")[:60].strip("-") or "slide"
    name = f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(root) if root is not None else slides_dir()
    taken, n = name, 1
    while (root / taken).exists():
        n += 1
        taken = f"{name}-{n}"
    return taken


def slide_command(run, image, out: Path, status_dir: Path, device: str, spots=None, counts=None, labels=None,
                  mpp: float | None = None, grid_um: float | None = None, tta: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "mai_core", "predict-slide", "--run", str(Path(run).resolve()),
           "--image", str(Path(image).expanduser().resolve()), "--out", str(out), "--status-dir", str(status_dir),
           "--device", device, "--quiet"]
    for flag, value in (("--spots", spots), ("--counts", counts), ("--labels", labels)):
        if value:
            cmd += [flag, str(Path(value).expanduser().resolve())]
    for flag, value in (("--mpp", mpp), ("--grid-um", grid_um), ("--tta", tta)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def submit_slide_job(run, image, spots=None, counts=None, labels=None, mpp: float | None = None,
                     grid_um: float | None = None, tta: int | None = None, device: str = "auto",
                     name: str | None = None, spawn: bool = True):
    """Queue ``predict-slide`` as a background job; returns its :class:`~mai_core.runs.jobs.JobInfo`."""
    from mai_core.data.wsi import SLIDE_SUFFIXES
    from mai_core.device import device_name
    from mai_core.runs import RunDir
    from mai_core.runs.jobs import TrainSpec, submit

    problems = []
    if not RunDir(run).config_path.is_file():
        problems.append(Problem(str(run), "not a run directory", "pick a trained run"))
    image = Path(image).expanduser()
    if not image.is_file():
        problems.append(Problem(str(image), "no such file", "type the path of a slide image"))
    elif image.suffix.lower() not in SLIDE_SUFFIXES:
        problems.append(Problem(str(image), f"'{image.suffix}' is not a slide format",
                                f"use one of {', '.join(SLIDE_SUFFIXES)}"))
    for what, value in (("spot file", spots), ("counts", counts), ("labels", labels)):
        if value and not Path(value).expanduser().is_file():
            problems.append(Problem(str(value), f"{what} not found", "leave it empty or fix the path"))
    if problems:
        raise MaiError("cannot start the slide prediction", problems)
    root = slides_dir()
    name = _NAME_RE.sub("-", name).strip("-") if name else job_name(run, image, root)
    dev = device_name(device)
    folder = root / name
    cmd = slide_command(run, image, folder / PREDICTION_FILE, folder, dev, spots, counts, labels, mpp, grid_um, tta)
    spec = TrainSpec(data=str(root), name=name, device=device)
    return submit(spec, runs_root=root, command=cmd, spawn=spawn)


def is_slide_job(command: list[str]) -> bool:
    return "predict-slide" in command
