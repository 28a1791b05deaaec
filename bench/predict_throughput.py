"""Prediction throughput: ``predict`` end to end vs the bare forward of the same network, and vs the
previous predict loop, all measured in the same run.

    .venv/bin/python bench/predict_throughput.py [--n 96] [--tta 8] [--genes 250] [--backbone efficientnet_lite0]
                                                 [--repeats 2] [--views-sweep]

A run directory with the real network (``--backbone`` + a linear head, fitted as a ridge run on a small
demo dataset) predicts the ``--n`` PNG patches of an ID,path CSV:

new      ``mai_core.runs.predict_csv`` as the ``predict`` command runs it: decode (overlapped), TTA views,
         model, CSV written atomically.
previous a faithful copy of the predict loop before the fast path (kept below as ``previous_predict_csv``):
         synchronous decoding in chunks of 256, NCHW float batches, every view a fresh tensor, the CPU
         allocator and layout as torch leaves them.
bare     the network's forward alone on ready float batches of the same size, in NCHW and channels_last,
         with the allocator and threads as torch leaves them and as predict tunes them (allocator, idle-core
         thread count); the fastest float32 layout is the reference.
         (bf16 channels_last is printed for information: it changes the numbers, so predict stays float32.)

Every measurement runs in its own fresh process (the allocator setting is per process), in rounds that
interleave the three; ratios are taken within a round. Figures: predict model forwards/s (images × views
÷ wall time) as a fraction of the bare forward (goal >= 80 %), and the speed-up over the previous loop
(goal >= 1.6x), plus the largest difference between the two loops' predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------------------------ baseline
def previous_predict_csv(run_path, csv_path, out_path, tta: int):
    """The predict path as it was before the fast path (load, decode, TTA, model, write), kept verbatim in
    behaviour: synchronous decoding in chunks of 256, NCHW batches, a new tensor for every view."""
    import pandas as pd
    import torch

    from mai_core.data.dataset import read_id_path_csv
    from mai_core.data.images import load_images
    from mai_core.device import resolve_device
    from mai_core.io import write_csv
    from mai_core.models.model import OriginalUnits
    from mai_core.models.tta import dihedral_views
    from mai_core.runs.predict import build_run_model
    from mai_core.runs.rundir import RunDir, read_config

    df, paths = read_id_path_csv(csv_path)
    run = RunDir(run_path)
    cfg = read_config(run)
    dev = resolve_device("cpu")
    genes = run.read_genes()
    model = OriginalUnits(build_run_model(run, cfg, genes)).to(dev).eval()
    bs = int((cfg.get("predict") or {}).get("batch_size", 64))

    def predict_images(arr):
        out = np.empty((len(arr), len(genes)), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(arr), bs):
                x = torch.from_numpy(np.ascontiguousarray(arr[s:s + bs])).to(dev).permute(0, 3, 1, 2)
                x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
                acc = None
                for v in dihedral_views(x, tta):
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=False):
                        y = model(v.contiguous()).float()
                    acc = y if acc is None else acc + y
                out[s:s + len(x)] = (acc / tta).cpu().numpy()
        return out

    values = np.empty((len(paths), len(genes)), dtype=np.float32)
    for s in range(0, len(paths), 256):
        values[s:s + 256] = predict_images(load_images(paths[s:s + 256]))
    out = pd.concat([df[["ID"]].reset_index(drop=True), pd.DataFrame(values, columns=genes)], axis=1)
    write_csv(out_path, out, float_format="%.6g")
    return out


# ------------------------------------------------------------------------------------------------ workers
def worker_predict(kind: str, run: str, csv: str, out: str, tta: int) -> dict:
    import torch

    from mai_core.runs.predict import predict_csv

    t0 = time.perf_counter()
    if kind == "new":
        predict_csv(run, csv, out, device="cpu", progress=False, tta=tta)
    else:
        previous_predict_csv(run, csv, out, tta)
    return {"seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def worker_bare(run: str, batch: int, batches: int, tuned: bool) -> dict:
    import torch

    from mai_core.models.fastpath import tune_cpu
    from mai_core.models.model import OriginalUnits
    from mai_core.runs.predict import build_run_model
    from mai_core.runs.rundir import RunDir, read_config

    if tuned:
        tune_cpu()  # allocator and threads as predict sets them: the reference is the fastest bare forward
    rd = RunDir(run)
    genes = rd.read_genes()
    model = OriginalUnits(build_run_model(rd, read_config(rd), genes)).eval()
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    layouts = {"nchw": (x, False), "channels_last": (x.contiguous(memory_format=torch.channels_last), False)}
    if tuned:
        layouts["channels_last_bf16"] = (layouts["channels_last"][0], True)
    spent = {k: 0.0 for k in layouts}
    with torch.inference_mode():
        for rnd in range(batches + 1):  # round 0 warms up every layout
            for name, (xx, bf16) in layouts.items():
                model.to(memory_format=torch.channels_last if name != "nchw" else torch.contiguous_format)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    t = time.perf_counter()
                    model(xx)
                    if rnd:
                        spent[name] += time.perf_counter() - t
    return {k: batch * batches / v for k, v in spent.items()}


def _spawn(args: list[str], env_extra: dict | None = None) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {args[:2]} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ set-up
def make_run(tmp: Path, n: int, genes: int, backbone: str) -> tuple[Path, Path]:
    """A demo dataset with ``n`` test patches and a ridge run on ``backbone`` (the full network + linear head)."""
    from mai_core.data.demo import generate_demo
    from mai_core.training import resolve_config, train

    data = generate_demo(tmp / "demo", n_train=48, n_test=n, n_genes=genes, seed=0)
    cfg = resolve_config({"data": str(data), "model": {"backbone": backbone, "kind": "ridge"},
                          "split": {"val_fraction": 0.25}, "runtime": {"device": "cpu"}})
    train(cfg, tmp / "run", progress=False)
    return tmp / "run", data / "test.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="patches to predict")
    ap.add_argument("--tta", type=int, default=8, help="TTA views (the default run uses 8)")
    ap.add_argument("--genes", type=int, default=250)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (previous, new, bare)")
    ap.add_argument("--bare-batches", type=int, default=3)
    ap.add_argument("--views-sweep", action="store_true", help="also time the new path with 1, 2, 4 and 8 views")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--csv", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker in ("new", "previous"):
        print(json.dumps(worker_predict(args.worker, args.run, args.csv, args.out, args.tta)))
        return 0
    if args.worker in ("bare-system", "bare-tuned"):
        print(json.dumps(worker_bare(args.run, args.batch, args.bare_batches, args.worker == "bare-tuned")))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="mai_predict_bench_"))
    os.environ["MAI_WORKSPACE"] = str(tmp / "ws")
    run, csv = make_run(tmp, args.n, args.genes, args.backbone)
    from mai_core.runs.rundir import RunDir, read_config

    batch = int((read_config(RunDir(run)).get("predict") or {}).get("batch_size", 64))
    common = ["--run", str(run), "--csv", str(csv), "--tta", str(args.tta)]
    print(f"{args.backbone}, {args.genes} genes, {args.n} PNG patches, {args.tta} TTA view(s), batch {batch}, "
          f"{os.cpu_count()} CPUs; each figure from a fresh process")
    rounds = []
    for r in range(args.repeats):
        res = {}
        for kind in (("previous", "new", "bare") if r % 2 == 0 else ("bare", "new", "previous")):
            if kind == "bare":
                res["bare_system"] = _spawn(["--worker", "bare-system", "--run", str(run), "--batch", str(batch),
                                             "--bare-batches", str(args.bare_batches)])
                res["bare_tuned"] = _spawn(["--worker", "bare-tuned", "--run", str(run), "--batch", str(batch),
                                            "--bare-batches", str(args.bare_batches)])
            else:
                res[kind] = _spawn(["--worker", kind, *common, "--out", str(tmp / f"{kind}.csv")])
        fwd = args.n * args.tta
        new_fps, prev_fps = fwd / res["new"]["seconds"], fwd / res["previous"]["seconds"]
        bt, bs_ = res["bare_tuned"], res["bare_system"]
        ref_name = max(("nchw", "channels_last"), key=lambda k: bt[k])
        ref = bt[ref_name]
        row = {"new_fps": new_fps, "prev_fps": prev_fps, "bare_ref": ref, "ref_layout": ref_name,
               "frac": new_fps / ref, "speedup": res["previous"]["seconds"] / res["new"]["seconds"]}
        rounds.append(row)
        print(f"\nround {r + 1}")
        print(f"  bare forward, allocator as torch leaves it : NCHW {bs_['nchw']:6.1f} img/s   "
              f"channels_last {bs_['channels_last']:6.1f} img/s")
        print(f"  bare forward, tuned allocator + threads    : NCHW {bt['nchw']:6.1f} img/s   "
              f"channels_last {bt['channels_last']:6.1f} img/s   (bf16 channels_last {bt['channels_last_bf16']:6.1f}, "
              f"not used: changes the numbers)")
        print(f"  previous predict (end to end)              : {res['previous']['seconds']:6.2f} s = {prev_fps:6.1f} "
              f"forwards/s")
        print(f"  new predict (end to end)                   : {res['new']['seconds']:6.2f} s = {new_fps:6.1f} "
              f"forwards/s")
        print(f"  -> new predict = {100 * row['frac']:.0f} % of the fastest bare forward ({ref_name}, {ref:.1f} img/s; "
              f"goal >= 80 %); {row['speedup']:.2f}x the previous predict (goal >= 1.6x)")
    import pandas as pd

    a = pd.read_csv(tmp / "new.csv").iloc[:, 1:].to_numpy()
    b = pd.read_csv(tmp / "previous.csv").iloc[:, 1:].to_numpy()
    scale = np.abs(b).max()
    print(f"\npredictions, new vs previous loop: max |difference| {np.abs(a - b).max():.3g} "
          f"(largest value {scale:.3g}; CSV keeps 6 significant digits)")
    print(f"median over {len(rounds)} round(s): new predict {100 * statistics.median(r['frac'] for r in rounds):.0f} % "
          f"of the bare forward, {statistics.median(r['speedup'] for r in rounds):.2f}x the previous predict")
    if args.views_sweep:
        print("\nnew predict by number of TTA views (same patches):")
        base = None
        for v in (1, 2, 4, 8):
            sec = _spawn(["--worker", "new", "--run", str(run), "--csv", str(csv), "--tta", str(v), "--out",
                          str(tmp / f"v{v}.csv")])["seconds"]
            base = base or sec
            print(f"  {v} view(s): {sec:6.2f} s ({sec / base:4.1f}x the 1-view time), {args.n / sec:6.1f} patches/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
