"""Torch views of datasets (imported only where torch is needed)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mai_core.data.images import load_image


class PatchDataset(Dataset):
    """Images loaded lazily from disk; yields (float32 CHW in [0, 1], float32 target or index)."""

    def __init__(self, paths, targets: np.ndarray | None = None, transform=None):
        self.paths = list(paths)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = torch.from_numpy(load_image(self.paths[i])).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            img = self.transform(img)
        if self.targets is None:
            return img, i
        return img, torch.from_numpy(self.targets[i])
