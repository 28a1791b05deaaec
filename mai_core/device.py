"""One place that turns a device name into a device, and that counts the CPU cores work may use.

``"auto"`` means the first CUDA GPU when torch sees one, else the CPU; ``"cpu"``, ``"cuda"`` and
``"cuda:N"`` are checked against the machine. Torch is imported only when a function needs it: on a Linux
machine without any GPU device node, :func:`cuda_count` answers 0 without importing it (about 1.5 s saved
wherever only the list of devices is needed, such as the app's training form).
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Any

from mai_core.errors import MaiError, Problem

_CUDA_RE = re.compile(r"(?:cuda|gpu)(?::(\d+))?")


def _no_gpu_device_nodes() -> bool:
    """True on Linux when no node a CUDA (or ROCm) device needs exists: NVIDIA's ``/dev/nvidiaN``, WSL's
    ``/dev/dxg``, ROCm's ``/dev/kfd``. Torch could see no GPU there, so it need not be asked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        names = os.listdir("/dev")
    except OSError:
        return False
    return not any(n in ("dxg", "kfd") or re.fullmatch(r"nvidia\d+", n) for n in names)


def cuda_count() -> int:
    """Number of usable CUDA devices (0 when torch is missing or has no GPU)."""
    if "torch" not in sys.modules and _no_gpu_device_nodes():
        return 0
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


# --------------------------------------------------------------------------------------------- CPU cores


def available_cpus() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota when one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def idle_cpus() -> int:
    """Usable cores not already busy with other processes: :func:`available_cpus` minus the 1-minute load
    average (rounded), at least 1. ``MAI_CPU_THREADS=all`` ignores the load."""
    n = available_cpus()
    if os.environ.get("MAI_CPU_THREADS", "").lower() == "all":
        return n
    try:
        busy = int(round(os.getloadavg()[0]))
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(n, n - busy))


_POOLS: dict = {}


def cap_native_pools(threads: int | None = None) -> int:
    """Cap the native thread pools (BLAS, OpenMP: numpy, scikit-learn) of this process at ``threads``, by
    default :func:`idle_cpus`; returns the number applied. Free when neither the number nor the set of
    imported modules has changed since the last call (a call costs about 4 ms).

    With every core already busy, a pool of several threads is far slower than one: scikit-learn's k-means
    over 19 values of k on 60 gene profiles took 4.8 s with two OpenMP threads on a 2-core machine at load
    1.7, and 0.19 s with one. The app calls this before every page run and the gene commands before they
    start, so both follow the machine's load. Pools are capped once loaded (a library imported later is
    capped at the next call). Torch's own pool is set by ``models.fastpath.tune_cpu``.
    """
    n = max(1, int(threads) if threads else idle_cpus())
    state = (n, len(sys.modules))  # a module imported since the last call may have brought a new pool
    if _POOLS.get("applied") == state:
        return n
    try:
        import numpy  # noqa: F401  (loads its BLAS, capped below)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    except Exception:  # no threadpoolctl, or a pool it cannot set: the pools keep their own counts
        return n
    _POOLS["applied"] = (n, len(sys.modules))
    return n
