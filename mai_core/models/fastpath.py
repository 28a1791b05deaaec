"""How models run fast on this machine: the CPU allocator and thread count, the memory layout, and a
background prefetcher that overlaps decoding with compute. Shared by prediction, feature extraction and
training.

Measured on a 2-core AMD EPYC (Zen 4) with EfficientNet-Lite0 (``bench/predict_throughput.py``,
``bench/train_throughput.py``):

- glibc serves every large block (activations of tens to hundreds of MB) with a fresh ``mmap`` and hands it
  back with ``munmap`` when it is freed, so each forward pass page-faults its activations in again; the
  kernel time this costs exceeded the compute. :func:`tune_cpu_allocator` makes glibc keep freed memory in
  its heap instead (``M_MMAP_MAX = 0``; free space above ``MAI_CPU_TRIM_MB``, 512 MB by default, is still
  returned to the system). ``MAI_CPU_ALLOCATOR=system`` leaves the allocator alone.
- channels_last runs convolutional networks markedly faster than NCHW, in inference and training
  (:func:`prefers_channels_last`); a uint8 N×H×W×3 array permuted to B×3×H×W already *is* channels_last,
  so the layout costs no copy (:func:`to_float_batch`).
- with every core already busy (a shared machine), more than one intra-op thread is far slower than one:
  the threads meet at every operation and wait for each other to be scheduled (:func:`idle_cpus`).
- bf16 autocast is faster for inference on CPUs with AVX-512 BF16 but slower for training, and it changes
  the numbers, so CPU defaults stay float32; CUDA uses bf16.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Callable, Iterable, Iterator

from mai_core.device import available_cpus, idle_cpus  # noqa: F401  (part of this module's face)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4        # glibc mallopt parameters (malloc.h)
_TUNED: dict = {}
_LOCK = threading.Lock()


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks in glibc's heap (no mmap/munmap per activation). Once per process; True when
    applied. Not on other C libraries, and not when ``MAI_CPU_ALLOCATOR=system``."""
    with _LOCK:
        if "allocator" in _TUNED:
            return _TUNED["allocator"]
        ok = False
        if os.environ.get("MAI_CPU_ALLOCATOR", "tuned").lower() != "system" and sys.platform.startswith("linux"):
            import platform

            if platform.libc_ver()[0] == "glibc":
                try:
                    import ctypes

                    libc = ctypes.CDLL("libc.so.6")
                    trim_mb = int(os.environ.get("MAI_CPU_TRIM_MB", "512"))
                    ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_mb << 20))
                except (OSError, AttributeError, ValueError):
                    ok = False
        _TUNED["allocator"] = ok
        return ok


def tune_cpu(threads: int | None = None) -> dict:
    """Allocator (see :func:`tune_cpu_allocator`) and torch's intra-op thread count for CPU work.

    ``threads``: None keeps torch's count unless it exceeds :func:`idle_cpus` — the usable cores not busy
    with other processes (a container that sees more cores than it may use, or a shared machine, would
    otherwise oversubscribe them: on a 2-core machine with every core busy, two threads made a training step
    of a linear head 30x and of EfficientNet-Lite0 over 4x slower than one, as each thread waits at every
    operation for the other to be scheduled); a number sets it. Returns the facts applied: ``{"allocator": bool, "threads": int}``.
    """
    import torch

    allocator = tune_cpu_allocator()
    want = int(threads) if threads else min(torch.get_num_threads(), idle_cpus())
    if want >= 1 and want != torch.get_num_threads():
        torch.set_num_threads(want)
    return {"allocator": allocator, "threads": torch.get_num_threads()}


def prefers_channels_last(model, device) -> bool:
    """Whether ``model`` should run in channels_last on ``device``: yes for networks built from 2-D
    convolutions (on CUDA and CPU alike: EfficientNet-Lite0 runs 1.7-1.9x faster on CPU in channels_last),
    no for token models whose only convolution is the patch embedding (the layout changes nothing there)."""
    from torch import nn

    convs = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))
    return convs >= 3 or (getattr(device, "type", str(device)) == "cuda" and convs > 0)


def to_float_batch(images_u8, device, channels_last: bool, out=None):
    """uint8 N×H×W×3 (numpy or tensor) → float32 B×3×H×W in [0, 1] on ``device``.

    The permuted uint8 view already has channels_last strides; with ``out`` (a preallocated float tensor of at
    least N rows, in the wanted layout) nothing new is allocated on the CPU.
    """
    import numpy as np
    import torch

    t = images_u8 if isinstance(images_u8, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images_u8))
    t = t.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if out is None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = t.to(torch.float32, memory_format=fmt)
    else:
        x = out[: t.shape[0]]
        x.copy_(t)
    return x.div_(255.0)


def prefetched(fn: Callable, items: Iterable, depth: int = 1) -> Iterator:
    """``fn(item)`` for each item, computed ``depth`` items ahead in one background thread (decoding the
    next chunk while the model runs on this one). Exceptions surface at the item that raised; closing the
    iterator early stops the worker after its current item."""
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()
    done = object()

    def work():
        try:
            it = iter(items)  # iterating may do the work itself (a generator that decodes)
            while not stop.is_set():
                try:
                    item = next(it)
                except StopIteration:
                    break
                q.put((True, fn(item)))
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put((False, exc))
        finally:
            q.put((True, done))

    worker = threading.Thread(target=work, name="mai-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = q.get()
            if value is done:
                return
            if not ok:
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
