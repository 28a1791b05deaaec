"""Full-resolution H&E images: decoding under a deliberate pixel limit, and cutting patches.

Full-resolution slides exceed PIL's decompression-bomb limit (about 89 M pixels). The limit is raised to
``max_pixels`` (default ``DEFAULT_MAX_PIXELS``, 1e9 pixels, about 3 GB of RGB) only while the image is
being decoded, then restored.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager

import numpy as np

from mai_core.data.images import PATCH_SIZE
from mai_core.data.stfiles import need_file
from mai_core.errors import MaiError, Problem

DEFAULT_MAX_PIXELS = 1_000_000_000
_PIL_LIMIT_LOCK = threading.Lock()
_WHITE = 255


@contextmanager
def pil_pixel_limit(max_pixels: int):
    """Temporarily set ``PIL.Image.MAX_IMAGE_PIXELS`` to ``max_pixels``; restore it afterwards."""
    from PIL import Image

    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = int(max_pixels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _to_array(im, rows: int = 512) -> np.ndarray:
    """RGB PIL image -> uint8 HxWx3, converted in horizontal strips (no second full-size copy)."""
    w, h = im.size
    arr = np.empty((h, w, 3), dtype=np.uint8)
    for y in range(0, h, rows):
        y1 = min(y + rows, h)
        arr[y:y1] = np.frombuffer(im.crop((0, y, w, y1)).tobytes(), dtype=np.uint8).reshape(y1 - y, w, 3)
    return arr


def load_slide_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a full-resolution H&E image to uint8 HxWx3, allowing up to ``max_pixels`` pixels."""
    from PIL import Image, UnidentifiedImageError

    path = need_file(path, "H&E image", "pass the full-resolution H&E image (JPEG/PNG/TIFF)")
    if not max_pixels or int(max_pixels) <= 0:
        raise MaiError("invalid pixel limit", [Problem("--max-pixels", f"{max_pixels!r}", "give a positive number")])
    try:
        with pil_pixel_limit(max_pixels):
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise MaiError("H&E image is larger than the pixel limit", [Problem(
                        str(path), f"{w}x{h} = {w * h:,} pixels > limit {int(max_pixels):,}",
                        f"if the file is trusted, raise the limit (--max-pixels {w * h})")])
                im.load()
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                arr = _to_array(rgb)
                del rgb
    except MaiError:
        raise
    except Image.DecompressionBombError as exc:
        raise MaiError("H&E image is larger than the pixel limit", [Problem(str(path), str(exc),
                                                                           "raise --max-pixels")]) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaiError("cannot decode the H&E image", [Problem(str(path), f"{type(exc).__name__}: {exc}",
                                                              "pass a readable JPEG, PNG or TIFF")]) from None
    return arr



def cut_patch(image: np.ndarray, cx: int, cy: int, size: int = PATCH_SIZE) -> tuple[np.ndarray, bool]:
    """The ``size`` x ``size`` patch whose pixel (size//2, size//2) is image[cy, cx].

    Parts outside the image are white. Returns (patch, padded).
    """
    h, w = image.shape[:2]
    half = size // 2
    y0, x0 = int(cy) - half, int(cx) - half
    y1, x1 = y0 + size, x0 + size
    if y0 >= 0 and x0 >= 0 and y1 <= h and x1 <= w:
        return image[y0:y1, x0:x1], False
    patch = np.full((size, size, 3), _WHITE, dtype=np.uint8)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return patch, True
