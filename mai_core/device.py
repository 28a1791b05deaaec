"""One place that turns a device name into a device.

``"auto"`` means the first CUDA GPU when torch sees one, else the CPU; ``"cpu"``, ``"cuda"`` and
``"cuda:N"`` are checked against the machine. Torch is imported only when a function needs it.
"""

from __future__ import annotations

import re
from typing import Any

from mai_core.errors import MaiError, Problem

_CUDA_RE = re.compile(r"(?:cuda|gpu)(?::(\d+))?")


def cuda_count() -> int:
    """Number of usable CUDA devices (0 when torch is missing or has no GPU)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _parse(device: Any) -> tuple[str, int | None]:
    text = str(device if device is not None else "auto").strip().lower() or "auto"
    if text in ("auto", "cpu"):
        return text, None
    m = _CUDA_RE.fullmatch(text)
    if not m:
        raise MaiError(f"unknown device {device!r}",
                       [Problem("device", f"{device!r} is not a device name", 'use "auto", "cpu", "cuda" or "cuda:N"')])
    return "cuda", int(m.group(1) or 0)


def device_type(device: Any = "auto") -> str:
    """``"cpu"`` or ``"cuda"`` for a device name, without checking that the GPU exists."""
    kind, _ = _parse(device)
    if kind == "auto":
        return "cuda" if cuda_count() > 0 else "cpu"
    return kind


def device_name(device: Any = "auto") -> str:
    """Canonical name of a device: ``"cpu"`` or ``"cuda:N"`` (``auto`` picks cuda:0 when present)."""
    kind, index = _parse(device)
    if kind == "auto":
        return "cuda:0" if cuda_count() > 0 else "cpu"
    return "cpu" if kind == "cpu" else f"cuda:{index}"


def resolve_device(device: Any = "auto"):
    """A ``torch.device``; a CUDA device that this machine does not have is a MaiError saying so."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    kind, index = _parse(device)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MaiError(f"device {device!r} requested but CUDA is not available",
                       [Problem("device", "torch reports no usable CUDA GPU on this machine "
                                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})",
                                'use device "cpu" or "auto", or install a CUDA build of torch and a driver')])
    count = torch.cuda.device_count()
    if index >= count:
        raise MaiError(f"device {device!r} requested but only {count} CUDA device(s) exist",
                       [Problem("device", f"index {index} is out of range", f"use cuda:0 .. cuda:{count - 1}")])
    return torch.device(f"cuda:{index}")
