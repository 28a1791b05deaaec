"""Accuracy on real data: train on HER2ST sections C2–C4, test on the unseen section C5.

    .venv/bin/python bench/her2st_accuracy.py [--work DIR] [--top-genes 1000] [--strategies ridge,frozen,default]
                                              [--plain] [--out results.json]

Strategies (all through mai_core.train, the same code the CLI runs):
  ridge    ridge regression on frozen EfficientNet-Lite0 embeddings (HEST protocol: PCA 256, alpha on val)
  frozen   MLP heads on cached embeddings of the 8 dihedral views (TTA at prediction)
  default  the CPU default recipe with the dihedral flips only (--aug-policy flips_rot90; the default before he_safe)
  partial  default, but only the last 3 backbone stages trained (--train-blocks 3)
  pca      default, heads predicting 64 principal components of the targets (--pca 64)
  mse_pearson  default without the covariance term (alpha 0.5, beta 0.5; the default mixes in 0.2)
  ema      default with an EMA of weights (decay 0.95)
  long     default trained for 14 epochs instead of 8
  he_safe  the CPU default recipe (no flags): the he_safe augmentation policy (dihedral + mild shift-scale-rotate, brightness/contrast
           and HED stain jitter) instead of the dihedral flips alone
  he_safe_long  he_safe trained for 12 epochs instead of 8
  bblr0.1  default with a 10x lower learning rate for the backbone (--backbone-lr-mult 0.1)
  lite1    default (the dihedral flips) with the EfficientNet-Lite1 backbone
  plain    a plain fine-tune for reference: 6 epochs, MSE + Pearson, flips, one learning rate (1e-4), no TTA/EMA
  plain_lr1e-3  the same plain fine-tune with learning rate 1e-3
  ensemble validation-weighted ensemble of the trained strategies (except ridge)
Reports gene-wise PCC on C5 over the 50 most variable training genes (HEST-style) and over all genes,
plus wall time of each strategy. Needs ../shared/data/her2st; exits cleanly when absent.

Leave-one-section-out (``--folds C2,C3,C4,C5``, strategies default,plain_lr1e-3 unless --strategies says
otherwise; ``--seeds 0,1``): train on the other three sections, test on each; every (strategy, fold, seed)
result, its held-out predictions and the default runs' embeddings of every spot are cached in WORK/loso/, so
``--table-only`` reprints the table for free. The table adds, from that cache, default+smooth (neighbour
smoothing, weight chosen on the run's validation spots) and default+context (what train does with spot
coordinates: the context head when it wins on validation; bench/spatial_context.py shows the parts).
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
    "default": {"aug": {"policy": "flips_rot90"}},  # the CPU default with the dihedral flips (the default until he_safe)
    "partial": {"model": {"train_blocks": 3}},
    "pca": {"model": {"pca_components": 64}},
    "mse_pearson": {"loss": {"alpha": 0.5, "beta": 0.5}},
    "ema": {"optim": {"ema": 0.95}},
    "long": {"optim": {"epochs": 14}},
    "he_safe": {"aug": {"policy": "he_safe"}},
    "he_safe_long": {"aug": {"policy": "he_safe"}, "optim": {"epochs": 12}},
    "bblr0.1": {"optim": {"backbone_lr_mult": 0.1}},
    "lite1": {"model": {"backbone": "efficientnet_lite1"}, "aug": {"policy": "flips_rot90"}},  # as cached
    "plain": {"model": {"drop_path": 0.0, "dropout": 0.0}, "optim": {"epochs": 6, "lr": 1e-4, "backbone_lr_mult": 1.0,
                                                                      "ema": 0.0, "warmup_epochs": 0.0},
              "loss": {"alpha": 0.5, "beta": 0.5, "pearson": "gene"}, "aug": {"policy": "flips_rot90"},
              "predict": {"tta": False}},
}
EMBEDDED = ("default", "lite1", "long", "he_safe", "he_safe_long")  # strategies whose runs also embed every spot (for the context rows)
STRATEGIES["plain_lr1e-3"] = {**STRATEGIES["plain"], "optim": {**STRATEGIES["plain"]["optim"], "lr": 1e-3}}


def recipe_key(cfg: dict) -> str:
    """Finished runs are reused only when their recipe is unchanged; settings applied after training
    (``spatial``: neighbour smoothing, chosen on the run's validation spots) do not change the weights."""
    recipe = {k: v for k, v in cfg.items() if k != "spatial"}
    return hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

def prepare(work: Path, top_genes: int) -> tuple[Path, Path]:
    """Import C2–C5 once; split into a C2–C4 training folder and a C5 test folder (hard links)."""

    from mai_core.data.importer import import_her2st

    full = work / "her2st_all"
    if not (full / "train.csv").exists():
        t0 = time.time()
        import_her2st(SHARED, full, top_genes=top_genes)
        print(f"imported HER2ST C2-C5 ({time.time() - t0:.0f} s)")
    return _split(full, "C5", work / "her2st_c2c4", work / "her2st_c5")


def _split(full: Path, fold: str, train_dir: Path, test_dir: Path) -> tuple[Path, Path]:
    """``fold``'s spots into ``test_dir``, the other sections' into ``train_dir`` (hard links; kept once made)."""
    import pandas as pd

    from mai_core.data.dataset import write_dataset

    df = pd.read_csv(full / "train.csv", dtype={"ID": str, "path": str})
    for d, rows in ((train_dir, df[df["section"] != fold]), (test_dir, df[df["section"] == fold])):
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

# ---- leave-one-section-out: every (strategy, fold, seed) cached with its held-out predictions ----

SECTIONS = ("C2", "C3", "C4", "C5")
LOSO_DEFAULT = "default,plain_lr1e-3"


def fold_dirs(work: Path, fold: str, top_genes: int) -> tuple[Path, Path]:
    """Training folder (the other three sections) and test folder (``fold``), hard links into her2st_all."""
    if fold == "C5":
        return prepare(work, top_genes)  # the single-fold names, so its cached runs are reused
    prepare(work, top_genes)
    others = [s for s in SECTIONS if s != fold]
    return _split(work / "her2st_all", fold, work / ("her2st_" + "".join(s.lower() for s in others)),
                  work / f"her2st_{fold.lower()}")


def train_time(run: Path) -> float:
    """Seconds the run's training loop took (last line of metrics.jsonl), for cached runs too."""
    lines = (run / "metrics.jsonl").read_text().strip().splitlines()
    return float(json.loads(lines[-1])["time"]) if lines else float("nan")


def embed_all(run: Path, full_dir: Path) -> tuple[list[str], np.ndarray]:
    """The run's backbone embeddings (mean over its TTA views) of every spot of C2–C5, for heads on top."""
    from mai_core.data.dataset import load_dataset
    from mai_core.models.model import ModelFeatures
    from mai_core.runs import load_predictor
    from mai_core.runs.predict import Predictor

    full = load_dataset(full_dir)
    pred = load_predictor(run, device="cpu")
    feats = ModelFeatures(pred.model.inner)
    fp = Predictor(feats, [f"f{i}" for i in range(feats.num_features)], pred.config, pred.device,
                   tta_views=pred.tta_views, batch_size=pred.batch_size)
    return full.ids, fp.predict_paths([full.image_path(i) for i in range(full.n_train)])


def loso_one(work: Path, name: str, fold: str, seed: int, top_genes: int, embeddings: bool) -> dict:
    """Train ``name`` on the three other sections, predict ``fold``; results and predictions cached in
    work/loso/ (a rerun reads them)."""
    from mai_core.data.dataset import load_dataset
    from mai_core.metrics import gene_pearson, top_variable_genes
    from mai_core.runs import load_predictor
    from mai_core.training import resolve_config, train

    cache = work / "loso"
    cache.mkdir(parents=True, exist_ok=True)
    stem = cache / f"{name}_{fold}_s{seed}"
    res_path, pred_path, emb_path = (stem.with_suffix(".json"), Path(f"{stem}.pred.npz"), Path(f"{stem}.emb.npz"))
    want_emb = embeddings and name in EMBEDDED
    if res_path.exists() and pred_path.exists() and (emb_path.exists() or not want_emb):
        return json.loads(res_path.read_text())
    train_dir, test_dir = fold_dirs(work, fold, top_genes)
    cfg = resolve_config({"data": str(train_dir), "seed": seed, **STRATEGIES[name]}, device_type="cpu")
    key = recipe_key(cfg)
    run = work / "runs" / f"{name}_s{seed}_{key}"
    status = run / "status.json"
    if not status.exists() or json.loads(status.read_text())["state"] != "finished":
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.time()
        train(cfg, run, progress=False)
        wall = time.time() - t0
    else:
        wall = float("nan")
    test, tr = load_dataset(test_dir), load_dataset(train_dir)
    t0 = time.time()
    p = load_predictor(run, device="cpu").predict_paths([test.image_path(i) for i in range(test.n_train)])
    predict_s = time.time() - t0
    _, per_gene = gene_pearson(test.X, p)
    top = top_variable_genes(tr.X, 50)
    res = {"strategy": name, "fold": fold, "seed": seed, "run": str(run), "train_dir": str(train_dir),
           "test_dir": str(test_dir), "pcc_top50": float(np.nanmean(per_gene[top])),
           "pcc_all": float(np.nanmean(per_gene)), "n_test": int(test.n_train), "n_genes": int(len(per_gene)),
           "n_train": int(tr.n_train), "wall_s": wall, "train_loop_s": train_time(run), "predict_s": predict_s,
           "epochs": int(cfg["optim"]["epochs"])}
    np.savez_compressed(pred_path, ids=np.array(test.ids), genes=np.array(test.genes), pred=p.astype(np.float32),
                        top50=np.array(top))
    if want_emb:
        ids, emb = embed_all(run, work / "her2st_all")
        np.savez_compressed(emb_path, ids=np.array(ids), emb=emb.astype(np.float32))
    res_path.write_text(json.dumps(res, indent=2))
    return res


def with_smoothing(r: dict, work: Path) -> tuple[dict, dict]:
    """The run's held-out predictions smoothed towards their neighbours with the weight the run chooses on
    its own validation spots (no training, no test data in the choice); plus, for information only, the
    held-out PCC at every weight of the grid (the oracle, never used to choose)."""

    from mai_core.data.dataset import load_dataset
    from mai_core.metrics import gene_pearson
    from mai_core.runs import RunDir
    from mai_core.runs.neighbours import WEIGHTS, neighbour_matrix, smooth, smoothing_facts, spot_coordinates

    run = RunDir(r["run"])
    genes = run.read_genes()
    vp = run.read_val_predictions()
    tr, test = load_dataset(r["train_dir"], check_images=False), load_dataset(r["test_dir"], check_images=False)
    pos = {k: i for i, k in enumerate(tr.ids)}
    val_idx = [pos[str(i)] for i in vp["ID"]]
    facts = smoothing_facts({"smoothing": "auto"}, tr.train, val_idx, vp[[f"pred:{g}" for g in genes]].to_numpy(),
                            vp[[f"true:{g}" for g in genes]].to_numpy())
    cached = np.load(f"{work / 'loso' / (r['strategy'] + '_' + r['fold'] + '_s' + str(r['seed']))}.pred.npz")
    p, top = cached["pred"], cached["top50"]
    nb = neighbour_matrix(*spot_coordinates(test.train))
    oracle = {}
    for w in WEIGHTS:
        _, per_gene = gene_pearson(test.X, smooth(p, nb, w))
        oracle[w] = (float(np.nanmean(per_gene[top])), float(np.nanmean(per_gene)))
    w = facts["weight"]
    _, per_gene = gene_pearson(test.X, smooth(p, nb, w))
    out = {**r, "strategy": r["strategy"] + "+smooth", "weight": w, "pcc_top50": float(np.nanmean(per_gene[top])),
           "pcc_all": float(np.nanmean(per_gene))}
    return out, {"fold": r["fold"], "weight": w, "val_gene_pcc": facts.get("val_gene_pcc"), "oracle": oracle}


def context_row(r: dict, work: Path) -> dict | None:
    """What ``train`` now does with coordinates (bench/spatial_context.py: the context head where it beats
    the fine-tuned head on the validation spots, else smoothing), from the run's cached embeddings."""
    sys.path.insert(0, str(REPO / "bench"))
    from spatial_context import fold_rows

    out = fold_rows(work, r["fold"], r["seed"])
    if out is None:
        return None
    used = out["_val"][1] > out["_val"][0]
    print(f"  {r['fold']}: context head validation PCC {out['_val'][1]:.4f} vs fine-tuned head {out['_val'][0]:.4f}: "
          f"{'context head' if used else 'smoothing'} kept", flush=True)
    return {**r, "strategy": "default+context", "pcc_top50": out["train rule"][0], "pcc_all": out["train rule"][1],
            "context_head": bool(used)}


def print_loso(rows: list[dict], names: list[str], folds: list[str]) -> None:
    """Per-fold and mean top-50 / all-genes PCC, gain over the plain fine-tune, training wall time."""
    by = {(r["strategy"], r["fold"]): r for r in rows}
    base = "plain_lr1e-3" if any(k[0] == "plain_lr1e-3" for k in by) else None
    print("\nleave-one-section-out, gene-wise PCC on the held-out section (top-50 / all genes), training minutes")
    print("strategy        " + "".join(f"{f:>22s}" for f in folds) + f"{'mean':>22s}   gain vs plain (top-50)")
    for name in names:
        cells, t50, tall = [], [], []
        for f in folds:
            r = by.get((name, f))
            if r is None:
                cells.append(f"{'-':>22s}")
                continue
            t = r["wall_s"] if r["wall_s"] == r["wall_s"] else r["train_loop_s"]
            cells.append(f"{r['pcc_top50']:8.4f} / {r['pcc_all']:.4f} {t / 60:4.1f}m")
            t50.append(r["pcc_top50"])
            tall.append(r["pcc_all"])
        mean = f"{np.mean(t50):8.4f} / {np.mean(tall):.4f}      " if len(t50) == len(folds) else f"{'-':>22s}"
        gain = ""
        if base and name != base and len(t50) == len(folds):
            b = [by[(base, f)]["pcc_top50"] for f in folds if (base, f) in by]
            if len(b) == len(folds):
                gain = f"{(np.mean(t50) / np.mean(b) - 1) * 100:+.1f} %"
        print(f"{name:15s} " + "".join(cells) + mean + "   " + gain, flush=True)


def run_loso(args, work: Path) -> int:
    folds = [f.strip().upper() for f in args.folds.split(",") if f.strip()]
    bad = [f for f in folds if f not in SECTIONS]
    if bad:
        print(f"unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
        return 2
    names = [s for s in (args.strategies if args.strategies_given else LOSO_DEFAULT).split(",") if s]
    seeds = [int(s) for s in str(args.seeds or args.seed).split(",")]
    rows = []
    for seed in seeds:
        for fold in folds:
            for name in names:
                if args.table_only:
                    p = work / "loso" / f"{name}_{fold}_s{seed}.json"
                    if p.exists():
                        rows.append(json.loads(p.read_text()))
                    continue
                r = loso_one(work, name, fold, seed, args.top_genes, args.embeddings)
                rows.append(r)
                print(f"{name:13s} test {fold} seed {seed}: top-50 {r['pcc_top50']:.4f}  all {r['pcc_all']:.4f}  "
                      f"train {r['train_loop_s'] / 60:.1f} min", flush=True)
        seed_rows = [r for r in rows if r["seed"] == seed]
        extra = []
        for r in [r for r in seed_rows if r["strategy"] == "default"]:
            sm, info = with_smoothing(r, work)
            extra.append(sm)
            print(f"  {r['fold']}: weight {info['weight']:.1f} chosen on validation; held-out top-50 at weights "
                  + " ".join(f"{w:.1f}:{v[0]:.4f}" for w, v in info["oracle"].items()), flush=True)
        for r in [r for r in seed_rows if r["strategy"] == "default"]:
            ctx = context_row(r, work)
            if ctx is not None:
                extra.append(ctx)
        rows += extra
        added = [n for n in ("default+smooth", "default+context") if any(r["strategy"] == n for r in extra)]
        print_loso(seed_rows + extra, names + added, sorted(folds))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "workspace" / "bench_her2st"))
    ap.add_argument("--top-genes", type=int, default=1000)
    ap.add_argument("--strategies", default=None)
    ap.add_argument("--plain", action="store_true", help="also train the plain fine-tune reference (slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results table as JSON")
    ap.add_argument("--tta-sweep", action="store_true",
                    help="also predict C5 with 1, 2, 4 and 8 TTA views for every trained run: gain vs time")
    ap.add_argument("--folds", help="leave-one-section-out: held-out sections, e.g. C2,C3,C4,C5 (strategies "
                                    f"default to {LOSO_DEFAULT}); results cached in WORK/loso/")
    ap.add_argument("--seeds", help="with --folds: comma-separated seeds (default --seed)")
    ap.add_argument("--table-only", action="store_true", help="with --folds: reprint the table from the cache")
    ap.add_argument("--no-embeddings", dest="embeddings", action="store_false",
                    help="with --folds: skip caching the default runs' embeddings of all spots")
    args = ap.parse_args()
    args.strategies_given = args.strategies is not None
    if args.strategies is None:
        args.strategies = "ridge,frozen,default,ensemble"
    if not (SHARED / "C5.jpg").exists():
        print(f"HER2ST data not found at {SHARED}; nothing to benchmark")
        return 0
    work = Path(args.work)
    os.environ.setdefault("MAI_WORKSPACE", str(work / "ws"))
    if args.folds:
        return run_loso(args, work)
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
            key = recipe_key(cfg)
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
