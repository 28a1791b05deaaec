"""The training-time interface: a policy applied to whole batches on the batch's device."""

from __future__ import annotations

import torch

from mai_core.augment.ops import apply_aug, as_float_batch
from mai_core.augment.policy import Policy, load_policy


class BatchAugment:
    """Apply a :class:`Policy` to batches ``x`` (B x 3 x H x W, [0, 1]) and targets ``y`` (B x G).

    Random parameters come from a CPU generator seeded with ``seed``: the same seed and the same
    sequence of batches give the same outputs on CPU or GPU. Targets are only changed by
    augmentations that mix images (Mixup).
    """

    def __init__(self, policy: Policy, seed: int = 0):
        self.policy = policy.validate()
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def is_identity(self) -> bool:
        return not any(it.p > 0 for it in self.policy.items)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None):
        dtype = x.dtype if x.is_floating_point() else torch.float32
        out = as_float_batch(x)
        for it in self.policy.items:
            if it.p <= 0:
                continue
            out, y = apply_aug(it.aug, out, y, g=self.generator, p=it.p, params=it.params)
        return out.to(dtype), y

    def reset(self, seed: int | None = None) -> None:
        """Restart the random stream (from ``seed`` or the original seed)."""
        self.seed = self.seed if seed is None else int(seed)
        self.generator.manual_seed(self.seed)

    def state_dict(self) -> dict:
        """Generator state, to resume training with the same augmentation stream."""
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.generator.set_state(state["generator"])

    def describe(self) -> str:
        return f"{self.policy.describe()} (seed {self.seed})"

    def __repr__(self) -> str:
        return f"BatchAugment({self.describe()})"


def build_batch_augment(policy: Policy | str | None, seed: int = 0, search_dirs=None, data_dir=None) -> BatchAugment:
    """The augmentation the training engine applies to each batch. ``None`` means no augmentation;
    a string is resolved with :func:`load_policy` (unknown names raise MaiError)."""
    if policy is None:
        policy = "none"
    if not isinstance(policy, Policy):
        policy = load_policy(policy, search_dirs=search_dirs, data_dir=data_dir)
    return BatchAugment(policy, seed=seed)
