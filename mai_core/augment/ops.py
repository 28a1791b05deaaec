"""The augmentation registry: batched image operations with per-sample random parameters.

Every operation takes a float tensor ``B x 3 x H x W`` in [0, 1] (CPU or GPU) and a CPU
``torch.Generator`` from which all random parameters are drawn, so the same seed gives the same
output on any device. Image operations come from ``torchvision.transforms.v2.functional`` and
``torch.nn.functional``; where torchvision only accepts one factor per call, the per-sample factor is
applied with the same blend torchvision uses (``factor * img + (1 - factor) * other``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as TF
import torchvision.transforms.v2.functional as F

from mai_core.errors import MaiError, Problem


@dataclass(frozen=True)
class ParamSpec:
    """One tunable parameter of an augmentation."""

    name: str
    default: float
    low: float
    high: float
    description: str
    integer: bool = False


@dataclass(frozen=True)
class AugSpec:
    """A registered augmentation: its parameters, default probability and implementation.

    ``fn(x, g, **params) -> x`` for per-image operations; for batch operations (``batch=True``, e.g.
    Mixup, which pairs images and mixes their targets) ``fn(x, y, g, mask, **params) -> (x, y)``.
    """

    name: str
    description: str
    fn: Callable = field(repr=False)
    params: tuple[ParamSpec, ...] = ()
    default_p: float = 0.5
    kind: str = "colour"  # geometric | colour | stain | blur | batch | none
    batch: bool = False
    mixes_targets: bool = False

    @property
    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def check_params(self, params: dict | None, where: str = "") -> list[Problem]:
        """Every problem with ``params`` (unknown names, non-numbers, out-of-range values)."""
        problems = []
        where = where or self.name
        known = {p.name: p for p in self.params}
        for key, value in (params or {}).items():
            spec = known.get(key)
            if spec is None:
                problems.append(Problem(where, f"unknown parameter '{key}' for {self.name}",
                                        f"use one of: {', '.join(known) or '(none: it takes no parameters)'}"))
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(Problem(where, f"{self.name}.{key} must be a number, got {value!r}",
                                        f"give a number in [{spec.low}, {spec.high}]"))
                continue
            if not spec.low <= value <= spec.high:
                problems.append(Problem(where, f"{self.name}.{key}={value} is outside [{spec.low}, {spec.high}]",
                                        f"pick a value between {spec.low} and {spec.high}"))
        return problems

    def resolve(self, params: dict | None = None) -> dict[str, float]:
        """Defaults overridden by ``params``; raises MaiError on any invalid parameter."""
        problems = self.check_params(params)
        if problems:
            raise MaiError(f"invalid parameters for augmentation {self.name}", problems)
        out = self.defaults
        for key, value in (params or {}).items():
            out[key] = int(value) if self.param(key).integer else float(value)
        return out


# ---------------------------------------------------------------- random parameter helpers

def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64).mul_(high - low).add_(low).float()


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values shaped to broadcast over B x C x H x W, on x's device."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)



def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's blend (``factor * x + (1 - factor) * other``, clamped) with one factor per sample."""
    f = _col(factor, x)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _brightness(x, factor):
    return _blend(x, torch.zeros_like(x), factor)


def _contrast(x, factor):
    mean = F.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean.expand_as(x), factor)


def _saturation(x, factor):
    return _blend(x, F.rgb_to_grayscale(x, num_output_channels=3), factor)


def _hue(x, shift):
    """Per-sample hue rotation (shift = fraction of the colour wheel), as torchvision's adjust_hue."""
    if _HSV is not None:  # torchvision's own batched RGB<->HSV conversion, one shift per sample
        rgb_to_hsv, hsv_to_rgb = _HSV
        h, s, v = rgb_to_hsv(x).unbind(dim=-3)
        h = (h + _col(shift, x)[:, 0]).remainder_(1.0)
        return hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    out = torch.empty_like(x)
    for i, h in enumerate(shift.tolist()):
        out[i] = F.adjust_hue(x[i], float(h)) if h != 0 else x[i]
    return out


try:  # the conversions adjust_hue is built on; per-image adjust_hue calls are the fallback
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    _HSV = (_rgb_to_hsv, _hsv_to_rgb)
except ImportError:  # pragma: no cover - depends on the torchvision version
    _HSV = None


# ---------------------------------------------------------------- operations

def _identity(x, g):
    return x


def _hflip(x, g):
    return F.horizontal_flip(x)


def _vflip(x, g):
    return F.vertical_flip(x)


def _rot90(x, g):
    """Rotate each image by 90, 180 or 270 degrees (k uniform in 1..3)."""
    square = x.shape[-1] == x.shape[-2]
    ks = torch.randint(1, 4, (x.shape[0],), generator=g)
    if not square:  # only 180 degrees keeps a non-square shape
        ks = torch.full_like(ks, 2)
    out = torch.empty_like(x)
    for k in (1, 2, 3):
        idx = (ks == k).nonzero().flatten().to(x.device)
        if len(idx):
            out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
    return out


def _shift_scale_rotate(x, g, shift_limit, scale_limit, rotate_limit):
    n = x.shape[0]
    angle = _uniform(g, n, -rotate_limit, rotate_limit) * (math.pi / 180.0)
    scale = _uniform(g, n, 1.0 - scale_limit, 1.0 + scale_limit)
    tx = _uniform(g, n, -shift_limit, shift_limit) * 2.0  # normalised coordinates span 2
    ty = _uniform(g, n, -shift_limit, shift_limit) * 2.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = TF.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    # Reflection keeps tissue texture at the borders instead of black corners.
    return TF.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _brightness_contrast(x, g, brightness_limit, contrast_limit):
    n = x.shape[0]
    b = _uniform(g, n, 1.0 - brightness_limit, 1.0 + brightness_limit)
    c = _uniform(g, n, 1.0 - contrast_limit, 1.0 + contrast_limit)
    return _contrast(_brightness(x, b), c)


def _color_jitter(x, g, brightness, contrast, saturation, hue):
    n = x.shape[0]
    b = _uniform(g, n, max(0.0, 1.0 - brightness), 1.0 + brightness)
    c = _uniform(g, n, max(0.0, 1.0 - contrast), 1.0 + contrast)
    s = _uniform(g, n, max(0.0, 1.0 - saturation), 1.0 + saturation)
    h = _uniform(g, n, -hue, hue)
    return _hue(_saturation(_contrast(_brightness(x, b), c), s), h)


def _equalize(x, g):
    return F.equalize(x)


def _hue_saturation_value(x, g, hue_shift, sat_shift, val_shift):
    n = x.shape[0]
    h = _uniform(g, n, -hue_shift, hue_shift)
    s = _uniform(g, n, 1.0 - sat_shift, 1.0 + sat_shift)
    v = _uniform(g, n, 1.0 - val_shift, 1.0 + val_shift)
    return _brightness(_saturation(_hue(x, h), s), v)


def _gaussian_blur(x, g, sigma_min, sigma_max):
    lo, hi = min(sigma_min, sigma_max), max(sigma_min, sigma_max)
    sigmas = _uniform(g, x.shape[0], lo, hi).tolist()
    size = 2 * math.ceil(3.0 * hi) + 1
    size = min(size, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
    out = torch.empty_like(x)
    for i, s in enumerate(sigmas):
        out[i] = F.gaussian_blur(x[i:i + 1], [size, size], [s, s])[0]
    return out


# Ruifrok & Johnston (2001) stain optical-density vectors (rows: haematoxylin, eosin, DAB), as used
# by scikit-image's rgb2hed. Optical density OD = -ln(I) is linear in stain amounts:
# OD = stains @ RGB_FROM_HED, so stains = OD @ inv(RGB_FROM_HED).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]], dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_OD_EPS = 1e-6


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """Colour deconvolution: B x 3 x H x W RGB in [0, 1] -> stain amounts (H, E, DAB) in OD units."""
    od = -torch.log(x.clamp(min=_OD_EPS))
    m = torch.as_tensor(HED_FROM_RGB, dtype=x.dtype, device=x.device)
    return torch.einsum("bchw,cd->bdhw", od, m)


def hed_to_rgb(stains: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`; clamps to [0, 1]."""
    m = torch.as_tensor(RGB_FROM_HED, dtype=stains.dtype, device=stains.device)
    od = torch.einsum("bdhw,dc->bchw", stains, m)
    return torch.exp(-od).clamp_(0.0, 1.0)


def _hed_jitter(x, g, sigma, bias):
    """Stain jitter: each stain amount s -> alpha * s + beta, alpha ~ U(1-sigma, 1+sigma),
    beta ~ U(-bias, bias) (OD units), independently per image and stain."""
    n = x.shape[0]
    alpha = _uniform(g, n * 3, 1.0 - sigma, 1.0 + sigma).view(n, 3, 1, 1).to(x.device, x.dtype)
    beta = _uniform(g, n * 3, -bias, bias).view(n, 3, 1, 1).to(x.device, x.dtype)
    return hed_to_rgb(rgb_to_hed(x) * alpha + beta)


def _mixup(x, y, g, mask, alpha):
    """Mixup (Zhang et al. 2018) within the batch: each selected image is blended with a random partner,
    lam ~ Beta(alpha, alpha) folded to >= 0.5 so the image keeps its identity; targets mix the same way."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    lam = np.random.default_rng(seed).beta(alpha, alpha, size=n)
    lam = torch.as_tensor(np.maximum(lam, 1.0 - lam), dtype=torch.float32)
    lam = torch.where(mask.cpu(), lam, torch.ones_like(lam))
    perm_d = perm.to(x.device)
    lx = _col(lam, x)
    x_out = (lx * x + (1.0 - lx) * x[perm_d]).clamp_(0.0, 1.0)
    y_out = y
    if y is not None:
        ly = lam.to(device=y.device, dtype=y.dtype).view(-1, *([1] * (y.dim() - 1)))
        y_out = ly * y + (1.0 - ly) * y[perm.to(y.device)]
    return x_out, y_out


def _spec(name, description, fn, params=(), default_p=0.5, kind="colour", **kw) -> AugSpec:
    return AugSpec(name=name, description=description, fn=fn, params=tuple(ParamSpec(*p) for p in params),
                   default_p=default_p, kind=kind, **kw)


_SPECS = [
    _spec("Identity", "No change (reference: scores exactly 0).", _identity, default_p=1.0, kind="none"),
    _spec("HorizontalFlip", "Mirror left-right.", _hflip, kind="geometric"),
    _spec("VerticalFlip", "Mirror top-bottom.", _vflip, kind="geometric"),
    _spec("RandomRotate90", "Rotate by 90, 180 or 270 degrees (with p=0.75 all four orientations are "
          "equally likely).", _rot90, default_p=0.75, kind="geometric"),
    _spec("ShiftScaleRotate", "Random affine: shift (fraction of size), scale and rotation, reflected borders.",
          _shift_scale_rotate, [
              ("shift_limit", 0.0625, 0.0, 0.5, "max shift as a fraction of the image size"),
              ("scale_limit", 0.1, 0.0, 0.5, "scale drawn from [1 - limit, 1 + limit]"),
              ("rotate_limit", 45.0, 0.0, 180.0, "max rotation in degrees"),
          ], kind="geometric"),
    _spec("RandomBrightnessContrast", "Brightness then contrast, factors in [1 - limit, 1 + limit].",
          _brightness_contrast, [
              ("brightness_limit", 0.2, 0.0, 1.0, "brightness factor range around 1"),
              ("contrast_limit", 0.2, 0.0, 1.0, "contrast factor range around 1"),
          ]),
    _spec("ColorJitter", "Brightness, contrast, saturation (factors around 1) and hue shift.", _color_jitter, [
        ("brightness", 0.2, 0.0, 1.0, "brightness factor range around 1"),
        ("contrast", 0.2, 0.0, 1.0, "contrast factor range around 1"),
        ("saturation", 0.2, 0.0, 1.0, "saturation factor range around 1"),
        ("hue", 0.05, 0.0, 0.5, "max hue shift as a fraction of the colour wheel"),
    ]),
    _spec("Equalize", "Histogram equalisation per image and channel.", _equalize),
    _spec("HueSaturationValue", "Hue shift, saturation and value (brightness) factors.", _hue_saturation_value, [
        ("hue_shift", 0.05, 0.0, 0.5, "max hue shift as a fraction of the colour wheel"),
        ("sat_shift", 0.2, 0.0, 1.0, "saturation factor range around 1"),
        ("val_shift", 0.1, 0.0, 1.0, "value (brightness) factor range around 1"),
    ]),
    _spec("Mixup", "Blend each image (and its expression targets) with another image of the batch; "
          "mixing weight ~ Beta(alpha, alpha), at least 0.5 for the image itself.", _mixup, [
              ("alpha", 0.4, 0.01, 10.0, "Beta distribution parameter (small: mostly the image itself)"),
          ], kind="batch", batch=True, mixes_targets=True),
    _spec("HEDJitter", "Stain jitter in haematoxylin-eosin-DAB space (Ruifrok & Johnston colour deconvolution): "
          "each stain amount scaled by U(1-sigma, 1+sigma) and shifted by U(-bias, bias).", _hed_jitter, [
              ("sigma", 0.05, 0.0, 0.5, "multiplicative stain jitter"),
              ("bias", 0.05, 0.0, 0.5, "additive stain jitter (optical density units)"),
          ], kind="stain"),
    _spec("GaussianBlur", "Gaussian blur with sigma drawn from [sigma_min, sigma_max] pixels.", _gaussian_blur, [
        ("sigma_min", 0.1, 0.01, 5.0, "smallest blur sigma (pixels)"),
        ("sigma_max", 1.5, 0.01, 5.0, "largest blur sigma (pixels)"),
    ], kind="blur"),
]

AUGMENTATIONS: dict[str, AugSpec] = {s.name: s for s in _SPECS}


def get_spec(name: str) -> AugSpec:
    """The registered augmentation ``name`` (case-insensitive); unknown -> MaiError listing all."""
    spec = AUGMENTATIONS.get(name)
    if spec is None:
        lowered = {k.lower(): v for k, v in AUGMENTATIONS.items()}
        spec = lowered.get(str(name).lower())
    if spec is None:
        raise MaiError(f"unknown augmentation '{name}'",
                       [Problem("augmentation", f"'{name}' is not registered",
                                f"use one of: {', '.join(AUGMENTATIONS)}")])
    return spec


def parse_aug_names(text: str | list[str] | None) -> list[str]:
    """Comma-separated (or list of) augmentation names -> canonical names; None/'' -> all registered."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return list(AUGMENTATIONS)
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in AUGMENTATIONS and t.lower() not in {k.lower() for k in AUGMENTATIONS}]
    if unknown:
        raise MaiError(f"unknown augmentation(s): {', '.join(unknown)}",
                       [Problem("augmentations", f"'{u}' is not registered", f"use one of: {', '.join(AUGMENTATIONS)}")
                        for u in unknown])
    out = []
    for t in items:
        name = get_spec(t).name
        if name not in out:
            out.append(name)
    return out


def as_float_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 or float B x 3 x H x W (or 3 x H x W) -> float32 B x 3 x H x W in [0, 1]."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images shaped B x 3 x H x W, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def apply_aug(name: str, x: torch.Tensor, y: torch.Tensor | None = None, g: torch.Generator | None = None,
              p: float = 1.0, params: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply one registered augmentation to a batch; each image is augmented with probability ``p``
    and its own random parameters. Returns new tensors (inputs are never modified)."""
    spec = get_spec(name)
    kw = spec.resolve(params)
    g = g if g is not None else torch.Generator().manual_seed(0)
    n = x.shape[0]
    mask = torch.rand(n, generator=g) < p
    if spec.batch:
        x_out, y_out = spec.fn(x, y, g, mask, **kw)
        return x_out.clamp(0.0, 1.0), y_out
    idx = mask.nonzero().flatten()
    if len(idx) == 0:
        return x, y
    if len(idx) == n:
        return spec.fn(x, g, **kw).clamp(0.0, 1.0), y
    out = x.clone()
    idx_d = idx.to(x.device)
    out[idx_d] = spec.fn(x[idx_d], g, **kw).clamp(0.0, 1.0)
    return out, y
