"""Streaming tiles off a slide in batches, with reading overlapped with prediction.

Tiles are read block by block (:func:`mai_core.data.wsi.iter_patches`' grouping: each slide tile is decoded
about once) by a small thread pool, at most ``prefetch`` blocks ahead of the consumer, and handed out as
uint8 B×S×S×3 batches with the row indices they belong to. Memory stays bounded by the blocks in flight
and one batch, whatever the slide's size. Decoders (libjpeg, zlib, PIL resampling) release the GIL, so
the threads overlap with each other and with the model.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mai_core.data.wsi import Slide, iter_patches

DEFAULT_BLOCK = 2048


def plan_blocks(centres, read_size: int, block: int = DEFAULT_BLOCK) -> list[np.ndarray]:
    """Row indices grouped by the ``block``×``block`` level-0 area their tile starts in (row-major)."""
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    if not len(c):
        return []
    block = max(int(block), int(read_size))
    x0, y0 = c[:, 0] - read_size // 2, c[:, 1] - read_size // 2
    keys = (y0 // block) * (1 << 32) + (x0 // block)
    order = np.argsort(keys, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(keys[order])) + 1)


def _read_group(slide: Slide, centres: np.ndarray, group: np.ndarray, read_size: int, out_size: int):
    out = np.empty((len(group), out_size, out_size, 3), dtype=np.uint8)
    for idx, patches in iter_patches(slide, centres[group], read_size, out_size, block=1 << 30):
        out[idx] = patches
    return group, out


def stream_tiles(slide: Slide, centres, read_size: int, out_size: int, batch_size: int = 64, workers: int = 2,
                 prefetch: int = 4, block: int = DEFAULT_BLOCK, stop: threading.Event | None = None):
    """Yield (row indices, uint8 k×out×out×3) batches covering every centre once, in block order."""
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    groups = plan_blocks(centres, read_size, block)
    pending: deque = deque()
    buf_idx: list[np.ndarray] = []
    buf_img: list[np.ndarray] = []
    n_buf = 0
    with ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="mai-tiles") as pool:
        it = iter(groups)

        def submit_next() -> bool:
            g = next(it, None)
            if g is None:
                return False
            pending.append(pool.submit(_read_group, slide, centres, g, read_size, out_size))
            return True

        for _ in range(max(1, int(prefetch))):
            if not submit_next():
                break
        try:
            while pending:
                if stop is not None and stop.is_set():
                    return
                group, tiles = pending.popleft().result()
                submit_next()
                buf_idx.append(group)
                buf_img.append(tiles)
                n_buf += len(group)
                while n_buf >= batch_size:
                    idx, img = np.concatenate(buf_idx), np.concatenate(buf_img)
                    yield idx[:batch_size], img[:batch_size]
                    buf_idx, buf_img = [idx[batch_size:]], [img[batch_size:]]
                    n_buf -= batch_size
            if n_buf:
                yield np.concatenate(buf_idx), np.concatenate(buf_img)
        finally:
            for f in pending:
                f.cancel()
