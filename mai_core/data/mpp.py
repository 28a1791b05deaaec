"""Resolution is data: microns per pixel (mpp) from slide metadata, from the user, or from the spot grid.

Spot arrays have a known geometry (centre-to-centre distance between neighbouring spots):

- legacy ST (the 1k array of HER2ST and most 2016-2020 studies): spots 100 µm across, 200 µm apart on a
  square grid; array coordinates ``x``/``y`` (or the refined ``new_x``/``new_y``) step 1 per 200 µm;
- 10x Visium: spots 55 µm across, 100 µm apart on a hexagonal grid; ``array_col`` steps 2 per 100 µm
  along a row, ``array_row`` steps 1 per 100·√3/2 µm.

:func:`mpp_from_array` fits pixel = A·array + b by least squares and converts the pixel length of one array
step into µm per pixel (exact up to the image's registration; about 0.1 % on HER2ST). Without array
coordinates :func:`mpp_from_spacing` uses the median nearest-neighbour distance between spot centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mai_core.data.wsi import MPP_RANGE, plausible_mpp
from mai_core.errors import MaiError, Problem


@dataclass(frozen=True)
class Platform:
    name: str
    pitch_um: float  # centre-to-centre distance of neighbouring spots
    spot_um: float  # spot diameter
    unit_um: tuple[float, float]  # µm per array step along (array x / column, array y / row)


PLATFORMS = {
    "st": Platform("legacy ST", 200.0, 100.0, (200.0, 200.0)),
    "visium": Platform("10x Visium", 100.0, 55.0, (50.0, 100.0 * math.sqrt(3) / 2)),
}
VISIUM_SCALEFACTOR_SPOT_UM = 65.0  # Space Ranger's spot_diameter_fullres spans a theoretical 65 µm spot


def check_mpp(value, where: str = "--mpp") -> float:
    v = plausible_mpp(value)
    if v is None:
        raise MaiError("implausible resolution", [Problem(
            where, f"{value!r} µm per pixel", f"give microns per pixel between {MPP_RANGE[0]} and {MPP_RANGE[1]} "
            "(about 0.25 at 40x, 0.5 at 20x, 1.0 at 10x)")])
    return v


def mpp_from_array(pixel_xy, array_xy, platform: str) -> float | None:
    """µm per pixel from spot centres (n×2 px) and their array coordinates (n×2); None when unfit."""
    p = PLATFORMS[platform]
    px = np.asarray(pixel_xy, dtype=np.float64).reshape(-1, 2)
    ar = np.asarray(array_xy, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(px).all(1) & np.isfinite(ar).all(1)
    px, ar = px[ok], ar[ok]
    if len(px) < 3 or np.ptp(ar[:, 0]) == 0 or np.ptp(ar[:, 1]) == 0:
        return None
    design = np.c_[ar, np.ones(len(ar))]
    coef, *_ = np.linalg.lstsq(design, px, rcond=None)
    step_px = np.linalg.norm(coef[:2], axis=1)  # pixels per array step along each array axis
    if not np.all(step_px > 0):
        return None
    est = np.array(p.unit_um) / step_px
    if abs(est[0] / est[1] - 1) > 0.1:  # axes disagree: not this platform's grid
        return None
    return plausible_mpp(float(est.mean()))


def mpp_from_spacing(pixel_xy, platform: str) -> float | None:
    """µm per pixel from the median nearest-neighbour distance between spot centres; None when unfit."""
    from scipy.spatial import cKDTree

    px = np.asarray(pixel_xy, dtype=np.float64).reshape(-1, 2)
    px = px[np.isfinite(px).all(1)]
    if len(px) < 3:
        return None
    dist, _ = cKDTree(px).query(px, k=2)
    d = float(np.median(dist[:, 1]))
    return plausible_mpp(PLATFORMS[platform].pitch_um / d) if d > 0 else None


def estimate_mpp(pixel_xy, array_xy=None, platform: str = "st") -> tuple[float | None, str]:
    """(mpp, how it was found) from a spot grid: array fit first, nearest-neighbour spacing second."""
    name = PLATFORMS[platform].name
    if array_xy is not None:
        v = mpp_from_array(pixel_xy, array_xy, platform)
        if v is not None:
            return v, f"spot grid ({name}, {PLATFORMS[platform].pitch_um:g} µm pitch, array fit)"
    v = mpp_from_spacing(pixel_xy, platform)
    if v is not None:
        return v, f"spot spacing ({name}, {PLATFORMS[platform].pitch_um:g} µm pitch)"
    return None, "unknown"


def mpp_from_scalefactors(scalefactors: dict) -> float | None:
    """µm per pixel from Space Ranger's ``spot_diameter_fullres`` (pixels across a 65 µm spot)."""
    try:
        d = float(scalefactors.get("spot_diameter_fullres"))
    except (TypeError, ValueError):
        return None
    return plausible_mpp(VISIUM_SCALEFACTOR_SPOT_UM / d) if d > 0 else None
