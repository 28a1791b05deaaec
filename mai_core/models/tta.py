"""Test-time augmentation: the eight dihedral views (rotations and flips) of an image batch, and how many of
them a setting asks for (``predict.tta``: True = 8, False = 1 = off, or N)."""

from __future__ import annotations

import numpy as np

MAX_VIEWS = 8


def dihedral_views(x, views: int = MAX_VIEWS) -> list:
    """The first ``views`` of the 8 rotations/flips of a B×C×H×W batch (view 0 is the identity)."""
    import torch

    out = []
    for flipped in (False, True):
        base = torch.flip(x, dims=(-1,)) if flipped else x
        for k in range(4):
            out.append(torch.rot90(base, k, dims=(-2, -1)) if k else base)
    return out[:views]


def dihedral_view(x, v: int):
    """View ``v`` (0..7) of a B×C×H×W batch alone, in the order of :func:`dihedral_views`."""
    import torch

    if v == 0:
        return x
    base = torch.flip(x, dims=(-1,)) if v >= 4 else x
    return torch.rot90(base, v % 4, dims=(-2, -1)) if v % 4 else base


def dihedral_view_np(images: np.ndarray, v: int) -> np.ndarray:
    """View ``v`` of the 8 dihedral transforms of N×H×W×3 images (the same order as :func:`dihedral_views`)."""
    out = images[:, :, ::-1] if v >= 4 else images
    k = v % 4
    return np.ascontiguousarray(np.rot90(out, k, axes=(1, 2)) if k else out)


def tta_views(cfg: dict) -> int:
    """Number of views a config's ``predict.tta`` asks for: True → 8, False/0 → 1, N → N (clamped to 1..8)."""
    tta = (cfg.get("predict") or {}).get("tta", False)
    if tta is True:
        return MAX_VIEWS
    if not tta:
        return 1
    return max(1, min(MAX_VIEWS, int(tta)))


def parse_views(value) -> int:
    """Views for a TTA setting given by a person: ``on``/True → 8, ``off``/False/None → 1, ``N`` → N.

    Raises ValueError (with a message saying what is accepted) for anything else, including N outside 1..8.
    """
    if value is None or value is False:
        return 1
    if value is True:
        return MAX_VIEWS
    text = str(value).strip().lower()
    if text in ("on", "true", "yes"):
        return MAX_VIEWS
    if text in ("off", "false", "no"):
        return 1
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"expected on, off or a number of views 1..{MAX_VIEWS}, got {value!r}") from None
    if not 1 <= n <= MAX_VIEWS:
        raise ValueError(f"the number of views must be 1..{MAX_VIEWS} (1 = off), got {n}")
    return n
