"""The GPU benchmark suite behind ``bench/gpu_suite.sh``: one table in at most 8 minutes on one H100/H200.

    bash bench/gpu_suite.sh [--dry-run] [--models a,b] [--budget-s 450] [--peak-tflops 790] [--out results.json]

For each backbone (default: the three large contest backbones and EfficientNet-Lite0), on a synthetic demo
dataset written to a temporary folder:

naive     a plain fp32 loop: torch DataLoader decoding PNGs in worker processes, per-sample flips on the CPU,
          NCHW, torch.optim.AdamW with its defaults, MSE + Pearson loss, ``loss.item()`` every step.
recipe    our GPU recipe, built from the training engine's own parts (``Session``: uint8 image cache on the
          GPU, batches cut and augmented there; ``finetune.TrainStep``: bf16 autocast, channels_last, fused
          AdamW, gradient clipping, EMA; ``resolve_config`` on the CUDA recipe), eager.
compiled  the same with ``torch.compile`` (the ``--compile`` flag of ``train``); compile time reported apart.

Model FLOPs are counted once per backbone on the meta device (``torch.utils.flop_counter``: convolutions
and matrix products, 2 per multiply-add); a training image costs 3× the forward. Fraction of peak = training
FLOPs per image × img/s ÷ ``--peak-tflops`` (bf16 dense, ~790 TFLOP/s by default).

Then a 1-process ``torchrun`` smoke (``python -m torch.distributed.run --standalone --nproc-per-node 1 -m
mai_core train ...``, one epoch, checks the run finished), and slide inference tiles/s with the smoke run's
model: ``mai_core.spatial.predict_slide`` end to end over a synthetic pyramidal TIFF (``write_slide`` of
``bench/slide_inference.py``), tiles/s of its prediction phase and of the whole call. Each step runs in its
own process with a time limit taken from the budget (a step that overruns is reported as such); compile
steps come last and share what is left.

``--dry-run`` runs every step for a few iterations on a tiny timm model on the CPU (compile with the
``aot_eager`` backend: the graph capture of forward and backward without code generation) and checks the
real backbones' names and FLOP counts on the meta device, so the suite is known to work before a GPU is
at hand (``tests/test_bench_gpu_suite.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = ["convnextv2_large.fcmae_ft_in22k_in1k", "coatnet_rmlp_1_rw2_224.sw_in12k_ft_in1k",
          "xcit_large_24_p16_224.fb_in1k", "efficientnet_lite0"]
LARGE = set(MODELS[:3])
TINY_MODEL = "test_efficientnet"

# what a real run and a dry run use
REAL = {"device": "cuda", "image_size": 224, "batch_size": 64, "n_images": 512, "n_genes": 1000, "naive_steps": 12,
        "recipe_steps": 24, "window_s": 8.0, "warmup": 3, "tiles": 4096, "slide_side": 12288,
        "compile_backend": "inductor"}
DRY = {"device": "cpu", "image_size": 64, "batch_size": 8, "n_images": 24, "n_genes": 50, "naive_steps": 2,
       "recipe_steps": 2, "window_s": 30.0, "warmup": 1, "tiles": 48, "slide_side": 1024,
       "compile_backend": "aot_eager"}


# ------------------------------------------------------------------------------------------------ steps
def count_flops(name: str, image_size: int) -> dict:
    """Forward FLOPs per image and parameter count of a timm backbone, on the meta device (no memory, no init)."""
    import warnings

    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, num_classes=0)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    return {"fwd_gflops": counter.get_total_flops() / 1e9, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, warmup: int, steps: int, window_s: float, device, batch: int) -> dict:
    """Run ``step()`` ``warmup`` times, then up to ``steps`` times or ``window_s`` seconds; img/s of the timed part."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    t1 = time.perf_counter()
    n = 0
    while n < steps and (n == 0 or time.perf_counter() - t1 < window_s):
        step()
        n += 1
    _sync(device)
    t2 = time.perf_counter()
    return {"imgs_per_s": n * batch / (t2 - t1), "steps": n, "warmup_s": t1 - t0}


def naive_loop(data: Path, name: str, p: dict, device) -> dict:
    """The plain fp32 loop (see the module docstring)."""
    import torch
    from torch.utils.data import DataLoader

    from mai_core.data.dataset import load_dataset
    from mai_core.models.losses import pearson_loss
    from mai_core.models.model import build_model

    if device.type == "cuda":  # torch's defaults, whatever ran before in this process
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
    ds = load_dataset(data)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import random_flips

    workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    dl = DataLoader(ds.torch_dataset("train", None, transform=random_flips), batch_size=p["batch_size"], shuffle=True,
                    num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    model, _ = build_model({"backbone": name, "head": "linear", "image_size": p["image_size"]}, len(ds.genes), None,
                           weights="random", device=device, quiet=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mu, sd = ds.X.mean(0), ds.X.std(0) + 1e-6
    batches = iter(())

    def step():
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(dl)
            x, y = next(batches)
        x = x.to(device)
        y = torch.from_numpy(((y.numpy() - mu) / sd).astype(np.float32)).to(device)
        pred = model(x)
        loss = torch.mean((pred - y) ** 2) + pearson_loss(pred, y, "gene")
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    out = _timed(step, p["warmup"], p["naive_steps"], p["window_s"], device, p["batch_size"])
    del model, opt, dl
    return out


def recipe_loop(data: Path, name: str, p: dict, compile_backend: str | None) -> dict:
    """Our GPU recipe through the engine's own parts; ``compile_backend`` None = eager."""
    import torch

    from mai_core.models.losses import ExpressionLoss
    from mai_core.models.model import cosine_lr, frozen_bn_eval
    from mai_core.training.config import resolve_config
    from mai_core.training.ema import EMA
    from mai_core.training.finetune import TrainStep, load_batch, make_optimizer, param_groups
    from mai_core.training.runtime import Runtime
    from mai_core.training.session import Session, make_augment

    runtime = {"device": p["device"], "compile": compile_backend is not None}
    if p["device"] == "cpu":  # a dry run: the CUDA recipe's settings, forced on the CPU
        runtime.update(amp="bf16", channels_last=True)
    cfg = resolve_config({"data": str(data), "model": {"backbone": name, "weights": "random",
                                                       "image_size": p["image_size"]},
                          "optim": {"batch_size": p["batch_size"]}, "split": {"val_fraction": 0.0},
                          "runtime": runtime}, device_type="cuda")
    rt = Runtime.start(cfg["runtime"])
    s = Session(cfg, rt, progress=False)
    s.prepare()
    o = cfg["optim"]
    model = s.raw_model()
    opt = make_optimizer(param_groups(model, o), o["weight_decay"], cuda=True)  # fused AdamW
    ema = EMA(model, float(o["ema"])) if float(o["ema"]) > 0 else None
    train_model = rt.wrap(s.model)
    t_compile = time.perf_counter()
    if compile_backend is not None:
        train_model = torch.compile(train_model, backend=compile_backend)
    lc = cfg["loss"]
    step_fn = TrainStep(train_model, opt, ExpressionLoss(lc["alpha"], lc["beta"], lc["pearson"], s.groups), rt,
                        float(o["grad_clip"]), ema, model)
    aug = make_augment(cfg["aug"]["policy"], int(cfg["seed"]), data_dir=s.ds.root)
    s.images()
    train_model.train()
    frozen_bn_eval(model.backbone)
    bs, n = p["batch_size"], len(s.train_idx)
    perm = np.random.default_rng(0).permutation(np.tile(s.train_idx, 1 + 64 * bs // max(n, 1)))
    state = {"g": 0}
    total = 10_000

    def step():
        g = state["g"]
        idx = perm[(g * bs) % (len(perm) - bs):][:bs]
        x, y = load_batch(s, idx, aug, rt)
        step_fn(x, y, cosine_lr(g, total, 100, float(o["min_lr_ratio"])), g)
        state["g"] = g + 1

    if compile_backend is not None:  # the first step compiles: time it apart
        step()
        _sync(rt.device)
        t_compile = time.perf_counter() - t_compile
    out = _timed(step, p["warmup"], p["recipe_steps"], p["window_s"], rt.device, bs)
    out.update(amp=rt.amp, channels_last=rt.channels_last, fused=bool(opt.defaults.get("fused")),
               gpu_cache=str(s.images().device), aug=cfg["aug"]["policy"], ema=float(o["ema"]))
    if compile_backend is not None:
        out["compile_s"] = t_compile
    return out


def step_model(args, p: dict) -> dict:
    import torch

    from mai_core.device import resolve_device

    device = resolve_device(p["device"])
    res = {"model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if args.phase == "eager":
        res["naive"] = naive_loop(Path(args.data), args.model, p, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        res["recipe"] = recipe_loop(Path(args.data), args.model, p, None)
    else:
        res["compiled"] = recipe_loop(Path(args.data), args.model, p, p["compile_backend"])
    return res


def step_slide(args, p: dict) -> dict:
    """Tiles/s of ``predict_slide`` end to end with the smoke run's model, 1 view and the run's views.

    The slide is a tiled pyramidal TIFF of demo tiles written by ``bench/slide_inference.py``'s
    ``write_slide`` (JPEG tiles, 0.5 µm/px, elliptical tissue on a pale background); the grid step is chosen
    so the tissue holds about ``p["tiles"]`` tiles. Each call reads the tiles off the slide in a thread pool,
    resamples them to the run's resolution, predicts them in batches and writes the AnnData.
    """
    import torch

    from mai_core.data.dataset import load_dataset
    from mai_core.runs import load_predictor
    from mai_core.spatial import predict_slide

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from slide_inference import MPP, write_slide

    # what predict_slide imports on first use, loaded here so the first timed call does not pay for it
    for module in ("anndata", "skimage.filters", "skimage.morphology", "tifffile", "mai_core.spatial.annotate",
                   "mai_core.spatial.output", "mai_core.data.anndata_io"):
        importlib.import_module(module)

    cuda = p["device"] == "cuda"
    ds = load_dataset(args.data)
    demo = ds.images("train", np.arange(min(ds.n_train, 32)))
    work = Path(args.run).parent / "slide"  # next to the smoke run, in the suite's temporary folder
    work.mkdir(exist_ok=True)
    slide = work / "slide.tif"
    written = write_slide(slide, p["slide_side"], demo)
    tissue_px = 0.553 * p["slide_side"] ** 2  # the ellipse of write_slide: pi x 0.40 x 0.44 of the square
    grid_um = round(float(np.sqrt(tissue_px / p["tiles"])) * MPP, 2)
    pred = load_predictor(args.run, device=p["device"])
    bs = 256 if cuda else None
    workers = max(2, min(8, os.cpu_count() or 1)) if cuda else 2
    out = {"entry_point": "mai_core.spatial.predict_slide (tissue mask, threaded tile reads, batched "
                          "Predictor.predict_images, AnnData written)",
           "slide_px": p["slide_side"], "slide_levels": written["levels"], "slide_write_s": written["seconds"],
           "grid_um": grid_um, "device": str(pred.device), "channels_last": pred.channels_last}
    for views in sorted({1, pred.tta_views}):
        pred.predict_images(demo[: min(len(demo), bs or 32)], tta=views)  # warm-up (and cudnn autotune)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        info = predict_slide(args.run, slide, work / f"slide_{views}view.h5ad", grid_um=grid_um, tta=views,
                             device=p["device"], batch_size=bs, workers=workers, progress=False, predictor=pred)
        wall = time.perf_counter() - t
        out["tiles"] = info["spots"]
        out["read_px"] = info["read_px"]
        out[f"tiles_per_s_{views}view"] = info["tiles_per_s"]  # the prediction phase: read, resample, model
        out[f"overall_tiles_per_s_{views}view"] = info["spots"] / wall  # the whole call, mask and write included
    return out


# ------------------------------------------------------------------------------------------------ driver
def _run_step(argv: list[str], timeout: float, env: dict | None = None) -> dict:
    t = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=max(5.0, timeout), cwd=REPO,
                              env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"did not finish within its {timeout:.0f} s share of the budget",
                "seconds": time.perf_counter() - t}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"ok": False, "error": " | ".join(tail) or f"exit {proc.returncode}", "seconds": time.perf_counter() - t}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    res = json.loads(lines[-1]) if lines else {}
    res.update(ok=True, seconds=time.perf_counter() - t)
    return res


def _fmt(v, spec="{:.0f}") -> str:
    return "—" if v is None else spec.format(v)


def table(rows: list[dict], peak: float) -> str:
    head = ("| backbone | params | fwd GFLOPs/img | naive fp32 img/s | recipe img/s (eager) | recipe + compile img/s "
            "| compile s | best / naive | % of bf16 peak |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        naive = (r.get("naive") or {}).get("imgs_per_s")
        eager = (r.get("recipe") or {}).get("imgs_per_s")
        comp = (r.get("compiled") or {}).get("imgs_per_s")
        best = max([v for v in (eager, comp) if v] or [None]) if (eager or comp) else None
        frac = None if best is None else 3 * r["fwd_gflops"] * 1e9 * best / (peak * 1e12)
        note = r.get("compile_error") and f"failed: {r['compile_error'][:60]}"
        lines.append(f"| {r['model']} | {r['params_m']:.3g} M | {r['fwd_gflops']:.3g} | {_fmt(naive)} | {_fmt(eager)} | "
                     f"{note or _fmt(comp)} | {_fmt((r.get('compiled') or {}).get('compile_s'))} | "
                     f"{_fmt(best / naive if best and naive else None, '{:.2f}x')} | "
                     f"{_fmt(None if frac is None else 100 * frac, '{:.1f} %')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every step for a few iterations on a tiny model, on CPU")
    ap.add_argument("--models", help="comma-separated backbones (default: the four of the suite)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of the whole suite")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="the chip's dense bf16 peak")
    ap.add_argument("--batch-size", type=int, help="training batch (default: the GPU recipe's 64)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile steps")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    p = dict(DRY if args.dry_run else REAL)
    if args.batch_size:
        p["batch_size"] = args.batch_size

    if args.step == "model":
        print(json.dumps(step_model(args, p)))
        return 0
    if args.step == "slide":
        print(json.dumps(step_slide(args, p)))
        return 0

    t_start = time.perf_counter()
    deadline = t_start + args.budget_s

    def left() -> float:
        """Seconds of the budget left (a dry run on a shared CPU is not held to the GPU budget)."""
        return 3600.0 if args.dry_run else deadline - time.perf_counter()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; run with --dry-run to check the suite on the CPU", file=sys.stderr)
        return 2
    models = args.models.split(",") if args.models else list(MODELS)
    print(f"MAI GPU suite{' (DRY RUN on CPU, tiny model)' if args.dry_run else ''}: torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else 'cpu'}, "
          f"{os.cpu_count()} CPUs, budget {args.budget_s:.0f} s, batch {p['batch_size']}, {p['image_size']} px",
          flush=True)

    # FLOPs and parameters of the real backbones (meta device: cheap, also checks the names)
    import timm

    facts = {}
    for m in models:
        if not timm.is_model(m.split(".")[0]):
            print(f"error: {m} is not a timm model", file=sys.stderr)
            return 2
        facts[m] = count_flops(m, 224)
        print(f"  {m}: {facts[m]['params_m']:.0f} M parameters, {facts[m]['fwd_gflops']:.1f} GFLOPs per 224 px "
              "forward", flush=True)
    train_models = [TINY_MODEL] if args.dry_run else models
    for m in train_models:
        facts.setdefault(m, count_flops(m, p["image_size"]))

    tmp = Path(tempfile.mkdtemp(prefix="mai_gpu_suite_"))
    env = {"MAI_WORKSPACE": str(tmp / "ws"), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    from mai_core.data.demo import generate_demo

    t = time.perf_counter()
    data = generate_demo(tmp / "demo", n_train=p["n_images"], n_test=2, n_genes=p["n_genes"], seed=0,
                         workers=max(1, min(16, os.cpu_count() or 1)))
    print(f"synthetic dataset: {p['n_images']} PNG patches, {p['n_genes']} genes ({time.perf_counter() - t:.1f} s)",
          flush=True)
    me = [sys.executable, str(Path(__file__).resolve())] + (["--dry-run"] if args.dry_run else [])
    if args.batch_size:
        me += ["--batch-size", str(args.batch_size)]

    rows = []
    steps_left = len(train_models) * 2 + 2
    for m in train_models:
        share = left() / steps_left
        res = _run_step(me + ["--step", "model", "--phase", "eager", "--model", m, "--data", str(data)], share, env)
        steps_left -= 1
        row = {"model": m, **facts[m], **{k: res.get(k) for k in ("naive", "recipe")}}
        if not res["ok"]:
            row["error"] = res["error"]
        rows.append(row)
        print(f"  {m}: naive {_fmt((row.get('naive') or {}).get('imgs_per_s'), '{:.1f}')} img/s, recipe "
              f"{_fmt((row.get('recipe') or {}).get('imgs_per_s'), '{:.1f}')} img/s "
              f"({res['seconds']:.0f} s){'; ' + res['error'] if not res['ok'] else ''}", flush=True)

    # 1-process torchrun smoke: the real CLI under torchrun, one epoch
    smoke_run = tmp / "smoke_run"
    smoke_model = TINY_MODEL if args.dry_run else "efficientnet_lite0"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "mai_core",
           "train", "--data", str(data), "--out", str(smoke_run), "--backbone", smoke_model, "--weights", "random",
           "--epochs", "1", "--batch-size", str(p["batch_size"]), "--image-size", str(p["image_size"]),
           "--device", p["device"], "--quiet"]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, **env),
                              timeout=max(60.0, left() / steps_left))
        status = json.loads((smoke_run / "status.json").read_text()) if (smoke_run / "status.json").is_file() else {}
        smoke = {"ok": proc.returncode == 0 and status.get("state") == "finished", "state": status.get("state"),
                 "returncode": proc.returncode, "error": (proc.stderr.strip().splitlines() or [""])[-1]}
    except subprocess.TimeoutExpired:
        smoke = {"ok": False, "state": None, "error": "timed out"}
    steps_left -= 1
    smoke["seconds"] = time.perf_counter() - t
    print(f"torchrun smoke (1 process, {smoke_model}, 1 epoch): {'ok' if smoke['ok'] else 'FAILED'} "
          f"(state {smoke['state']}, {smoke['seconds']:.0f} s){'' if smoke['ok'] else ': ' + smoke['error']}", flush=True)

    slide = {"ok": False, "error": "no run from the torchrun smoke"}
    if smoke["ok"]:
        slide = _run_step(me + ["--step", "slide", "--data", str(data), "--run", str(smoke_run)],
                          max(60.0, left() / steps_left), env)
    steps_left -= 1
    if slide.get("ok"):
        views = sorted(int(k.split("_")[-1][:-4]) for k in slide if k.startswith("tiles_per_s_"))
        print(f"slide inference ({slide['entry_point']}; {slide['slide_px']:,} px pyramidal TIFF, {slide['tiles']} "
              f"tissue tiles of {slide['read_px']} px, {slide['device']}): " + ", ".join(
                  f"{slide[f'tiles_per_s_{v}view']:.0f} tiles/s with {v} view(s) "
                  f"({slide[f'overall_tiles_per_s_{v}view']:.0f} for the whole call)" for v in views), flush=True)
    else:
        print(f"slide inference: FAILED: {slide.get('error')}", flush=True)

    if not args.no_compile:
        for row in rows:
            share = left() / steps_left
            if share < 45.0:
                row["compile_error"] = f"skipped: {max(0.0, left()):.0f} s of the budget left"
                steps_left -= 1
                continue
            res = _run_step(me + ["--step", "model", "--phase", "compiled", "--model", row["model"], "--data",
                                  str(data)], share, env)
            steps_left -= 1
            if res["ok"]:
                row["compiled"] = res["compiled"]
            else:
                row["compile_error"] = res["error"]
            c = row.get("compiled") or {}
            print(f"  {row['model']} + torch.compile ({p['compile_backend']}): "
                  f"{_fmt(c.get('imgs_per_s'), '{:.1f}')} img/s, compile {_fmt(c.get('compile_s'), '{:.0f}')} s"
                  f"{'' if res['ok'] else '; ' + res['error']}", flush=True)

    total = time.perf_counter() - t_start
    shutil.rmtree(tmp, ignore_errors=True)  # the synthetic data, runs and slide of this suite
    print(f"\n{table(rows, args.peak_tflops)}\n")
    print(f"training img/s at batch {p['batch_size']}, {p['image_size']} px; % of peak = 3 x forward FLOPs x best img/s "
          f"/ {args.peak_tflops:.0f} TFLOP/s. torchrun smoke: {'ok' if smoke['ok'] else 'FAILED'}. Slide inference: "
          + (", ".join(f"{slide[k]:.0f} tiles/s ({k.split('_')[-1]})" for k in slide if k.startswith("tiles_per_s_"))
             if slide.get("ok") else "FAILED") + f". Total {total:.0f} s.")
    failed = [r["model"] for r in rows if r.get("error")] + ([] if smoke["ok"] else ["torchrun smoke"]) + \
        ([] if slide.get("ok") else ["slide inference"]) + \
        [f"{r['model']} + compile" for r in rows if r.get("compile_error") and not r["compile_error"].startswith("skipped")]
    if args.out:
        Path(args.out).write_text(json.dumps({"params": p, "rows": rows, "smoke": smoke, "slide": slide,
                                              "total_s": total, "failed": failed}, indent=1, default=str))
    if failed:
        print(f"FAILED steps: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
