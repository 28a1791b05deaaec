"""Display: colour maps, heat maps, overlays on the H&E patch, colour bars.
"""

from __future__ import annotations


import numpy as np

from mai_core.errors import MaiError


# ----------------------------------------------------------------------------------------------
# Display
# ----------------------------------------------------------------------------------------------

COLORMAPS = ("jet", "inferno", "viridis", "magma", "turbo")


def _cmap(name: str):
    import matplotlib

    if name not in matplotlib.colormaps:
        raise MaiError(f"unknown colour map {name!r}", hint=f"use one of {', '.join(COLORMAPS)}")
    return matplotlib.colormaps[name]


def heatmap(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A [0, 1] map → uint8 H×W×3 colours."""
    rgb = _cmap(cmap)(np.clip(np.asarray(cam, dtype=np.float32), 0, 1))[..., :3]
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Map blended over the image: uint8 H×W×3; ``alpha`` = opacity of the map (0 = image only)."""
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
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def colorbar(cmap: str = "jet", width: int = 224, height: int = 12) -> np.ndarray:
    """A horizontal colour bar (uint8 height×width×3), low on the left."""
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    return heatmap(ramp, cmap)


def save_png(path, rgb: np.ndarray) -> None:
    from PIL import Image

    from mai_core.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")


