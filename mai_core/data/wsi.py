"""Whole-slide and large-image readers: regions on demand, never a whole slide in memory.

:func:`open_slide` returns a :class:`Slide` for

- ``openslide``: SVS, NDPI, MRXS, SCN, Philips/Ventana TIFF and generic tiled TIFF (openslide-python, with the
  library shipped by the ``openslide-bin`` wheel);
- ``tifffile``: any TIFF / BigTIFF / OME-TIFF, tiled or stripped; a region read decodes only the tiles or strips
  it touches (codecs from ``imagecodecs``), with a small LRU cache of decoded tiles;
- ``pil``: JPEG and PNG; decoded once, under a deliberate pixel limit (``max_pixels``), on the first region
  read; a JPEG thumbnail is decoded at 1/2..1/8 scale in the DCT domain without a full decode;
- ``array``: an in-memory uint8 H×W×3 image.

Coordinates are level-0 pixels, x = column, y = row. Areas outside the image read as white, like
the importer's padded patches. Resolution (µm per pixel) comes from the slide's metadata when it has a
plausible value (:data:`MPP_RANGE`); :attr:`Slide.mpp_source` says where it came from.

:func:`iter_patches` cuts many square patches (e.g. every spot of a section) block by block, so every
tile of the slide is decoded about once; :meth:`Slide.read_patch` cuts one. Both resample the same way,
so a patch does not depend on which other patches were read with it.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mai_core.data.slideimage import DEFAULT_MAX_PIXELS, load_slide_image, pil_pixel_limit
from mai_core.data.stfiles import need_file
from mai_core.errors import MaiError, Problem

MPP_RANGE = (0.05, 50.0)  # plausible µm per pixel of an H&E image; values outside are ignored as metadata
PIL_SUFFIXES = (".jpg", ".jpeg", ".png")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
SLIDE_SUFFIXES = PIL_SUFFIXES + TIFF_SUFFIXES + OPENSLIDE_SUFFIXES
BACKENDS = ("auto", "openslide", "tifffile", "pil")
_WHITE = 255


def plausible_mpp(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and MPP_RANGE[0] <= v <= MPP_RANGE[1] else None


def _resize_box(region: np.ndarray, box: tuple[float, float, float, float], out: int) -> np.ndarray:
    """``region``'s sub-box (x0, y0, x1, y1, float pixels) resampled to out×out (bilinear, antialiased)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(region))
    return np.asarray(im.resize((out, out), Image.BILINEAR, box=box), dtype=np.uint8)


class Slide:
    """A slide image read by regions. Subclasses implement :meth:`_read_inside`."""

    backend = "base"

    def __init__(self, path, level_dims: list[tuple[int, int]], mpp: float | None, mpp_source: str):
        self.path = Path(path) if path is not None else None
        self.level_dims = [(int(w), int(h)) for w, h in level_dims]
        self.mpp = mpp
        self.mpp_source = mpp_source if mpp is not None else "unknown"

    # -- geometry ----------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self.level_dims[0][0]

    @property
    def height(self) -> int:
        return self.level_dims[0][1]

    @property
    def level_downsamples(self) -> list[float]:
        w0 = self.width
        return [w0 / w for w, _ in self.level_dims]

    def level_for(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (level 0 when none is)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6) and d > self.level_downsamples[best]:
                best = i
        return best

    def describe(self) -> dict:
        return {"path": str(self.path) if self.path else None, "backend": self.backend, "width": self.width,
                "height": self.height, "levels": len(self.level_dims), "mpp": self.mpp, "mpp_source": self.mpp_source}

    # -- reading -----------------------------------------------------------------------------------
    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 h×w×3 at ``level`` (x, y in that level's pixels); outside the image is white."""
        lw, lh = self.level_dims[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
            return self._read_inside(level, x, y, w, h)
        out = np.full((h, w, 3), _WHITE, dtype=np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read_inside(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level-0 pixels of the box (x, y, w, h), white outside the image."""
        return self.read_level(0, int(x), int(y), int(w), int(h))

    def patch_plan(self, read_size: int, out_size: int) -> tuple[int, float, int]:
        """(level, its downsample, margin in level pixels) used to turn read_size level-0 px into out_size px."""
        if read_size == out_size:
            return 0, 1.0, 0
        level = self.level_for(read_size / out_size)
        d = self.level_downsamples[level]
        scale = read_size / d / out_size  # level pixels per output pixel
        return level, d, int(math.ceil(2 * max(scale, 1.0))) + 2

    def read_patch(self, cx: int, cy: int, read_size: int, out_size: int | None = None) -> np.ndarray:
        """The read_size×read_size level-0 box centred on (cx, cy) (pixel (size//2, size//2) = centre),
        resampled to out_size×out_size."""
        return next(iter_patches(self, np.array([[cx, cy]]), read_size, out_size or read_size, block=read_size))[1][0]

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """(uint8 thumbnail whose longer side is at most ``max_side``, thumbnail px per level-0 px).

        Read from the coarsest level that is still at least as detailed, in bands of rows, so a slide
        without a pyramid never needs its whole level 0 in memory at once.
        """
        from PIL import Image

        scale = min(1.0, max_side / max(self.width, self.height))
        tw, th = max(1, round(self.width * scale)), max(1, round(self.height * scale))
        level = self.level_for(1 / scale)
        lw, lh = self.level_dims[level]
        out = np.empty((th, tw, 3), dtype=np.uint8)
        step = max(1, int(8_000_000 // max(lw, 1) * th // max(lh, 1)))  # thumbnail rows per band
        for ty0 in range(0, th, step):
            ty1 = min(th, ty0 + step)
            top, bottom = ty0 * lh / th, ty1 * lh / th
            ly0, ly1 = int(math.floor(top)), min(lh, int(math.ceil(bottom)))
            band = Image.fromarray(self.read_level(level, 0, ly0, lw, ly1 - ly0))
            out[ty0:ty1] = np.asarray(band.resize((tw, ty1 - ty0), Image.BILINEAR,
                                                  box=(0, top - ly0, lw, bottom - ly0)), dtype=np.uint8)
        return out, tw / self.width

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, {self.width}x{self.height}, mpp={self.mpp})"


def iter_patches(slide: Slide, centres, read_size: int, out_size: int, block: int = 2048):
    """Yield (indices, uint8 k×out×out×3) for square patches centred on integer ``centres`` (n×2: x, y).

    Patches are grouped into ``block``×``block`` level-0 areas; each area's union box is read once.
    Every index appears exactly once. A patch is read at the coarsest level that still has at least
    ``read_size / out_size`` resolution and resampled with a box filter-aware bilinear resize from a
    margin-padded region, so its pixels do not depend on the grouping.
    """
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    if len(c) == 0:
        return
    half = read_size // 2
    x0s, y0s = c[:, 0] - half, c[:, 1] - half
    level, d, margin = slide.patch_plan(read_size, out_size)
    block = max(int(block), read_size)
    keys = (y0s // block) * (1 << 32) + (x0s // block)
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    for group in np.split(order, bounds):
        bx0, by0 = int(x0s[group].min()), int(y0s[group].min())
        bx1, by1 = int(x0s[group].max()) + read_size, int(y0s[group].max()) + read_size
        if read_size == out_size:  # native resolution: plain crops
            region = slide.read_level(0, bx0, by0, bx1 - bx0, by1 - by0)
            yield group, np.stack([region[y - by0:y - by0 + read_size, x - bx0:x - bx0 + read_size]
                                   for x, y in zip(x0s[group], y0s[group])])
            continue
        lx0, ly0 = int(math.floor(bx0 / d)) - margin, int(math.floor(by0 / d)) - margin
        lx1, ly1 = int(math.ceil(bx1 / d)) + margin, int(math.ceil(by1 / d)) + margin
        region = slide.read_level(level, lx0, ly0, lx1 - lx0, ly1 - ly0)
        out = np.empty((len(group), out_size, out_size, 3), dtype=np.uint8)
        for k, (x, y) in enumerate(zip(x0s[group], y0s[group])):
            box = (x / d - lx0, y / d - ly0, (x + read_size) / d - lx0, (y + read_size) / d - ly0)
            out[k] = _resize_box(region, box, out_size)
        yield group, out


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------

class ArraySlide(Slide):
    """An in-memory uint8 H×W×3 image."""

    backend = "array"

    def __init__(self, image: np.ndarray, mpp: float | None = None, mpp_source: str = "given", path=None):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise MaiError("slide image must be uint8 H×W×3", [Problem("image", f"shape {arr.shape}, {arr.dtype}",
                                                                     "pass an RGB image")])
        self.image = arr
        super().__init__(path, [(arr.shape[1], arr.shape[0])], mpp, mpp_source)

    def _read_inside(self, level, x, y, w, h):
        return self.image[y:y + h, x:x + w].copy()


class PilSlide(Slide):
    """JPEG / PNG: decoded once on the first region read (pixel limit ``max_pixels``)."""

    backend = "pil"

    def __init__(self, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        from PIL import Image, UnidentifiedImageError

        self.max_pixels = int(max_pixels)
        self._image: np.ndarray | None = None
        self._lock = threading.Lock()
        try:
            with pil_pixel_limit(max(self.max_pixels, 1 << 40)):  # header only; the limit applies at decode
                with Image.open(path) as im:
                    size, fmt, dpi = im.size, im.format, im.info.get("dpi")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise MaiError("cannot decode the H&E image", [Problem(str(path), f"not a readable image ({exc})",
                                                                  "pass a JPEG, PNG, TIFF or a whole-slide file")]) from None
        if size[0] * size[1] > self.max_pixels:  # refuse before anything is decoded or written
            raise MaiError("H&E image is larger than the pixel limit", [Problem(
                str(path), f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels > limit {self.max_pixels:,}",
                f"if the file is trusted, raise the limit (--max-pixels {size[0] * size[1]}), or convert it to a "
                "pyramidal TIFF, which is read by regions")])
        self.format = fmt
        mpp = None
        if dpi and fmt == "PNG":  # JPEG densities are nearly always a meaningless 72/96 dpi default
            mpp = plausible_mpp(25400.0 / float(dpi[0])) if float(dpi[0]) > 0 else None
        super().__init__(path, [size], mpp, "PNG pHYs")

    def _array(self) -> np.ndarray:
        with self._lock:
            if self._image is None:
                self._image = load_slide_image(self.path, max_pixels=self.max_pixels)
            return self._image

    def _read_inside(self, level, x, y, w, h):
        return self._array()[y:y + h, x:x + w].copy()

    def thumbnail(self, max_side: int = 2048):
        from PIL import Image

        if self._image is not None or self.format != "JPEG":
            return super().thumbnail(max_side)
        scale = min(1.0, max_side / max(self.width, self.height))
        tw, th = max(1, round(self.width * scale)), max(1, round(self.height * scale))
        with pil_pixel_limit(max(self.max_pixels, 1 << 40)):
            with Image.open(self.path) as im:
                im.draft("RGB", (tw, th))  # DCT scaling: decodes at 1/2, 1/4 or 1/8 size
                small = im.convert("RGB").resize((tw, th), Image.BILINEAR)
        return np.asarray(small, dtype=np.uint8), tw / self.width

    def close(self):
        self._image = None


class OpenSlideSlide(Slide):
    backend = "openslide"

    def __init__(self, path: Path):
        import openslide

        try:
            self.osr = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise MaiError("OpenSlide cannot open the slide", [Problem(str(path), str(exc),
                                                                     "check that the file is a complete slide")]) from None
        props = self.osr.properties
        mpp, source = None, "unknown"
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
            mpp = plausible_mpp(props.get(key))
            if mpp:
                source = f"slide metadata ({key})"
                break
        if mpp is None:
            mpp = _mpp_from_resolution(props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit"))
            source = "TIFF resolution tags"
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        super().__init__(path, list(self.osr.level_dimensions), mpp, source)

    def _read_inside(self, level, x, y, w, h):
        d = self.level_downsamples[level]
        rgba = np.asarray(self.osr.read_region((int(round(x * d)), int(round(y * d))), level, (w, h)))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = _WHITE  # transparent = no data (outside scanned areas)
        return rgb

    def close(self):
        self.osr.close()


def _mpp_from_resolution(xres, unit) -> float | None:
    """µm per pixel from TIFF XResolution (pixels per unit) and ResolutionUnit (2/inch, 3/centimeter)."""
    if xres is None:
        return None
    try:
        if isinstance(xres, tuple):
            xres = xres[0] / xres[1]
        xres = float(xres)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    unit = str(unit).lower()
    per_unit_um = {"2": 25400.0, "inch": 25400.0, "3": 10000.0, "centimeter": 10000.0}.get(
        unit.rsplit(".", 1)[-1] if "." in unit else unit)
    if per_unit_um is None or xres <= 0:
        return None
    return plausible_mpp(per_unit_um / xres)


_APERIO_MPP = re.compile(r"MPP\s*=\s*([0-9.]+)")
_OME_SIZE = re.compile(r'PhysicalSizeX="([0-9.eE+-]+)"(?:[^>]*PhysicalSizeXUnit="([^"]+)")?')


class TiffSlide(Slide):
    """TIFF via tifffile: pyramid levels from the first series; regions decode only their tiles/strips."""

    backend = "tifffile"

    def __init__(self, path: Path, cache_bytes: int = 96 << 20):
        import tifffile

        try:
            self.tf = tifffile.TiffFile(str(path))
            series = self.tf.series[0]
            pages = [lvl.keyframe for lvl in series.levels]
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
            raise MaiError("cannot read the TIFF slide", [Problem(str(path), f"{type(exc).__name__}: {exc}",
                                                                 "pass a readable TIFF")]) from None
        self.pages = []
        for p in pages:
            if p.planarconfig == 2 and p.samplesperpixel > 1:
                raise MaiError("TIFF layout not supported", [Problem(str(path), "planar (separate) RGB samples",
                                                                    "save the slide with contiguous RGB samples")])
            if p.dtype is None or np.dtype(p.dtype) != np.uint8:
                raise MaiError("TIFF pixel type not supported", [Problem(str(path), f"{p.dtype} samples",
                                                                        "H&E slides must be 8-bit RGB")])
            self.pages.append(p)
        self._lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes, self._cached = int(cache_bytes), 0
        mpp, source = self._metadata_mpp(self.pages[0])
        super().__init__(path, [(p.imagewidth, p.imagelength) for p in self.pages], mpp, source)

    @staticmethod
    def _metadata_mpp(page) -> tuple[float | None, str]:
        desc = page.description or ""
        m = _APERIO_MPP.search(desc)
        if m and plausible_mpp(m.group(1)):
            return float(m.group(1)), "slide metadata (Aperio MPP)"
        m = _OME_SIZE.search(desc)
        if m:
            unit = (m.group(2) or "µm").replace("u", "µ")
            factor = {"µm": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
            if factor and plausible_mpp(float(m.group(1)) * factor):
                return float(m.group(1)) * factor, "OME-XML PhysicalSizeX"
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            mpp = _mpp_from_resolution(tags["XResolution"].value, int(tags["ResolutionUnit"].value))
            if mpp:
                return mpp, "TIFF resolution tags"
        return None, "unknown"

    def _segment(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            page = self.pages[level]
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            fh = self.tf.filehandle
            data = None
            if count:
                fh.seek(offset)
                data = fh.read(count)
        page = self.pages[level]
        seg, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        if seg is None:  # empty tile: white
            seg = np.full(shape, _WHITE, dtype=np.uint8)
        seg = np.asarray(seg).reshape(shape[-3:]) if seg.ndim > 3 else seg
        if seg.ndim == 2:
            seg = seg[..., None]
        if seg.shape[-1] == 1:
            seg = np.repeat(seg, 3, axis=-1)
        seg = np.ascontiguousarray(seg[..., :3])
        with self._lock:
            self._cache[key] = seg
            self._cached += seg.nbytes
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.nbytes
        return seg

    def _read_inside(self, level, x, y, w, h):
        page = self.pages[level]
        out = np.empty((h, w, 3), dtype=np.uint8)
        if page.is_tiled:
            th, tw = page.tilelength, page.tilewidth
            across = -(-page.imagewidth // tw)
            for ty in range(y // th, (y + h - 1) // th + 1):
                for tx in range(x // tw, (x + w - 1) // tw + 1):
                    seg = self._segment(level, ty * across + tx)
                    sy0, sx0 = max(y, ty * th), max(x, tx * tw)
                    sy1, sx1 = min(y + h, (ty + 1) * th), min(x + w, (tx + 1) * tw)
                    out[sy0 - y:sy1 - y, sx0 - x:sx1 - x] = seg[sy0 - ty * th:sy1 - ty * th, sx0 - tx * tw:sx1 - tx * tw]
        else:
            rps = min(page.rowsperstrip or page.imagelength, page.imagelength)
            for s in range(y // rps, (y + h - 1) // rps + 1):
                seg = self._segment(level, s)
                sy0, sy1 = max(y, s * rps), min(y + h, s * rps + seg.shape[0])
                out[sy0 - y:sy1 - y] = seg[sy0 - s * rps:sy1 - s * rps, x:x + w]
        return out

    def close(self):
        self.tf.close()
        self._cache.clear()


# --------------------------------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------------------------------

def _sniff(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def open_slide(path, backend: str = "auto", mpp: float | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Slide:
    """Open a slide or large image for region reads. ``mpp`` overrides the metadata's resolution."""
    path = need_file(path, "slide image", "pass an H&E image: SVS, NDPI, MRXS, TIFF, JPEG or PNG")
    if backend not in BACKENDS:
        raise MaiError("unknown slide reader", [Problem("backend", f"'{backend}'", f"choose one of {', '.join(BACKENDS)}")])
    if mpp is not None and plausible_mpp(mpp) is None:
        raise MaiError("implausible resolution", [Problem("--mpp", f"{mpp} µm per pixel",
                                                         f"give microns per pixel between {MPP_RANGE[0]} and {MPP_RANGE[1]} "
                                                         "(e.g. 0.25 at 40x, 0.5 at 20x)")])
    kind = _sniff(path)
    vendor = None
    if backend in ("auto", "openslide") and (kind == "tiff" or path.suffix.lower() in OPENSLIDE_SUFFIXES):
        import openslide

        vendor = openslide.OpenSlide.detect_format(str(path))
    if backend == "openslide" or (backend == "auto" and vendor and (vendor != "generic-tiff" or kind != "tiff")):
        if vendor is None:
            raise MaiError("OpenSlide does not recognise the slide", [Problem(
                str(path), "not a format OpenSlide reads", "use the automatic reader (tifffile for TIFF, PIL for JPEG/PNG)")])
        slide: Slide = OpenSlideSlide(path)
    elif kind == "tiff" and backend in ("auto", "tifffile"):
        slide = TiffSlide(path)  # generic (pyramidal) TIFF: tifffile reads it directly
    elif kind in ("jpeg", "png") and backend in ("auto", "pil"):
        slide = PilSlide(path, max_pixels=max_pixels)
    else:
        what = {None: "not an image this reader knows", "tiff": "a TIFF", "jpeg": "a JPEG", "png": "a PNG"}[kind]
        raise MaiError("cannot decode the H&E image", [Problem(
            str(path), f"{what} (reader '{backend}')",
            "pass an H&E image: SVS, NDPI, MRXS or another OpenSlide format, TIFF, JPEG or PNG")])
    if mpp is not None:
        slide.mpp, slide.mpp_source = float(mpp), "--mpp"
    return slide
