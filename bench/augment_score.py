"""Benchmark: scoring augmentations by perceptual distance.

Prints the wall time to score 8 augmentations x 64 images (k=1) with the batched scorer, and the
throughput of the batched scorer against a per-image loop (one image at a time, original features
recomputed for every pair) measured in the same run.

    .venv/bin/python bench/augment_score.py [--n 64] [--k 1] [--loop-n 16] [--device cpu] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

AUGS = ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "ShiftScaleRotate", "RandomBrightnessContrast",
        "HueSaturationValue", "HEDJitter", "GaussianBlur"]


def synthetic_tissue(n: int, seed: int = 0) -> np.ndarray:
    """Demo H&E tiles (the embedded demo's renderer), uint8 N x 224 x 224 x 3."""
    from mai_core.data.demo import render_tile

    rng = np.random.default_rng(seed)
    return np.stack([render_tile(rng)[0] for _ in range(n)])


def per_image_loop(images, augs, scorer, seed):
    """The naive way: one image at a time, features of the original recomputed for every pair."""
    import torch

    from mai_core.augment import apply_aug
    from mai_core.augment.scoring import aug_seed

    out = []
    for a in augs:
        g = torch.Generator().manual_seed(aug_seed(seed, a))
        for img in images:
            x = scorer.to_batch(img[None])
            xa, _ = apply_aug(a, x, g=g, p=1.0)
            d = scorer.feature_distances(scorer.features(x), scorer.features(xa))
            out.append((float(d["lpips"][0]), float(d["dino"][0])))
    return np.array(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--loop-n", type=int, default=16, help="images for the per-image loop baseline")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=None, help="dataset folder to sample images from (default: synthetic)")
    args = ap.parse_args()

    import torch

    from mai_core.augment import PerceptualScorer, score_augmentations

    if args.data:
        from mai_core.augment import sample_indices
        from mai_core.data.dataset import load_dataset

        ds = load_dataset(args.data)
        images = ds.images("train", sample_indices(ds.n_train, args.n, 0))
        source = f"{len(images)} images of {args.data}"
    else:
        images = synthetic_tissue(args.n)
        source = f"{len(images)} synthetic 224x224 tissue-like images"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}; {source}")

    t0 = time.perf_counter()
    scorer = PerceptualScorer(device=args.device, batch_size=args.batch_size)
    t_load = time.perf_counter() - t0
    print(f"metrics: LPIPS={scorer.lpips_model}, DINO={scorer.dino_model} (models loaded in {t_load:.1f} s)")

    score_augmentations(images[:2], AUGS[:1], k=1, scorer=scorer)  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    rep = score_augmentations(images, AUGS, k=args.k, scorer=scorer, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t0
    pairs = len(rep.pairs)
    print(f"batched scorer: {len(AUGS)} augmentations x {len(images)} images x k={args.k} = {pairs} pairs "
          f"in {t_batched:.1f} s ({pairs / t_batched:.1f} pairs/s); goal < 60 s: "
          f"{'met' if t_batched < 60 else 'NOT met'}")

    loop_imgs = images[:args.loop_n]
    t0 = time.perf_counter()
    loop = per_image_loop(loop_imgs, AUGS, scorer, seed=0)
    t_loop = time.perf_counter() - t0
    loop_rate = len(loop) / t_loop
    print(f"per-image loop: {len(loop)} pairs in {t_loop:.1f} s ({loop_rate:.1f} pairs/s)")
    print(f"speed-up of the batched scorer over the per-image loop: {pairs / t_batched / loop_rate:.2f}x")

    flips = rep.pairs[rep.pairs["aug"] == "HorizontalFlip"].head(len(loop_imgs))["lpips"].to_numpy()
    gap = np.abs(flips - loop[:len(loop_imgs), 0]).max()
    print(f"check: HorizontalFlip LPIPS batched vs loop max |diff| = {gap:.2e}")
    print(rep.summary[["aug", "lpips_mean", "dino_mean"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
