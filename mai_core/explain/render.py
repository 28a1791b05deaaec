"""Display: colour maps, heat maps, overlays on the H&E patch, colour bars.
"""

from __future__ import annotations


import numpy as np

from mai_core.errors import MaiError


# ----------------------------------------------------------------------------------------------
# Display
# ----------------------------------------------------------------------------------------------

# Perceptually uniform maps first (equal steps in value look like equal steps in colour); jet and turbo
# stay available for comparison with published figures.
COLORMAPS = ("inferno", "viridis", "magma", "cividis", "turbo", "jet")
DEFAULT_COLORMAP = "inferno"
SCALINGS = {
    "per map": "each map stretched to its own maximum: shows where each gene looks, even when its signal is weak",
    "shared": "one scale across the genes shown: a weak map stays faint, so genes predicted near zero do not "
              "get painted hotspots",
}


def _cmap(name: str):
    import matplotlib

    if name not in matplotlib.colormaps:
        raise MaiError(f"unknown colour map {name!r}", hint=f"use one of {', '.join(COLORMAPS)}")
    return matplotlib.colormaps[name]


def heatmap(cam: np.ndarray, cmap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """A [0, 1] map → uint8 H×W×3 colours."""
    rgb = _cmap(cmap)(np.clip(np.asarray(cam, dtype=np.float32), 0, 1))[..., :3]
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = DEFAULT_COLORMAP,
            weighted: bool = False) -> np.ndarray:
    """Map blended over the image: uint8 H×W×3; ``alpha`` = opacity of the map (0 = image only).

    ``weighted``: the opacity at each pixel is ``alpha × map value``, so the tissue stays visible where
    the map is low and the colour marks only where it is high (the app's default).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise MaiError(f"opacity must be between 0 and 1, got {alpha}")
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != img.shape[:2]:
        import cv2

        cam = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = heatmap(cam, cmap).astype(np.float32)
    a = float(alpha) * np.clip(cam, 0, 1)[..., None] if weighted else float(alpha)
    out = (1.0 - a) * img.astype(np.float32) + a * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def shared_scale(cams: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Put per-map scaled CAMs (N×G×H×W, each in [0, 1]) on one scale per image across the G genes.

    ``peaks`` (N×G) is each map's range before scaling (``CamResult.peaks``): map g of image i becomes
    ``cams[i, g] × peaks[i, g] / max_g peaks[i, g]``, so the strongest map keeps its colours and weaker
    ones fade in proportion. All-zero peaks leave the maps at zero.
    """
    cams = np.asarray(cams, dtype=np.float32)
    peaks = np.asarray(peaks, dtype=np.float32)
    if peaks.shape != cams.shape[:2]:
        raise MaiError(f"peaks of shape {peaks.shape} do not match maps of shape {cams.shape}")
    top = peaks.max(axis=1, keepdims=True) if peaks.size else peaks
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(top > 0, peaks / np.where(top > 0, top, 1.0), 0.0)
    return cams * factor[:, :, None, None]


def colorbar(cmap: str = DEFAULT_COLORMAP, width: int = 224, height: int = 12) -> np.ndarray:
    """A horizontal colour bar (uint8 height×width×3), low on the left."""
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    return heatmap(ramp, cmap)


def save_png(path, rgb: np.ndarray) -> None:
    from PIL import Image

    from mai_core.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")


