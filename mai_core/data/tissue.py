"""Synthetic H&E tiles: latent tissue regions (tumour, immune infiltrate, collagenous stroma, lumen, loose
connective tissue), nuclei stamped inside them, and Beer-Lambert colour from hematoxylin and eosin optical
densities. The renderer behind the embedded demo dataset (:mod:`mai_core.data.demo`).
"""

from __future__ import annotations

import math

import numpy as np

TILE = 224
MODULES = ("tumour_proliferation", "immune", "stroma_ecm", "lumen_secretory", "housekeeping")
# Most of a tile the four tissue regions may cover together; the rest is loose connective tissue.
_MAX_TISSUE = 0.97

_YY, _XX = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
_PAD = 16
_CANVAS = TILE + 2 * _PAD
# Stain optical-density directions (R, G, B), roughly as measured on H&E slides.
_H_VEC = np.array([0.62, 0.72, 0.30])
_E_VEC = np.array([0.12, 0.86, 0.36])


def _smooth_field(rng: np.random.Generator, grid: int, size: int = TILE) -> np.ndarray:
    """Smooth random field in [0, 1]: low-resolution noise upsampled bicubically."""
    from PIL import Image

    low = rng.random((grid, grid), dtype=np.float32)
    return np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of radius ``r`` with edge padding (used twice for a soft Gaussian-like blur)."""
    k = 2 * r + 1
    p = np.pad(a, r, mode="edge")
    c = np.cumsum(p, axis=0, dtype=np.float32)
    c = np.vstack([np.zeros((1, c.shape[1]), np.float32), c])
    v = (c[k:] - c[:-k]) / k
    c = np.cumsum(v, axis=1, dtype=np.float32)
    c = np.hstack([np.zeros((c.shape[0], 1), np.float32), c])
    return (c[:, k:] - c[:, :-k]) / k


def _take_quantile(field: np.ndarray, available: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of the tile (among available pixels) where ``field`` is highest."""
    k = int(round(fraction * TILE * TILE))
    if k <= 0:
        return np.zeros_like(available)
    vals = field[available]
    if k >= vals.size:
        return available.copy()
    thr = np.partition(vals, vals.size - k)[vals.size - k]
    return available & (field >= thr)


def _sample_points(rng: np.random.Generator, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(mask.ravel())
    if n <= 0 or idx.size == 0:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    pick = idx[rng.integers(0, idx.size, n)]
    ys = (pick // TILE).astype(np.float32) + rng.random(n, dtype=np.float32)
    xs = (pick % TILE).astype(np.float32) + rng.random(n, dtype=np.float32)
    return xs, ys


def _stamp_nuclei(canvas: np.ndarray, rng: np.random.Generator, xs, ys, a, b, theta, dark,
                  irregular: float = 0.0, rim: float = 0.0) -> None:
    """Draw filled soft ellipses (nuclei) into ``canvas`` (padded, flattened max-composite)."""
    n = len(xs)
    if n == 0:
        return
    reach = int(math.ceil(float(np.max(a)) * (1 + irregular) + 2))
    off = np.arange(-reach, reach + 1, dtype=np.float32)
    ix = np.floor(xs).astype(np.int64)
    iy = np.floor(ys).astype(np.int64)
    dx = (ix[:, None] + off[None, :] + 0.5 - xs[:, None])[:, None, :]  # (n, 1, B)
    dy = (iy[:, None] + off[None, :] + 0.5 - ys[:, None])[:, :, None]  # (n, B, 1)
    c = np.cos(theta).astype(np.float32)[:, None, None]
    s = np.sin(theta).astype(np.float32)[:, None, None]
    u = (dx * c + dy * s) / a[:, None, None]
    v = (dy * c - dx * s) / b[:, None, None]
    r = np.sqrt(u * u + v * v)
    if irregular > 0:  # pleomorphic outline: radius modulated by 2nd and 3rd angular harmonics
        inv = 1.0 / np.maximum(r, 1e-6)
        cs, sn = u * inv, v * inv  # cos and sin of the polar angle
        p = rng.uniform(0, 2 * np.pi, (2, n)).astype(np.float32)
        e = irregular * rng.random((2, n), dtype=np.float32)
        c2, s2 = cs * cs - sn * sn, 2 * cs * sn
        c3, s3 = cs * (4 * cs * cs - 3), sn * (3 - 4 * sn * sn)
        w2c, w2s = (e[0] * np.cos(p[0]))[:, None, None], (e[0] * np.sin(p[0]))[:, None, None]
        w3c, w3s = (e[1] * np.cos(p[1]))[:, None, None], (e[1] * np.sin(p[1]))[:, None, None]
        r = r / (1 + w2c * c2 - w2s * s2 + w3c * c3 - w3s * s3)
    # Soft edge about one pixel wide, measured along the minor axis.
    alpha = np.clip((1 - r) * b[:, None, None] + 0.5, 0, 1)
    val = alpha * dark[:, None, None]
    if rim > 0:  # vesicular chromatin: pale centre, dark membrane
        val *= (1 - rim) + rim * np.minimum(r, 1) ** 2
    rows = (iy[:, None] + off[None, :].astype(np.int64) + _PAD)[:, :, None]
    cols = (ix[:, None] + off[None, :].astype(np.int64) + _PAD)[:, None, :]
    rows = np.clip(rows, 0, _CANVAS - 1)
    cols = np.clip(cols, 0, _CANVAS - 1)
    flat = (rows * _CANVAS + cols).ravel()
    val = val.ravel()
    keep = val > 0
    np.maximum.at(canvas, flat[keep], val[keep])


def _fibres(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Wavy collagen-fibre texture in [0, 1] and its main orientation."""
    theta = float(rng.uniform(0, np.pi))
    c, s = math.cos(theta), math.sin(theta)
    along = _XX * c + _YY * s
    # Irregular waviness: a smooth random displacement plus a weak crimp.
    warp = float(rng.uniform(6, 16)) * (_smooth_field(rng, int(rng.integers(3, 6))) - 0.5)
    crimp = float(rng.uniform(0.5, 2.5)) * np.sin(2 * np.pi * along / rng.uniform(25, 60) + rng.uniform(0, 6.3))
    across = -_XX * s + _YY * c + warp + crimp
    spacing = float(rng.uniform(1.6, 2.8))
    knots = np.arange(-340, 340 + spacing, spacing, dtype=np.float32)
    prof = rng.random(knots.size, dtype=np.float32) * _smooth_1d(rng, knots.size)
    f = np.interp(across.ravel(), knots, prof).reshape(TILE, TILE).astype(np.float32)
    breaks = _smooth_field(rng, int(rng.integers(6, 11)))
    f = np.clip((f - 0.15) * 1.8, 0, 1) * np.clip(0.25 + 1.1 * breaks, 0, 1.1)
    return f, theta


def _smooth_1d(rng: np.random.Generator, n: int) -> np.ndarray:
    """Slowly varying positive weights: groups fibres into bundles with looser gaps between them."""
    coarse = rng.random(n // 12 + 2, dtype=np.float32)
    return 0.35 + 0.65 * np.interp(np.arange(n) / 12.0, np.arange(coarse.size), coarse).astype(np.float32)


def render_tile(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Render one H&E-like tile.

    Returns ``(image uint8 224x224x3, masks {module: bool 224x224}, activities float[len(MODULES)])``.
    """
    from PIL import Image, ImageFilter

    # 1. Latent regions. Each tissue's share of the tile is drawn on its own (so module activities
    # are nearly independent rather than parts of a whole); whatever is left over is loose connective
    # tissue, which drives no module. Placement: highest values of a smooth random field per region.
    tumour_f = rng.beta(1.4, 1.6) * 0.95 if rng.random() < 0.6 else 0.0
    immune_f = rng.beta(1.3, 3.0) * 0.8 if rng.random() < 0.45 else 0.0
    stroma_f = rng.beta(1.4, 1.6) * 0.95 if rng.random() < 0.8 else 0.0
    lumen_f = rng.beta(1.3, 4.0) * 0.6 if rng.random() < 0.4 else 0.0
    total = tumour_f + immune_f + stroma_f + lumen_f
    if total > _MAX_TISSUE:
        tumour_f, immune_f, stroma_f, lumen_f = (x * _MAX_TISSUE / total
                                                 for x in (tumour_f, immune_f, stroma_f, lumen_f))
    # Nuclear chromatin factor: how densely every nucleus in the tile takes up hematoxylin, a
    # per-tile trait independent of the tissue mix (drives the housekeeping module).
    chromatin_f = float(rng.beta(1.5, 1.5))
    available = np.ones((TILE, TILE), dtype=bool)
    regions = {}
    for name, frac, grid in (("lumen", lumen_f, int(rng.integers(4, 8))),
                             ("tumour", tumour_f, int(rng.integers(3, 6))),
                             ("immune", immune_f, int(rng.integers(4, 7))),
                             ("stroma", stroma_f, int(rng.integers(3, 6)))):
        regions[name] = _take_quantile(_smooth_field(rng, grid), available, frac)
        available &= ~regions[name]
    regions["loose"] = available

    # 2. Nuclei per region (hematoxylin concentration on a padded canvas).
    canvas = np.zeros(_CANVAS * _CANVAS, dtype=np.float32)
    fib, fib_theta = _fibres(rng)
    area = {k: float(m.sum()) for k, m in regions.items()}
    # Tumour: large, crowded, pleomorphic, vesicular nuclei.
    n = int(rng.poisson(area["tumour"] * rng.uniform(0.4, 0.6) / (np.pi * 9.0 * 6.5)))
    xs, ys = _sample_points(rng, regions["tumour"], n)
    a = rng.uniform(6.0, 12.5, n).astype(np.float32)
    _stamp_nuclei(canvas, rng, xs, ys, a, a * rng.uniform(0.55, 0.95, n).astype(np.float32),
                  rng.uniform(0, np.pi, n), rng.uniform(0.6, 1.05, n).astype(np.float32),
                  irregular=0.22, rim=0.35)
    # Immune: small, round, very dark, densely packed.
    n = int(rng.poisson(area["immune"] * rng.uniform(0.45, 0.65) / (np.pi * 4.2 ** 2)))
    xs, ys = _sample_points(rng, regions["immune"], n)
    a = rng.uniform(3.2, 5.0, n).astype(np.float32)
    _stamp_nuclei(canvas, rng, xs, ys, a, a * rng.uniform(0.8, 1.0, n).astype(np.float32),
                  rng.uniform(0, np.pi, n), rng.uniform(0.95, 1.3, n).astype(np.float32), irregular=0.05)
    # Collagenous stroma: sparse spindle-shaped fibroblast nuclei along the fibres.
    n = int(rng.poisson(area["stroma"] * rng.uniform(0.04, 0.09) / (np.pi * 8.0 * 2.4)))
    xs, ys = _sample_points(rng, regions["stroma"], n)
    _stamp_nuclei(canvas, rng, xs, ys, rng.uniform(5.5, 11.0, n).astype(np.float32),
                  rng.uniform(1.7, 3.0, n).astype(np.float32),
                  fib_theta + rng.normal(0, 0.25, n), rng.uniform(0.7, 1.0, n).astype(np.float32),
                  irregular=0.05)
    # Loose connective tissue: a few scattered small oval or spindle nuclei in any direction.
    n = int(rng.poisson(area["loose"] * rng.uniform(0.01, 0.03) / (np.pi * 5.0 * 2.8)))
    xs, ys = _sample_points(rng, regions["loose"], n)
    a = rng.uniform(3.5, 7.0, n).astype(np.float32)
    _stamp_nuclei(canvas, rng, xs, ys, a, a * rng.uniform(0.4, 0.8, n).astype(np.float32),
                  rng.uniform(0, np.pi, n), rng.uniform(0.7, 1.0, n).astype(np.float32), irregular=0.05)
    # Epithelial lining around lumens (cells outside the lumen, touching it).
    if area["lumen"] > 0:
        ring = (_box_blur(regions["lumen"].astype(np.float32), 4) > 0.01) & ~regions["lumen"]
        n = int(rng.poisson(ring.sum() / 28.0))
        xs, ys = _sample_points(rng, ring, n)
        a = rng.uniform(4.0, 6.5, n).astype(np.float32)
        _stamp_nuclei(canvas, rng, xs, ys, a, a * rng.uniform(0.6, 0.85, n).astype(np.float32),
                      rng.uniform(0, np.pi, n), rng.uniform(0.7, 1.0, n).astype(np.float32), irregular=0.08)
    nuc = canvas.reshape(_CANVAS, _CANVAS)[_PAD:-_PAD, _PAD:-_PAD]
    nuclei = nuc > 0.25
    # The chromatin factor darkens every nucleus and coarsens its chromatin texture.
    grain = _smooth_field(rng, 90) - 0.5
    hema = nuc * ((0.55 + 0.9 * chromatin_f) * (1.0 + (0.3 + 0.5 * chromatin_f) * grain))

    # 3. Eosin (cytoplasm, collagen) and faint background hematoxylin per region.
    stroma_level = rng.uniform(0.28, 0.45)
    eosin = regions["stroma"] * (stroma_level * (0.35 + 0.85 * fib))
    eosin += regions["tumour"] * (rng.uniform(0.16, 0.26) * (0.75 + 0.5 * _smooth_field(rng, 20)))
    eosin += regions["immune"] * rng.uniform(0.12, 0.2)
    # Loose connective tissue: pale, thin wavy fibres in any direction, with open gaps.
    loose_fib, _ = _fibres(rng)
    gaps = np.clip(2.4 * _smooth_field(rng, int(rng.integers(10, 18))) - 0.6, 0.0, 1.0)
    eosin += regions["loose"] * (rng.uniform(0.05, 0.08) + rng.uniform(0.12, 0.2) * loose_fib ** 1.5 * gaps)
    if rng.random() < 0.35:  # pale eosinophilic secretion in some lumens
        eosin += regions["lumen"] * (0.12 * _smooth_field(rng, 8))
    else:
        eosin += regions["lumen"] * 0.015
    back_h = 0.03 * (~regions["lumen"]) + 0.05 * regions["tumour"] + 0.03 * regions["immune"]
    eosin = _box_blur(_box_blur(eosin.astype(np.float32), 1), 1)
    back_h = _box_blur(back_h.astype(np.float32), 2)

    # 4. Beer-Lambert composition with per-tile stain variation.
    h_vec = _H_VEC + rng.normal(0, 0.04, 3)
    e_vec = _E_VEC + rng.normal(0, 0.04, 3)
    h_vec = np.abs(h_vec) / np.linalg.norm(h_vec)
    e_vec = np.abs(e_vec) / np.linalg.norm(e_vec)
    od = ((hema + back_h)[..., None] * (h_vec * rng.uniform(0.9, 1.1)).astype(np.float32)
          + eosin[..., None] * (e_vec * rng.uniform(0.8, 1.2)).astype(np.float32) + 0.025)
    rgb = 255.0 * np.exp(-np.log(10.0) * od)
    rgb += rng.normal(0, 2.5, rgb.shape).astype(np.float32)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    image = np.asarray(img)

    masks = {
        "tumour_proliferation": regions["tumour"], "immune": regions["immune"],
        "stroma_ecm": regions["stroma"], "lumen_secretory": regions["lumen"], "housekeeping": nuclei,
    }
    activities = np.array([masks[m].mean() if m != "housekeeping" else chromatin_f for m in MODULES])
    return image, masks, activities
