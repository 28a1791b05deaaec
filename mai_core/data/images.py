"""Reading image patches: one file, many files, or a whole split decoded once into a uint8 RAM cache."""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

from mai_core.errors import MaiError, Problem

PATCH_SIZE = 224


def load_image(path: str | os.PathLike, where: str | None = None) -> np.ndarray:
    """One image as uint8 H×W×3; a missing, truncated or corrupt file is a MaiError naming it (and ``where``)."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's ways to fail
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise MaiError(f"image {path} cannot be read" + (f" ({where})" if where else ""),
                       [Problem(where or str(path), f"{type(exc).__name__}: {detail}".rstrip(": "),
                                "re-export the image as PNG or JPEG, then check the dataset with "
                                "`python -m mai_core validate --data DIR`")]) from None


def load_images(paths, progress: bool = False, labels=None) -> np.ndarray:
    """uint8 N×224×224×3 from image files; ``labels`` (e.g. "train.csv row 5") name each in errors."""
    paths = list(paths)
    labels = list(labels) if labels is not None else None
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc="loading images", unit="img", leave=False)
    out = np.empty((len(paths), PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8)
    for i, p in enumerate(it):
        img = load_image(p, labels[i] if labels is not None else None)
        if img.shape[:2] != (PATCH_SIZE, PATCH_SIZE):
            img = np.asarray(Image.fromarray(img).resize((PATCH_SIZE, PATCH_SIZE)), dtype=np.uint8)
        out[i] = img
    return out


def load_image_cache(ds, indices, workers: int = 2, progress: bool = True) -> np.ndarray:
    """Decode images once into a uint8 N×224×224×3 array (threads over chunks)."""
    from concurrent.futures import ThreadPoolExecutor

    indices = np.asarray(indices)
    chunks = [indices[i:i + 64] for i in range(0, len(indices), 64)]
    out = np.empty((len(indices), 224, 224, 3), dtype=np.uint8)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(indices), desc="decoding images", unit="img", disable=not progress, file=sys.stderr)
    starts = np.cumsum([0] + [len(c) for c in chunks])

    def job(i):
        out[starts[i]:starts[i + 1]] = ds.images("train", chunks[i])
        bar.update(len(chunks[i]))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(job, range(len(chunks))))
    bar.close()
    return out
