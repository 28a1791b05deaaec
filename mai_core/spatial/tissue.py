"""Where the tissue is: a mask from a slide thumbnail, and a grid of tile centres over it.

The mask (:func:`tissue_mask`) keeps pixels that are both coloured and not bright: haematoxylin and eosin
stain tissue with saturated colour, while glass, background and most pen-free margins are pale grey or
white. The saturation threshold is Otsu's on the thumbnail (never below ``min_saturation``, so a slide
that is nearly all tissue or all glass is not split on noise); small specks are removed and small holes
(lumens, fat vacuoles inside tissue) are filled by morphology (scikit-image).

:func:`grid_centres` lays a square grid of step ``step_px`` (level-0 pixels) over the slide and keeps
the centres whose tile footprint is at least ``min_cover`` tissue, measured on the mask by an integral
image (constant time per tile).
"""

from __future__ import annotations

import numpy as np

from mai_core.errors import MaiError, Problem


def tissue_mask(thumb: np.ndarray, min_saturation: float = 0.07, max_brightness: float = 0.92,
                min_object_fraction: float = 0.0005) -> np.ndarray:
    """bool H×W mask of tissue on an RGB uint8 thumbnail."""
    from skimage import color, filters, morphology

    rgb = np.asarray(thumb, dtype=np.float32) / 255.0
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 2:
        raise MaiError("cannot find tissue on this image", [Problem("thumbnail", f"shape {rgb.shape}",
                                                                   "pass an RGB slide")])
    hsv = color.rgb2hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    try:
        t = float(filters.threshold_otsu(sat)) if np.ptp(sat) > 1e-6 else 1.0
    except ValueError:
        t = 1.0
    mask = (sat > max(t, min_saturation)) & (val < max_brightness) & (val > 0.05)
    area = mask.size
    radius = max(1, int(round(min(mask.shape) / 400)))
    mask = morphology.closing(mask, morphology.disk(radius))
    min_size = max(4, int(area * min_object_fraction))
    mask = morphology.remove_small_objects(mask, max_size=min_size)
    mask = morphology.remove_small_holes(mask, max_size=min_size * 4)
    return mask.astype(bool)


def grid_centres(mask: np.ndarray, scale: float, width: int, height: int, step_px: float, tile_px: int,
                 min_cover: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(centres n×2 int level-0 px, grid indices n×2 (col, row)) of tiles covering tissue.

    ``scale`` = mask pixels per level-0 pixel; ``tile_px`` = tile side in level-0 pixels.
    """
    if step_px <= 0 or not np.isfinite(step_px):
        raise MaiError("invalid grid step", [Problem("--grid-um", f"{step_px} px", "give a positive step")])
    cols = np.arange(step_px / 2, width, step_px)
    rows = np.arange(step_px / 2, height, step_px)
    cx, cy = np.meshgrid(cols, rows)
    gi, gj = np.meshgrid(np.arange(len(cols)), np.arange(len(rows)))
    m = np.asarray(mask, dtype=np.float64)
    integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    half = tile_px * scale / 2

    def clip(v, hi):
        return np.clip(np.round(v).astype(np.int64), 0, hi)

    x0, x1 = clip(cx * scale - half, m.shape[1]), clip(cx * scale + half, m.shape[1])
    y0, y1 = clip(cy * scale - half, m.shape[0]), clip(cy * scale + half, m.shape[0])
    x1, y1 = np.maximum(x1, x0 + 1).clip(max=m.shape[1]), np.maximum(y1, y0 + 1).clip(max=m.shape[0])
    x0, y0 = np.minimum(x0, x1 - 1), np.minimum(y0, y1 - 1)
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    frac = covered / ((x1 - x0) * (y1 - y0))
    keep = frac >= min_cover
    centres = np.stack([np.floor(cx[keep] + 0.5), np.floor(cy[keep] + 0.5)], 1).astype(np.int64)
    return centres, np.stack([gi[keep], gj[keep]], 1)
