"""Training throughput: our engine vs a naive fp32 loop, on the same model and data, in one run.

    .venv/bin/python bench/train_throughput.py [--data DIR] [--n 64] [--batch-size 16] [--backbone NAME]
                                               [--device auto] [--epochs 2]

naive  : torch DataLoader decoding PNGs every step (per-sample flips on the CPU), fp32, contiguous NCHW,
         plain AdamW, MSE + Pearson loss, same GeneModel.
ours   : mai_core.train (uint8 RAM cache, device-side augmentation, bf16 autocast + channels_last +
         fused AdamW on CUDA), measured from metrics.jsonl of the last epoch.
frozen : heads on cached embeddings (one-time feature extraction reported separately).
ridge  : the closed-form ridge solve (PCA + SVD, alpha chosen by leave-one-out) on embeddings of the same
         count and width.
layouts: (``--no-variants`` skips it) the engine's CPU settings one at a time, each in its own fresh process
         (the allocator setting is per process), in interleaved rounds: the plain loop as it ran before
         (NCHW, the allocator as torch leaves it, float32, torch's thread count), channels_last, channels_last +
         tuned allocator (the default), + bf16 autocast, one thread, and with ``--compile`` torch.compile.
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


def random_flips(img):
    """Horizontal and vertical flips, each with probability 1/2 (the naive loops' augmentation)."""
    import torch

    if torch.rand(()) < 0.5:
        img = img.flip(-1)
    if torch.rand(()) < 0.5:
        img = img.flip(-2)
    return img


def naive_images_per_s(data: Path, backbone: str, n: int, bs: int, device: str, steps: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    from mai_core.data.dataset import load_dataset
    from mai_core.models.losses import pearson_loss
    from mai_core.models.model import build_model

    ds = load_dataset(data)
    idx = np.arange(min(n, ds.n_train))

    tds = ds.torch_dataset("train", idx, transform=random_flips)
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


def ours(data: Path, out: Path, backbone: str, n: int, bs: int, device: str, epochs: int, kind: str,
         runtime: dict | None = None) -> dict:
    from mai_core.runs import read_metrics
    from mai_core.training import resolve_config, train

    over = {"data": str(data), "model": {"backbone": backbone, "kind": kind},
            "optim": {"epochs": epochs, "batch_size": bs, "ema": 0.0},
            "split": {"val_fraction": 0.0}, "runtime": {"device": device, **(runtime or {})},
            "predict": {"tta": False}}
    if kind == "frozen":
        over["frozen"] = {"epochs": max(epochs, 5), "batch_size": bs, "views": 1}
    cfg = resolve_config(over)
    t0 = time.time()
    train(cfg, out, progress=False)
    total = time.time() - t0
    m = read_metrics(out)
    return {"imgs_per_s": float(m["imgs_per_s"].iloc[-1]), "epoch_s": n / float(m["imgs_per_s"].iloc[-1]),
            "total_s": total}


# The engine's CPU settings, one at a time: (label, runtime overrides, extra environment).
# "All cores": torch's own thread count (what the loop used before the thread count followed the load).
ALL = {"MAI_CPU_THREADS": "all"}
VARIANTS = [
    ("plain loop before (NCHW, system alloc, all cores)", {"channels_last": False, "amp": "off"},
     {"MAI_CPU_ALLOCATOR": "system", **ALL}),
    ("channels_last", {"channels_last": True, "amp": "off"}, {"MAI_CPU_ALLOCATOR": "system", **ALL}),
    ("channels_last + tuned allocator", {}, ALL),
    ("  + threads = idle cores (the default)", {}, {"MAI_CPU_THREADS": "idle"}),
    ("  + bf16 autocast", {"amp": "bf16"}, {"MAI_CPU_THREADS": "idle"}),
]
COMPILE = ("  + torch.compile", {"compile": True}, {})


def ridge_solve_s(n: int, dim: int, genes: int, seed: int = 0) -> float:
    """Seconds of the ridge fit (PCA, SVD, alpha by leave-one-out) on n×dim embeddings and n×genes targets."""
    from mai_core.models.ridge import fit_ridge

    rng = np.random.default_rng(seed)
    f, y = rng.standard_normal((n, dim)).astype(np.float32), rng.standard_normal((n, genes)).astype(np.float32)
    fit_ridge(f, y)  # warm-up (BLAS threads, first-call costs)
    t0 = time.perf_counter()
    fit_ridge(f, y)
    return time.perf_counter() - t0


def variant_worker(spec: dict) -> dict:
    """One engine measurement in this (fresh) process: images/s of the last epoch and the settings applied."""
    import torch

    o = ours(Path(spec["data"]), Path(spec["out"]), spec["backbone"], spec["n"], spec["bs"], spec["device"],
             spec["epochs"], "finetune", spec["runtime"])
    import os as _os

    return {"imgs_per_s": o["imgs_per_s"], "threads": torch.get_num_threads(), "load": _os.getloadavg()[0]}


def run_variants(data: Path, tmp: Path, args, dev: str, n: int) -> dict:
    import json
    import subprocess

    variants = VARIANTS + ([COMPILE] if args.compile else [])
    got: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for i, (label, rt, env) in enumerate(order):
            spec = {"data": str(data), "out": str(tmp / f"variant-{r}-{i}"), "backbone": args.backbone, "n": n,
                    "bs": args.batch_size, "device": dev, "epochs": args.epochs, "runtime": rt}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                  text=True, env=dict(os.environ, **env), timeout=3600)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"variant '{label.strip()}' failed")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            got[label].append(res["imgs_per_s"])
            print(f"    round {r + 1}: {label.strip():46s} {res['imgs_per_s']:8.1f} img/s  ({res['threads']} "
                  f"thread(s), load average {res['load']:.1f})", flush=True)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="MAI dataset (default: a generated demo subset)")
    ap.add_argument("--n", type=int, default=64, help="training images")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--naive-steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the layout comparison")
    ap.add_argument("--no-variants", action="store_true", help="skip the layout/thread/precision comparison")
    ap.add_argument("--variants-only", action="store_true", help="only the settings comparison")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (compiles for minutes on CPU)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import json

        print(json.dumps(variant_worker(json.loads(args.worker))))
        return 0

    import torch

    from mai_core.data.dataset import load_dataset, write_dataset
    from mai_core.device import resolve_device

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
    if args.variants_only:
        print(f"fine-tune settings, {args.backbone}, {n} images, batch {args.batch_size}, each in a fresh process:")
        report_variants(run_variants(data, tmp, args, dev, n))
        return 0
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
    f = ours(data, tmp / "frozen", args.backbone, n, args.batch_size, dev, args.epochs, "frozen")
    print(f"frozen heads on cached features              : {f['imgs_per_s']:8.1f} img/s   "
          f"(epoch {f['epoch_s'] * 1000:.1f} ms vs fine-tune epoch {o['epoch_s'] * 1000:.0f} ms: "
          f"x{o['epoch_s'] / f['epoch_s']:.0f} faster; one-time extraction + heads {f['total_s']:.1f} s)")
    from mai_core.models.backbones import create_backbone

    dim = int(create_backbone(args.backbone, weights="random")[0].num_features)
    ridge_s = ridge_solve_s(n, dim, 100)
    print(f"ridge on cached features ({n}x{dim})          : {ridge_s * 1000:8.1f} ms per fit   "
          f"(vs fine-tune epoch {o['epoch_s'] * 1000:.0f} ms: x{o['epoch_s'] / ridge_s:.0f} faster)")
    goal = min(o["epoch_s"] / f["epoch_s"], o["epoch_s"] / ridge_s)
    print(f"-> frozen and ridge paths are x{goal:.0f} faster per epoch than fine-tuning (goal >= 100x)")
    if args.no_variants:
        return 0
    print(f"\nfine-tune settings, each in a fresh process, {args.rounds} interleaved round(s), last epoch img/s:")
    report_variants(run_variants(data, tmp, args, dev, n))
    return 0


def report_variants(got: dict) -> None:
    import statistics

    base = statistics.median(got[VARIANTS[0][0]])
    best = max(got, key=lambda k: statistics.median(got[k]))
    for label, vals in got.items():
        med = statistics.median(vals)
        print(f"  {label:50s}: {med:8.1f} img/s   (x{med / base:.2f} vs the plain loop)")
    print(f"-> fastest: {best.strip()}")


if __name__ == "__main__":
    sys.exit(main())
