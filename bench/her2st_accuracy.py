"""Accuracy on real data: train on HER2ST sections C2–C4, test on the unseen section C5.

    .venv/bin/python bench/her2st_accuracy.py [--work DIR] [--top-genes 1000] [--strategies ridge,frozen,default]
                                              [--plain] [--out results.json]

Strategies (all through mai_core.train, the same code the CLI runs):
  ridge    ridge regression on frozen EfficientNet-Lite0 embeddings (HEST protocol: PCA 256, alpha on val)
  frozen   MLP heads on cached embeddings of the 8 dihedral views (TTA at prediction)
  default  the CPU default recipe (no flags)
  partial  default, but only the last 3 backbone stages trained (--train-blocks 3)
  pca      default, heads predicting 64 principal components of the targets (--pca 64)
  mse_pearson  default without the covariance term (alpha 0.5, beta 0.5; the default mixes in 0.2)
  ema      default with an EMA of weights (decay 0.95)
  long     default trained for 14 epochs instead of 8
  bblr0.1  default with a 10x lower learning rate for the backbone (--backbone-lr-mult 0.1)
  plain    a plain fine-tune for reference: 6 epochs, MSE + Pearson, flips, one learning rate (1e-4), no TTA/EMA
  plain_lr1e-3  the same plain fine-tune with learning rate 1e-3
  ensemble validation-weighted ensemble of the trained strategies (except ridge)
Reports gene-wise PCC on C5 over the 50 most variable training genes (HEST-style) and over all genes,
plus wall time of each strategy. Needs ../shared/data/her2st; exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = REPO.parent / "shared" / "data" / "her2st"

STRATEGIES = {
    "ridge": {"model": {"kind": "ridge"}},
    "frozen": {"model": {"kind": "frozen", "head": "mlp", "dropout": 0.2}},
    "default": {},
    "partial": {"model": {"train_blocks": 3}},
    "pca": {"model": {"pca_components": 64}},
    "mse_pearson": {"loss": {"alpha": 0.5, "beta": 0.5}},
    "ema": {"optim": {"ema": 0.95}},
    "long": {"optim": {"epochs": 14}},
    "bblr0.1": {"optim": {"backbone_lr_mult": 0.1}},
    "plain": {"model": {"drop_path": 0.0, "dropout": 0.0}, "optim": {"epochs": 6, "lr": 1e-4, "backbone_lr_mult": 1.0,
                                                                      "ema": 0.0, "warmup_epochs": 0.0},
              "loss": {"alpha": 0.5, "beta": 0.5, "pearson": "gene"}, "aug": {"policy": "flips_rot90"},
              "predict": {"tta": False}},
}
STRATEGIES["plain_lr1e-3"] = {**STRATEGIES["plain"], "optim": {**STRATEGIES["plain"]["optim"], "lr": 1e-3}}


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

def prepare(work: Path, top_genes: int) -> tuple[Path, Path]:
    """Import C2–C5 once; split into a C2–C4 training folder and a C5 test folder (hard links)."""
    import pandas as pd

    from mai_core.data.dataset import write_dataset
    from mai_core.data.importer import import_her2st

    full = work / "her2st_all"
    if not (full / "train.csv").exists():
        t0 = time.time()
        import_her2st(SHARED, full, top_genes=top_genes)
        print(f"imported HER2ST C2-C5 ({time.time() - t0:.0f} s)")
    df = pd.read_csv(full / "train.csv", dtype={"ID": str, "path": str})
    train_dir, test_dir = work / "her2st_c2c4", work / "her2st_c5"
    for d, rows in ((train_dir, df[df["section"] != "C5"]), (test_dir, df[df["section"] == "C5"])):
        if (d / "train.csv").exists():
            continue
        for rel in rows["path"]:
            _link(full / rel, d / rel)
        write_dataset(d, rows.reset_index(drop=True))
    return train_dir, test_dir

def evaluate_on(run: Path, test_dir: Path, train_dir: Path) -> dict:
    from mai_core.data.dataset import load_dataset
    from mai_core.metrics import gene_pearson, top_variable_genes
    from mai_core.runs import load_predictor

    test = load_dataset(test_dir)
    train = load_dataset(train_dir)
    pred = load_predictor(run, device="cpu")
    p = pred.predict_paths([test.image_path(i) for i in range(test.n_train)])
    _, per_gene = gene_pearson(test.X, p)
    top = top_variable_genes(train.X, 50)
    return {"pcc_top50": float(np.nanmean(per_gene[top])), "pcc_all": float(np.nanmean(per_gene)),
            "n_test": int(test.n_train), "n_genes": int(len(per_gene))}

def tta_sweep(run: Path, test_dir: Path, train_dir: Path, views=(1, 2, 4, 8)) -> dict:
    """C5 accuracy and prediction time with 1, 2, 4 and 8 dihedral views: is each doubling worth its cost?"""
    from mai_core.data.dataset import load_dataset
    from mai_core.metrics import gene_pearson, top_variable_genes
    from mai_core.runs import load_predictor

    test, train = load_dataset(test_dir), load_dataset(train_dir)
    images = test.images(indices=range(test.n_train))
    top = top_variable_genes(train.X, 50)
    pred = load_predictor(run, device="cpu")
    pred.predict_images(images[:8], tta=1)  # warm-up
    out = {}
    for v in views:
        t0 = time.perf_counter()
        p = pred.predict_images(images, tta=v)
        dt = time.perf_counter() - t0
        _, per_gene = gene_pearson(test.X, p)
        out[v] = {"pcc_top50": float(np.nanmean(per_gene[top])), "pcc_all": float(np.nanmean(per_gene)), "time_s": dt}
    one = out[views[0]]
    for v in views:
        r = out[v]
        print(f"    TTA {v} view(s): top-50 {r['pcc_top50']:.4f} ({r['pcc_top50'] - one['pcc_top50']:+.4f})  "
              f"all {r['pcc_all']:.4f} ({r['pcc_all'] - one['pcc_all']:+.4f})  predict {r['time_s']:.1f} s "
              f"({r['time_s'] / one['time_s']:.1f}x one view)", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "workspace" / "bench_her2st"))
    ap.add_argument("--top-genes", type=int, default=1000)
    ap.add_argument("--strategies", default="ridge,frozen,default,ensemble")
    ap.add_argument("--plain", action="store_true", help="also train the plain fine-tune reference (slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results table as JSON")
    ap.add_argument("--tta-sweep", action="store_true",
                    help="also predict C5 with 1, 2, 4 and 8 TTA views for every trained run: gain vs time")
    args = ap.parse_args()
    if not (SHARED / "C5.jpg").exists():
        print(f"HER2ST data not found at {SHARED}; nothing to benchmark")
        return 0
    work = Path(args.work)
    os.environ.setdefault("MAI_WORKSPACE", str(work / "ws"))
    from mai_core.runs.ensemble import build_ensemble
    from mai_core.training import resolve_config, train

    train_dir, test_dir = prepare(work, args.top_genes)
    names = [s for s in args.strategies.split(",") if s]
    if args.plain and "plain" not in names:
        names.insert(names.index("ensemble") if "ensemble" in names else len(names), "plain")
    results, runs = {}, {}
    for name in names:
        if name == "ensemble":
            members = [runs[k] for k in runs if k != "ridge"]
            if len(members) < 2:
                continue
            out = work / "runs" / f"ensemble_s{args.seed}"
            t0 = time.time()
            build_ensemble(members, out, weights="val")
            results[name] = {"time_s": time.time() - t0, "members": [Path(m).name for m in members]}
        else:
            cfg = resolve_config({"data": str(train_dir), "seed": args.seed, **STRATEGIES[name]}, device_type="cpu")
            # finished runs are reused only when their recipe is unchanged
            key = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:8]
            out = work / "runs" / f"{name}_s{args.seed}_{key}"
            if not (out / "status.json").exists() or json.loads((out / "status.json").read_text())["state"] != "finished":
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.time()
                train(cfg, out, progress=False)
                results[name] = {"time_s": time.time() - t0}
            else:
                results[name] = {"time_s": float("nan"), "cached": True}
            runs[name] = out
        results[name].update(evaluate_on(out, test_dir, train_dir))
        r = results[name]
        print(f"{name:10s} C5 gene PCC top-50 {r['pcc_top50']:.4f}  all {r['n_genes']} genes {r['pcc_all']:.4f}  "
              f"({r['time_s'] / 60:.1f} min)", flush=True)
        if args.tta_sweep and name != "ensemble":
            r["tta"] = tta_sweep(out, test_dir, train_dir)
    base = results.get("ridge", {}).get("pcc_top50")
    print("\nstrategy    top-50 PCC   all-genes PCC   vs ridge (top-50)   minutes")
    for name, r in results.items():
        rel = f"{(r['pcc_top50'] / base - 1) * 100:+.1f} %" if base else "-"
        print(f"{name:10s}  {r['pcc_top50']:10.4f}   {r['pcc_all']:13.4f}   {rel:>17s}   {r['time_s'] / 60:7.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
