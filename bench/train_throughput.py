"""Training throughput: our engine vs a naive fp32 loop, on the same model and data, in one run.

    .venv/bin/python bench/train_throughput.py [--data DIR] [--n 64] [--batch-size 16] [--backbone NAME]
                                               [--device auto] [--epochs 2]

naive  : torch DataLoader decoding PNGs every step (per-sample flips on the CPU), fp32, contiguous NCHW,
         plain AdamW, MSE + Pearson loss, same GeneModel.
ours   : mai_core.train (uint8 RAM cache, device-side augmentation, bf16 autocast + channels_last +
         fused AdamW on CUDA), measured from metrics.jsonl of the last epoch.
frozen : heads on cached embeddings (one-time feature extraction reported separately).
Prints images/s and the speed-up ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def naive_images_per_s(data: Path, backbone: str, n: int, bs: int, device: str, steps: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    from mai_core.data.dataset import load_dataset
    from mai_core.models.losses import pearson_loss
    from mai_core.models.model import build_model

    ds = load_dataset(data)
    idx = np.arange(min(n, ds.n_train))

    def flip(img):
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        if torch.rand(()) < 0.5:
            img = img.flip(-2)
        return img

    tds = ds.torch_dataset("train", idx, transform=flip)
    dl = DataLoader(tds, batch_size=bs, shuffle=True, num_workers=0, drop_last=True)
    dev = torch.device(device)
    model, _ = build_model({"backbone": backbone, "head": "linear", "image_size": 224}, len(ds.genes), None,
                           weights="auto", device=dev, quiet=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mu, sd = ds.X[idx].mean(0), ds.X[idx].std(0) + 1e-6
    done, t0, counted = 0, None, 0
    while done < steps + 1:
        for x, y in dl:
            x, y = x.to(dev), ((y.numpy() - mu) / sd)
            y = torch.from_numpy(y.astype(np.float32)).to(dev)
            p = model(x)
            loss = torch.mean((p - y) ** 2) + pearson_loss(p, y, "gene")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            done += 1
            if done == 1:
                t0 = time.time()  # first step is warm-up
            else:
                counted += len(x)
            if done >= steps + 1:
                break
    return counted / (time.time() - t0)


def ours(data: Path, out: Path, backbone: str, n: int, bs: int, device: str, epochs: int, kind: str) -> dict:
    from mai_core.runs import read_metrics
    from mai_core.training import resolve_config, train

    over = {"data": str(data), "model": {"backbone": backbone, "kind": kind},
            "optim": {"epochs": epochs, "batch_size": bs, "ema": 0.0},
            "split": {"val_fraction": 0.0}, "runtime": {"device": device}, "predict": {"tta": False}}
    if kind == "frozen":
        over["frozen"] = {"epochs": max(epochs, 5), "batch_size": bs, "views": 1}
    cfg = resolve_config(over)
    t0 = time.time()
    train(cfg, out, progress=False)
    total = time.time() - t0
    m = read_metrics(out)
    return {"imgs_per_s": float(m["imgs_per_s"].iloc[-1]), "epoch_s": n / float(m["imgs_per_s"].iloc[-1]),
            "total_s": total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="MAI dataset (default: a generated demo subset)")
    ap.add_argument("--n", type=int, default=64, help="training images")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--naive-steps", type=int, default=6)
    args = ap.parse_args()

    import torch

    from mai_core.models.backbones import resolve_device
    from mai_core.data.dataset import load_dataset, write_dataset

    dev = str(resolve_device(args.device))
    tmp = Path(tempfile.mkdtemp(prefix="mai_bench_"))
    os.environ.setdefault("MAI_WORKSPACE", str(tmp / "ws"))
    if args.data:
        src = load_dataset(args.data)
    else:
        from mai_core.data.demo import generate_demo

        generate_demo(tmp / "demo", n_train=args.n, n_test=2, n_genes=100, seed=0)
        src = load_dataset(tmp / "demo")
    data = src.root
    if src.n_train > args.n:  # a subset with the same images
        sub = src.train.iloc[: args.n].copy()
        sub["path"] = [str((src.root / p).resolve()) for p in sub["path"]]
        data = tmp / "subset"
        data.mkdir()
        for i, p in enumerate(sub["path"]):
            link = data / f"{i}.png"
            os.symlink(p, link)
            sub.iloc[i, sub.columns.get_loc("path")] = link.name
        write_dataset(data, sub)
    n = min(args.n, src.n_train)
    print(f"device {dev} ({torch.get_num_threads()} threads), backbone {args.backbone}, {n} images, "
          f"batch {args.batch_size}")
    naive = naive_images_per_s(data, args.backbone, n, args.batch_size, dev, args.naive_steps)
    print(f"naive fp32 loop (PNG decode per step)        : {naive:8.1f} img/s")
    o = ours(data, tmp / "ours", args.backbone, n, args.batch_size, dev, args.epochs, "finetune")
    print(f"mai_core train, full fine-tune               : {o['imgs_per_s']:8.1f} img/s   "
          f"(x{o['imgs_per_s'] / naive:.2f} vs naive)")
    from mai_core.runs import read_metrics
    from mai_core.training import resolve_config, train

    cfg = resolve_config({"data": str(data), "model": {"backbone": args.backbone, "train_blocks": 2},
                          "optim": {"epochs": args.epochs, "batch_size": args.batch_size, "ema": 0.0},
                          "split": {"val_fraction": 0.0}, "runtime": {"device": dev}, "predict": {"tta": False}})
    train(cfg, tmp / "partial", progress=False)
    part = float(read_metrics(tmp / "partial")["imgs_per_s"].iloc[-1])
    print(f"mai_core train, last 2 stages (--train-blocks 2): {part:8.1f} img/s   (x{part / naive:.2f} vs naive)")
    t0 = time.time()
    f = ours(data, tmp / "frozen", args.backbone, n, args.batch_size, dev, args.epochs, "frozen")
    print(f"frozen heads on cached features              : {f['imgs_per_s']:8.1f} img/s   "
          f"(epoch {f['epoch_s'] * 1000:.1f} ms vs fine-tune epoch {o['epoch_s'] * 1000:.0f} ms: "
          f"x{o['epoch_s'] / f['epoch_s']:.0f} faster; one-time extraction + heads {f['total_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
