"""Whole-slide inference: ``predict_slide`` end to end vs a naive tile loop, peak memory on a 40,000 × 40,000 px
slide, and the time until the slide viewer's map is built — all measured in the same run.

    .venv/bin/python bench/slide_inference.py [--side 8000] [--big-side 40000] [--big-grid-um 400]
                                              [--naive 60] [--backbone test_efficientnet] [--image-size 224]
                                              [--run RUN] [--no-big] [--keep DIR]

The bench writes its own slides into a temporary folder: tiled pyramidal TIFFs (JPEG tiles, 0.5 µm/px,
levels down to ≤ 2,048 px) of demo H&E tiles inside an elliptical tissue area on a pale background, tile
by tile (the 40,000 px slide never exists in memory). A small run is trained on the demo data (or ``--run``).

end to end  ``predict_slide`` over the tissue grid of the ``--side`` slide (tissue mask, block-wise reads in
            a thread pool, batches through ``Predictor.predict_images``, AnnData written): tiles/s of the
            prediction phase and of the whole call.
naive       the first ``--naive`` tiles of the same grid, one at a time: read the region, through PIL,
            the same predictor on a batch of one. Same numbers expected (the largest difference is printed).
big slide   ``predict_slide`` over the ``--big-side`` slide (grid step ``--big-grid-um``) in a fresh process;
            its peak resident memory (VmHWM) against the 2 GiB goal, and its baseline after loading the model.
viewer      loading the prediction, building the map figure (thumbnail + one WebGL trace, measured-style
            second panel off) and its JSON, as the Slide viewer does on first view; payload size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TILE = 256
BACKGROUND = 242
MPP = 0.5


# ------------------------------------------------------------------------------------------------ the slide
def _choices(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int, k: int) -> np.ndarray:
    """Which demo tile fills level-0 TIFF tile (row, col); -1 = background (outside the tissue ellipse)."""
    cy, cx = (n_rows - 1) / 2, (n_cols - 1) / 2
    inside = ((rows - cy) / (0.40 * n_rows)) ** 2 + ((cols - cx) / (0.44 * n_cols)) ** 2 <= 1.0
    return np.where(inside, (rows * 7919 + cols * 104729) % k, -1)


def write_slide(path: Path, side: int, tiles: np.ndarray) -> dict:
    """A tiled pyramidal TIFF of ``side`` × ``side`` px written tile by tile (bounded memory)."""
    import tifffile
    from PIL import Image

    n = (side + TILE - 1) // TILE
    k = len(tiles)
    base = np.stack([np.asarray(Image.fromarray(t).resize((TILE, TILE), Image.BILINEAR)) for t in tiles])
    t0 = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level = 0
        while True:
            f = 1 << level
            size = -(-side // f)
            m = (size + TILE - 1) // TILE
            small = TILE // f
            shrunk = base if f == 1 else np.stack([np.asarray(Image.fromarray(t).resize((small, small), Image.BOX))
                                                   for t in base])

            def gen(m=m, f=f, small=small, shrunk=shrunk):
                for r in range(m):
                    for c in range(m):
                        rr, cc = np.meshgrid(np.arange(r * f, (r + 1) * f), np.arange(c * f, (c + 1) * f),
                                             indexing="ij")
                        pick = _choices(rr, cc, n, n, k)
                        out = np.full((TILE, TILE, 3), BACKGROUND, np.uint8)
                        for i in range(f):
                            for j in range(f):
                                if pick[i, j] >= 0:
                                    out[i * small:(i + 1) * small, j * small:(j + 1) * small] = shrunk[pick[i, j]]
                        yield out

            res = 1e4 / (MPP * f)
            tw.write(gen(), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="jpeg", compressionargs={"level": 90}, subfiletype=0 if level == 0 else 1,
                     resolution=(res, res), resolutionunit="CENTIMETER", metadata=None, maxworkers=2)
            if size <= 2048 or small <= 2:
                break
            level += 1
    return {"side": side, "levels": level + 1, "seconds": time.perf_counter() - t0,
            "mb": path.stat().st_size / 1e6}


# ------------------------------------------------------------------------------------------------ a run
def train_run(root: Path, backbone: str, image_size: int) -> Path:
    from mai_core.cli import main
    from mai_core.data.demo import generate_demo

    generate_demo(root / "demo", n_train=64, n_test=8, n_genes=50, seed=0)
    run = root / "run"
    args = ["train", "--data", str(root / "demo"), "--out", str(run), "--backbone", backbone, "--weights", "random",
            "--image-size", str(image_size), "--batch-size", "16", "--workers", "1", "--epochs", "1", "--tta", "off",
            "--quiet", "--seed", "0"]
    if main(args) != 0:
        raise SystemExit("training the bench run failed")
    return run


def demo_tiles(root: Path, n: int = 32) -> np.ndarray:
    from mai_core.data import load_dataset

    if not (root / "demo").is_dir():
        from mai_core.data.demo import generate_demo

        generate_demo(root / "demo", n_train=64, n_test=8, n_genes=50, seed=0)
    return load_dataset(root / "demo").images(indices=range(n))


# ------------------------------------------------------------------------------------------------ measurements
def naive_loop(run: Path, slide_path: Path, centres: np.ndarray, read_px: int):
    """One tile at a time: read the region, PIL, the predictor on a batch of one."""
    from PIL import Image

    from mai_core.data.wsi import open_slide
    from mai_core.runs import load_predictor

    pred = load_predictor(run, device="cpu")
    out = np.empty((len(centres), len(pred.genes)), np.float32)
    with open_slide(slide_path) as slide:
        t0 = time.perf_counter()
        reading = 0.0
        for i, (x, y) in enumerate(centres):
            t1 = time.perf_counter()
            region = slide.read_region(int(x) - read_px // 2, int(y) - read_px // 2, read_px, read_px)
            im = np.array(Image.fromarray(region).convert("RGB"))  # the usual per-tile PIL round trip
            reading += time.perf_counter() - t1
            out[i] = pred.predict_images(im[None])[0]
        seconds = time.perf_counter() - t0
    return out, seconds, reading


def viewer_time(h5ad: Path) -> dict:
    from mai_core.spatial import load_slide_map, map_figure, map_layer, payload_bytes

    t0 = time.perf_counter()
    sm = load_slide_map(h5ad)
    t_load = time.perf_counter() - t0
    layer = map_layer(sm, "gene", sm.genes_by_trust()[0])
    fig = map_figure(sm, layer.values, layer.title, layer.unit, measured=layer.measured)
    size = payload_bytes(fig)
    return {"spots": sm.n, "load_s": t_load, "total_s": time.perf_counter() - t0, "payload_mb": size / 1e6}


def big_child(run: str, slide: str, out: str, grid_um: float) -> None:
    """In a fresh process: baseline RSS after loading the model, then predict_slide; print JSON."""
    from mai_core.runs import load_predictor
    from mai_core.spatial import predict_slide

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    pred = load_predictor(run, device="cpu")
    base = status("VmRSS")
    t0 = time.perf_counter()
    info = predict_slide(run, slide, out, grid_um=grid_um, device="cpu", progress=False, predictor=pred)
    wall = time.perf_counter() - t0
    print(json.dumps({"baseline_rss": base, "peak_rss": status("VmHWM"), "wall_s": wall, "tiles": info["spots"],
                      "tiles_per_s": info["tiles_per_s"], "read_px": info["read_px"]}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=8000, help="side of the end-to-end slide in px (default 8000)")
    ap.add_argument("--big-side", type=int, default=40000, help="side of the memory slide in px (default 40000)")
    ap.add_argument("--big-grid-um", type=float, default=400.0,
                    help="grid step on the memory slide in µm (default 400; 112 = every 224 px tile)")
    ap.add_argument("--grid-um", type=float, default=112.0, help="grid step on the end-to-end slide (default 112)")
    ap.add_argument("--naive", type=int, default=60, help="tiles for the naive loop (default 60)")
    ap.add_argument("--backbone", default="test_efficientnet", help="backbone of the bench run (default test_efficientnet)")
    ap.add_argument("--image-size", type=int, default=224, help="input size of the bench run (default 224)")
    ap.add_argument("--run", help="use this run instead of training a small one")
    ap.add_argument("--no-big", action="store_true", help="skip the 40,000 px slide")
    ap.add_argument("--keep", help="write slides and outputs here instead of a temporary folder")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        big_child(a.child[0], a.child[1], a.child[2], float(a.child[3]))
        return 0
    import anndata
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tmp = tempfile.TemporaryDirectory(prefix="mai-slide-bench-") if not a.keep else None
    root = Path(a.keep or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    os.environ["MAI_WORKSPACE"] = str(root / "ws")
    try:
        from mai_core.spatial import predict_slide

        t0 = time.perf_counter()
        run = Path(a.run) if a.run else train_run(root, a.backbone, a.image_size)
        print(f"run: {run} ({'given' if a.run else f'{a.backbone} @ {a.image_size} px, trained in {time.perf_counter() - t0:.0f} s'})")
        tiles = demo_tiles(root)
        w = write_slide(root / "slide.tif", a.side, tiles)
        print(f"slide: {a.side:,} x {a.side:,} px, {w['levels']} levels, {w['mb']:.0f} MB, written in {w['seconds']:.1f} s")

        out = root / "slide.h5ad"
        t0 = time.perf_counter()
        info = predict_slide(run, root / "slide.tif", out, grid_um=a.grid_um, device="cpu", progress=False)
        e2e_wall = time.perf_counter() - t0
        ad = anndata.read_h5ad(out)
        centres = np.asarray(ad.obsm["spatial"], dtype=np.int64)
        print(f"end to end: {info['spots']:,} tissue tiles in {e2e_wall:.1f} s = {info['spots'] / e2e_wall:.1f} tiles/s "
              f"overall ({info['tiles_per_s']:.1f} tiles/s in the prediction phase)")

        m = min(a.naive, len(centres))
        naive, naive_s, reading = naive_loop(run, root / "slide.tif", centres[:m], info["read_px"])
        naive_rate = m / naive_s
        diff = float(np.abs(naive - np.asarray(ad.X[:m])).max())
        print(f"naive loop: {m} tiles in {naive_s:.1f} s = {naive_rate:.1f} tiles/s ({1e3 * reading / m:.1f} ms/tile "
              f"reading + PIL, {1e3 * (naive_s - reading) / m:.0f} ms/tile model on a batch of one); "
              f"largest difference to predict_slide {diff:.2e}")
        print(f"speed-up of predict_slide over the naive loop: {info['tiles_per_s'] / naive_rate:.2f}x (prediction "
              f"phase), {info['spots'] / e2e_wall / naive_rate:.2f}x (whole call incl. tissue mask, thumbnail, write)")

        v = viewer_time(out)
        print(f"viewer: {v['spots']:,} spots, map figure ready {v['total_s']:.2f} s after opening the file "
              f"(load {v['load_s']:.2f} s), payload {v['payload_mb']:.2f} MB")

        if not a.no_big:
            wb = write_slide(root / "big.tif", a.big_side, tiles)
            print(f"big slide: {a.big_side:,} x {a.big_side:,} px ({a.big_side ** 2 * 3 / 2 ** 30:.1f} GiB as RGB), "
                  f"{wb['levels']} levels, {wb['mb']:.0f} MB on disk, written in {wb['seconds']:.1f} s")
            env = dict(os.environ, PYTHONPATH=str(REPO))
            res = subprocess.run([sys.executable, __file__, "--child", str(run), str(root / "big.tif"),
                                  str(root / "big.h5ad"), str(a.big_grid_um)], capture_output=True, text=True, env=env)
            if res.returncode != 0:
                print(res.stderr[-3000:])
                return 1
            b = json.loads(res.stdout.strip().splitlines()[-1])
            gib = b["peak_rss"] / 2 ** 30
            print(f"big slide predict_slide: {b['tiles']:,} tiles at {a.big_grid_um:g} µm steps in {b['wall_s']:.1f} s "
                  f"({b['tiles_per_s']:.1f} tiles/s); peak RSS {gib:.2f} GiB (goal <= 2 GiB: "
                  f"{'met' if gib <= 2 else 'NOT met'}), {b['baseline_rss'] / 2 ** 30:.2f} GiB after loading the model")
            vb = viewer_time(root / "big.h5ad")
            print(f"viewer (big slide): {vb['spots']:,} spots, map figure ready {vb['total_s']:.2f} s after opening, "
                  f"payload {vb['payload_mb']:.2f} MB")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
