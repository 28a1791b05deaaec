"""Where training runs: the device, mixed precision and memory layout, the process group, stop signals.

Defaults follow what measures faster (``bench/train_throughput.py``): channels_last on CUDA and on CPU
(EfficientNet-Lite0 trains ~1.7x faster in it on a 2-core Zen 4), bf16 autocast on CUDA only (on that CPU
bf16 training steps were no faster than float32 and change the numbers), and on CPU the tuned allocator
and a thread count that fits the cores this process may use (:func:`mai_core.models.fastpath.tune_cpu`).

:class:`Runtime` hides single-process vs ``torchrun`` training behind a few collective helpers
(``mean``, ``min_int``, ``any``, ``shard``, ``gather_rows``, ``barrier``), which are identities for one
process, so the training loops carry no ``world > 1`` branches.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import numpy as np

from mai_core.device import device_type as _device_type
from mai_core.device import resolve_device


class StoppedEarly(Exception):
    """Raised when a stop signal arrives before the first training step (nothing to checkpoint)."""


class StopFlag:
    """Set by SIGTERM/SIGINT; a second SIGINT interrupts immediately."""

    def __init__(self):
        self.set = False
        self.signal = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True
        self.signal = signal.Signals(signum).name

    def install(self) -> "StopFlag":
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handler)
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def rank_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment ``torchrun`` sets; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def unwrap_model(model):
    """The plain module under DistributedDataParallel and ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@dataclass
class Runtime:
    """Device, precision and process-group facts of one training process."""

    device: object = None                      # torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    amp: bool = False                          # bf16 autocast
    channels_last: bool = False
    threads: int = 0                           # CPU intra-op threads (0: not set here)
    cpu_allocator: bool = False                # the CPU allocator keeps activation memory between steps
    _dist: object = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return getattr(self.device, "type", "cpu") == "cuda"

    @classmethod
    def start(cls, rt_cfg: dict) -> "Runtime":
        """Join the process group (under torchrun), pick the device and the precision settings."""
        import torch

        dev_type = _device_type(rt_cfg["device"])
        rank, world, local = rank_info()
        dist = None
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if dev_type == "cuda" else "gloo")
        if world > 1 and dev_type == "cuda":
            device = torch.device(f"cuda:{local}")
            torch.cuda.set_device(device)
        else:
            device = resolve_device(rt_cfg["device"])
        cuda = device.type == "cuda"
        amp, cl = rt_cfg["amp"], rt_cfg["channels_last"]
        threads, allocator = 0, False
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            from mai_core.models.fastpath import available_cpus, tune_cpu

            want = rt_cfg.get("threads")
            if not want and world > 1:  # processes on one machine share its cores
                want = max(1, available_cpus() // world)
            tuned = tune_cpu(want)
            threads, allocator = tuned["threads"], tuned["allocator"]
        return cls(device=device, rank=rank, world=world, local_rank=local,
                   amp=(amp == "bf16") or (amp == "auto" and cuda),
                   channels_last=cl is True or cl == "auto", threads=threads, cpu_allocator=allocator,
                   _dist=dist)

    def describe(self) -> str:
        """One line for the log: device, precision, layout (and CPU threads)."""
        parts = [str(self.device) + (f" x{self.world}" if self.world > 1 else ""),
                 f"amp={'bf16' if self.amp else 'off'}", f"channels_last={'on' if self.channels_last else 'off'}"]
        if not self.cuda:
            parts.append(f"threads={self.threads}, allocator={'tuned' if self.cpu_allocator else 'system'}")
        return ", ".join(parts)

    # -- collectives (identities for a single process) ------------------------------------------
    def _tensor(self, value: float):
        import torch

        return torch.tensor([float(value)], device=self.device if self.cuda else "cpu")

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = self._tensor(value)
        self._dist.all_reduce(t)
        return float(t) / self.world

    def min_int(self, value: int) -> int:
        if self.world == 1:
            return value
        t = self._tensor(value)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MIN)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return bool(flag)
        t = self._tensor(1.0 if flag else 0.0)
        self._dist.all_reduce(t)
        return bool(float(t) > 0)

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This process's share of ``idx`` (every ``world``-th element)."""
        return idx if self.world == 1 else idx[self.rank::self.world]

    def gather_rows(self, idx: np.ndarray, mine: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Reassemble per-process ``values`` (rows for ``mine``) into the order of ``idx``."""
        if self.world == 1:
            return values
        parts = [None] * self.world
        self._dist.all_gather_object(parts, (mine, values))
        full = np.zeros((len(idx), values.shape[1]), np.float32)
        pos = {int(k): i for i, k in enumerate(idx)}
        for rows, vals in parts:
            for r, v in zip(rows, vals):
                full[pos[int(r)]] = v
        return full

    def barrier(self) -> None:
        if self.world > 1:
            self._dist.barrier()

    def wrap(self, model):
        """DistributedDataParallel around ``model`` under torchrun; the model itself otherwise."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.local_rank] if self.cuda else None)

    def close(self) -> None:
        if self._dist is not None and self._dist.is_initialized():
            self._dist.destroy_process_group()
