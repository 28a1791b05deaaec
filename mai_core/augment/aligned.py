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

A third, model-free number, the **hue rotation**, says how far the augmentation turns the colours of the
tissue around the colour wheel (degrees; chroma-weighted mean over the patch, augmented against moved
original). Brightness, contrast, saturation, blur and any geometric step leave it at (nearly) 0;
hue shifts and per-channel histogram equalisation turn haematoxylin and eosin into colours no scanner
produces.

Default thresholds select a training policy without tuning: appearance LPIPS and DINO below the values
in :data:`DEFAULT_THRESHOLDS` (for the metric that produced them) and hue rotation below
:data:`DEFAULT_MAX_HUE`. Measured with the EfficientNet-Lite0 substitutes, 16–24 patches × 2 versions
(appearance LPIPS / DINO / hue degrees, demo · HER2ST): brightness/contrast 0.04/0.03/0.6 · 0.03/0.02/0.2;
ColorJitter 0.04/0.03/8.5 · 0.05/0.04/8.1; HueSaturationValue 0.02/0.02/10.4 · 0.04/0.04/9.9;
Equalize 0.69/0.28/11 · 0.55/0.41/7; Mixup 0.19/0.09/1.2 · 0.18/0.09/1.7; blur 0.12/0.09/0 · 0.13/0.11/0;
flips, rotations, shift/scale/rotate 0/0/0. So the perceptual distances alone do not separate
brightness/contrast from ColorJitter/HueSaturationValue; the hue rotation does, by more than a factor of 10.
The defaults keep the geometric augmentations and brightness/contrast and drop ColorJitter, Equalize,
HueSaturationValue and Mixup (as a contest entry did on HER2ST tissue), on demo and on real HER2ST patches
(``tests/test_augment_selection.py`` checks the outcome from fresh scores, it is not written in anywhere).
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


def hue_rotation(xa: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """Per image, how far ``xa`` turns the colours of ``moved`` around the colour wheel, in degrees (0..180).

    Each pixel's chroma is a complex number ``(R - (G + B) / 2) + i (G - B) sqrt(3) / 2`` (its hue is the angle);
    the rotation is the angle of the chroma-weighted mean of ``c_aug * conj(c_moved)``. Scaling colours
    (brightness, contrast, saturation) or blending them with grey leaves it at 0; a hue shift of t degrees
    gives about t. Pixel-aligned inputs (B x 3 x H x W, [0, 1]) are required: pass the moved original."""
    def chroma(x):
        x = x.float()
        return torch.complex(x[:, 0] - 0.5 * (x[:, 1] + x[:, 2]), 0.8660254 * (x[:, 1] - x[:, 2]))

    s = (chroma(xa) * chroma(moved).conj()).flatten(1).sum(1)
    deg = torch.rad2deg(torch.angle(s)).abs()
    return torch.where(s.abs() > 1e-8, deg, torch.zeros_like(deg))


# Default thresholds on the appearance distances, per metric label (the label a PerceptualScorer reports).
# Calibrated for the EfficientNet-Lite0 substitutes only (numbers in the module notes): between
# brightness/contrast (<= 0.04 LPIPS-style, <= 0.035 cosine) and blur / Mixup (>= 0.11, >= 0.085). A
# substitute with random weights, and the original LPIPS/DINO, have none: pass thresholds explicitly.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "lpips-style/efficientnet_lite0": 0.08,
    "cosine/efficientnet_lite0": 0.06,
}
# Mean hue rotation (degrees): brightness/contrast <= 0.7, HEDJitter ~2.3, hue shifts and equalisation >= 7.
DEFAULT_MAX_HUE = 3.0


def default_threshold(metric: str) -> float | None:
    """The default threshold for a metric label, or None when there is none for it."""
    return DEFAULT_THRESHOLDS.get(str(metric))


def default_thresholds(lpips_model: str, dino_model: str) -> dict[str, float | None]:
    """``{"max_lpips", "max_dino", "max_hue"}``: the defaults for these metric labels (None where none)."""
    return {"max_lpips": default_threshold(lpips_model), "max_dino": default_threshold(dino_model),
            "max_hue": DEFAULT_MAX_HUE}
