"""Stain normalisation at prediction time, leave-one-section-out on HER2ST, from the cached default runs of
``bench/her2st_accuracy.py --folds C2,C3,C4,C5`` (no training here; needs ``pip install torchstain``).

    .venv/bin/python bench/stain_norm.py [--work DIR] [--seed 0] [--folds C2,C3,C4,C5]

For each held-out section, the default run predicts its patches (one view, so every condition costs the same)
as they are, normalised to the training sections' stain with Macenko and with Reinhard (``torchstain``; the
reference is a mosaic of 16 training patches chosen with a fixed seed), and each of those again after the fixed
synthetic other-lab shifts of ``bench/strategies.py`` (the stand-in for another lab's scanner and stain).
Top-50 = the 50 most variable genes of the training sections. Normalisation is applied at prediction only:
the runs were trained on raw patches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def reference_mosaic(images: np.ndarray, n: int = 16, seed: int = 0) -> np.ndarray:
    """A 4×4 mosaic of training patches (the normaliser's target)."""
    idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
    side = int(np.sqrt(n))
    rows = [np.concatenate(list(images[idx[r * side:(r + 1) * side]]), axis=1) for r in range(side)]
    return np.concatenate(rows, axis=0)


def normalise(normaliser, images: np.ndarray) -> tuple[np.ndarray, int]:
    """Every patch normalised; a patch the method cannot handle (too little stain) stays as it is."""
    out, failed = images.copy(), 0
    for i, img in enumerate(images):
        try:
            res = normaliser.normalize(img)
            res = res[0] if isinstance(res, tuple) else res
            out[i] = np.clip(np.asarray(res), 0, 255).astype(np.uint8).reshape(img.shape)
        except Exception:  # torchstain raises on patches without enough stained pixels
            failed += 1
    return out, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "workspace" / "bench_her2st"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", default="C2,C3,C4,C5")
    args = ap.parse_args()
    try:
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer
    except ImportError:
        print("torchstain is not installed: .venv/bin/pip install torchstain")
        return 0
    from strategies import stain_shifts

    from mai_core.data.dataset import load_dataset
    from mai_core.metrics import gene_pearson
    from mai_core.runs import load_predictor

    work = Path(args.work)
    table = {}
    for fold in args.folds.split(","):
        res_path = work / "loso" / f"default_{fold}_s{args.seed}.json"
        if not res_path.exists():
            print(f"{fold}: no cached default run (run bench/her2st_accuracy.py --folds first)")
            continue
        res = json.loads(res_path.read_text())
        top = np.load(work / "loso" / f"default_{fold}_s{args.seed}.pred.npz")["top50"]
        train, test = load_dataset(res["train_dir"]), load_dataset(res["test_dir"])
        ref = reference_mosaic(train.images(indices=range(train.n_train)), seed=args.seed)
        images = test.images(indices=range(test.n_train))
        pred = load_predictor(res["run"], device="cpu")
        variants = {"raw": images}
        for name, cls in (("macenko", NumpyMacenkoNormalizer), ("reinhard", NumpyReinhardNormalizer)):
            norm = cls()
            norm.fit(ref)
            variants[name], failed = normalise(norm, images)
            if failed:
                print(f"  {fold} {name}: {failed} patch(es) left as they were")
        row = {}
        for name in ("raw", "macenko", "reinhard"):
            shifted = stain_shifts(images)
            if name != "raw":
                norm = (NumpyMacenkoNormalizer if name == "macenko" else NumpyReinhardNormalizer)()
                norm.fit(ref)
                shifted = [normalise(norm, s)[0] for s in shifted]
            scores = []
            for imgs in [variants[name]] + shifted:
                _, r = gene_pearson(test.X, pred.predict_images(imgs, tta=1))
                scores.append(float(np.nanmean(r[top])))
            row[name] = {"top50": scores[0], "shift_top50": float(np.mean(scores[1:]))}
        table[fold] = row
        print(f"{fold}: " + "  ".join(f"{k} {v['top50']:.4f} (shifted {v['shift_top50']:.4f})" for k, v in row.items()),
              flush=True)
    if table:
        print("\nheld-out top-50 PCC (one view), mean over folds: as is / under the synthetic other-lab shifts")
        for name in ("raw", "macenko", "reinhard"):
            a = np.mean([table[f][name]["top50"] for f in table])
            b = np.mean([table[f][name]["shift_top50"] for f in table])
            print(f"  {name:9s} {a:.4f} / {b:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
