"""The strategies table on real tissue: leave-one-section-out over HER2ST C2–C5, several seeds.

    .venv/bin/python bench/strategies.py [--protocol heads|finetune] [--rows mse,pearson,...] [--seeds 0,1,2]
                                         [--folds C2,C3,C4,C5] [--work DIR] [--table-only] [--list]

Two protocols. ``heads`` (the default; about half an hour on two CPU cores, most of it extracting features once)
trains every strategy as heads on frozen backbone features (``bench/strategies_heads.py`` states it in full).
``finetune`` trains every row end to end with ``mai_core.training.train``: hours per row on a CPU, meant for a
machine with time or a GPU. The sections below describe both; results of the two are cached apart
(``WORK/heads`` and ``WORK/results``).

Every (row, fold, seed) result is cached in ``WORK/results/<row>/<fold>_s<seed>.json`` (test predictions in
``WORK/preds``), so the table is built in pieces (several invocations, in the background) and re-printed with
``--table-only`` at no cost. A row is trained through ``mai_core.training.train``, the same code the CLI runs.

Protocol: each fold trains on three sections and tests on the fourth (all spots); genes are chosen on the
training sections only: the 1,000 most variable ∪ the 250 highest-mean genes are trained. Reported on the
held-out section, gene-wise Pearson averaged over

* ``top-50``: the 50 most variable training genes (HEST-style);
* ``mean-250``: the 250 highest-mean training genes (TRIPLEX-style panel, mean over all 250);
* ``shift``: top-50 again, on the held-out section re-stained with fixed synthetic stain/scanner shifts
  (stronger haematoxylin + paler eosin; a darker, lower-contrast scan). A simulated other-lab test:
  the real sections all come from one patient, one lab, one scanner.

A cell is the mean over seeds of the mean over folds, ± the standard deviation over seeds. A difference to
the reference row is called "no effect" when it is under 0.01 or under two standard errors of the paired
per-seed differences: run-to-run noise in this field is ±0.01–0.03.
Published figures are printed below the table and labelled as other protocols; they are not comparable.
Needs ../shared/data/her2st; exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = REPO.parent / "shared" / "data"
HER2ST = SHARED / "her2st"
HALLMARK = SHARED / "genesets" / "h.all.v7.0.symbols.gmt"
SECTIONS = ("C2", "C3", "C4", "C5")
N_VARIABLE, N_MEAN = 1000, 250

# The 60-line plain fine-tune the default recipe is measured against: ImageNet EfficientNet-Lite0, 6 epochs,
# MSE + Pearson (per gene), horizontal/vertical flips, one learning rate, every training spot, last epoch.
FLIPS_POLICY = {"name": "flips", "description": "horizontal and vertical flips",
                "items": [{"aug": "HorizontalFlip", "p": 0.5, "params": {}},
                          {"aug": "VerticalFlip", "p": 0.5, "params": {}}]}
PLAIN = {"model": {"drop_path": 0.0, "dropout": 0.0},
         "optim": {"epochs": 6, "lr": 1e-3, "backbone_lr_mult": 1.0, "ema": 0.0, "warmup_epochs": 0.0,
                   "min_lr_ratio": 1.0, "grad_clip": 0.0, "weight_decay": 0.0},
         "loss": {"alpha": 0.5, "beta": 0.5, "pearson": "gene"}, "aug": {"policy": "@flips"},
         "split": {"val_fraction": 0.0}, "predict": {"tta": False}}
MSE = {"loss": {"alpha": 1.0, "beta": 0.0}}

# row -> (label, kind, spec). kind "train": config overrides (grouping "@name" = a per-fold grouping file);
# "ensemble": member rows averaged; "post": a base row's predictions post-processed.
ROWS: dict[str, tuple[str, str, dict]] = {
    "ridge": ("ridge on frozen EfficientNet-Lite0 features (floor)", "train", {"model": {"kind": "ridge"}}),
    "plain": ("plain fine-tune (6 ep, MSE+Pearson, flips, 1 lr)", "train", PLAIN),
    "mse": ("MSE fine-tune (8 ep, dihedral aug + TTA, best epoch)", "train", MSE),
    "pearson": ("+ Pearson (α .5, β .5)", "train", {"loss": {"alpha": 0.5, "beta": 0.5}}),
    "covariance": ("+ Pearson + covariance (α .4, β .4, γ .2)", "train", {"loss": {"alpha": 0.4, "beta": 0.4}}),
    "prefix": ("+ prefix heads (MSE)", "train", {**MSE, "grouping": {"path": "@prefix"}}),
    "geneset": ("+ gene-set heads, Hallmark (MSE)", "train", {**MSE, "grouping": {"path": "@hallmark"}}),
    "kmeans5": ("+ k-means K=5 heads (MSE)", "train", {**MSE, "grouping": {"path": "@kmeans5"}}),
    "pathway": ("+ Hallmark pathway weights ×2 + within-set co-loss 0.1 (on covariance)", "train",
                {"loss": {"alpha": 0.4, "beta": 0.4, "pathway_gmt": str(HALLMARK), "pathway_weight": 2.0,
                          "coexp_weight": 0.1}}),
    "all": ("all strategies: Pearson + cov + prefix/k-means heads", "train",
            {"loss": {"alpha": 0.4, "beta": 0.4}, "grouping": {"path": "@prefix_kmeans5"}}),
    "all_lite1": ("all strategies, EfficientNet-Lite1", "train",
                  {"loss": {"alpha": 0.4, "beta": 0.4}, "grouping": {"path": "@prefix_kmeans5"},
                   "model": {"backbone": "efficientnet_lite1"}}),
    "all_lite2": ("all strategies, EfficientNet-Lite2", "train",
                  {"loss": {"alpha": 0.4, "beta": 0.4}, "grouping": {"path": "@prefix_kmeans5"},
                   "model": {"backbone": "efficientnet_lite2"}}),
    "ensemble3": ("ensemble of Lite0/1/2 (all strategies)", "ensemble", {"members": ["all", "all_lite1", "all_lite2"]}),
    "default": ("default `train` (CPU recipe, no flags)", "train", {}),
}
# the row each row is compared with ("Δ" column)
REFERENCE = {"pearson": "mse", "covariance": "mse", "pathway": "covariance", "prefix": "mse", "geneset": "mse", "kmeans5": "mse",
             "all": "mse", "ensemble3": "all", "mse": "plain", "default": "plain", "ridge": "plain"}
PUBLISHED = [
    ("contest entry: single backbone → + heads → + Pearson/cov loss → 3-backbone ensemble",
     "0.5201 → 0.5400 → 0.5417 → 0.5428", "its own contest split and gene set"),
    ("TRIPLEX (CVPR 2024), HER2ST", "0.314 mean PCC over 250 genes",
     "leave-one-patient-out on all 36 sections, 250 highest-mean genes"),
]


# ------------------------------------------------------------------------------------------------ data
def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def panel(X: np.ndarray) -> np.ndarray:
    """Column indices trained: the N_VARIABLE most variable ∪ the N_MEAN highest-mean (training) genes."""
    from mai_core.metrics import top_variable_genes

    var_idx = top_variable_genes(X, N_VARIABLE)
    mean_idx = np.argsort(-X.mean(0), kind="stable")[:N_MEAN]
    return np.array(list(dict.fromkeys([*var_idx.tolist(), *mean_idx.tolist()])))


def prepare(work: Path, folds) -> dict[str, dict]:
    """Import C2–C5 once (all genes); per fold a training folder (3 sections) and a test folder (1 section)
    with the fold's gene panel, plus the fold's gene groupings."""
    import pandas as pd

    from mai_core.data.dataset import write_dataset
    from mai_core.data.importer import import_her2st

    full = work / "her2st_all"
    if not (full / "train.csv").exists():
        t0 = time.time()
        import_her2st(HER2ST, full, top_genes=None)
        print(f"imported HER2ST C2-C5, all genes ({time.time() - t0:.0f} s)", flush=True)
    df = None
    out = {}
    for fold in folds:
        d = work / f"fold_{fold}"
        info_path = d / "fold.json"
        if not info_path.exists():
            if df is None:
                df = pd.read_csv(full / "train.csv", dtype={"ID": str, "path": str})
            meta = [c for c in df.columns if c in ("ID", "path", "section", "px", "py", "array_x", "array_y")]
            genes_all = [c for c in df.columns if c not in meta]
            tr = df[df["section"] != fold].reset_index(drop=True)
            te = df[df["section"] == fold].reset_index(drop=True)
            Xtr = tr[genes_all].to_numpy(np.float64)
            idx = panel(Xtr)
            genes = [genes_all[i] for i in idx]
            Xp = Xtr[:, idx]
            from mai_core.metrics import top_variable_genes

            top50 = [genes[i] for i in top_variable_genes(Xp, 50)]
            mean250 = [genes[i] for i in np.argsort(-Xp.mean(0), kind="stable")[:N_MEAN]]
            for sub, rows in (("train", tr), ("test", te)):
                for rel in rows["path"]:
                    _link(full / rel, d / sub / rel)
                write_dataset(d / sub, rows[meta + genes])
            make_groupings(d, Xp, genes)
            info_path.write_text(json.dumps({"fold": fold, "genes": len(genes), "top50": top50,
                                             "mean250": mean250, "n_train": len(tr), "n_test": len(te)}))
        out[fold] = {"dir": d, **json.loads(info_path.read_text())}
    return out


def make_groupings(d: Path, X: np.ndarray, genes: list[str]) -> None:
    """The fold's gene groupings for cluster-wise heads, built on its training sections only."""
    from mai_core.genes import geneset_groups, kmeans_genes, parse_gmt, prefix_groups
    from mai_core.genes.grouping import Grouping

    g = d / "groupings"
    g.mkdir(parents=True, exist_ok=True)
    pre = prefix_groups(genes)
    pre.save(g / "prefix.csv")
    geneset_groups(genes, parse_gmt(HALLMARK), min_size=5, source=str(HALLMARK)).save(g / "hallmark.csv")
    km = kmeans_genes(X, genes, k=5, seed=0)
    km.save(g / "kmeans5.csv")
    # both entry strategies at once: a gene with a name-prefix family keeps it, every other gene its k-means cluster
    both = [p if p != "other" else f"k{k}" for p, k in zip(pre.groups, km.groups)]
    Grouping(list(genes), both, "prefix+kmeans", {"prefix": pre.params, "kmeans": km.params}).save(
        g / "prefix_kmeans5.csv")


# ------------------------------------------------------------------------------------------------ runs
def _resolve_refs(obj, fold_dir: Path, work: Path):
    """'@name' strings: a grouping of the fold, or a policy written into the work folder."""
    if isinstance(obj, dict):
        return {k: _resolve_refs(v, fold_dir, work) for k, v in obj.items()}
    if isinstance(obj, str) and obj.startswith("@"):
        name = obj[1:]
        if (fold_dir / "groupings" / f"{name}.csv").exists():
            return str(fold_dir / "groupings" / f"{name}.csv")
        if name == "flips":
            import yaml

            p = work / "policies" / "flips.yaml"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(yaml.safe_dump(FLIPS_POLICY, sort_keys=False))
            return str(p)
        raise KeyError(f"unknown reference {obj}")
    return obj


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def stain_shifts(images: np.ndarray) -> list[np.ndarray]:
    """Fixed synthetic other-lab versions of uint8 N×H×W×3 patches (deterministic)."""
    import torch

    from mai_core.augment import hed_to_rgb, rgb_to_hed

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    hed = rgb_to_hed(x)
    a = hed_to_rgb(hed * torch.tensor([1.3, 0.75, 1.0]).view(1, 3, 1, 1) + torch.tensor([0.03, -0.02, 0.0]).view(1, 3, 1, 1))
    b = ((x * 0.85 - 0.5) * 0.8 + 0.5).clamp(0, 1) ** 1.15
    return [(t.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy() for t in (a, b)]


def score(pred: np.ndarray, shifted: list[np.ndarray], y: np.ndarray, genes: list[str], info: dict) -> dict:
    from mai_core.metrics import gene_pearson

    pos = {g: i for i, g in enumerate(genes)}
    top = [pos[g] for g in info["top50"]]
    m250 = [pos[g] for g in info["mean250"]]
    _, r = gene_pearson(y, pred)
    r = np.nan_to_num(r, nan=0.0)  # a gene predicted constant counts as no correlation
    out = {"top50": float(r[top].mean()), "mean250": float(r[m250].mean()), "all": float(r.mean())}
    if shifted:
        rs = [np.nan_to_num(gene_pearson(y, p)[1], nan=0.0) for p in shifted]
        out["shift"] = float(np.mean([q[top].mean() for q in rs]))
    return out


def test_data(fold: dict):
    from mai_core.data.dataset import load_dataset

    te = load_dataset(fold["dir"] / "test")
    images = te.images("train", np.arange(te.n_train))
    return te, images


def train_row(row: str, fold: dict, seed: int, work: Path) -> tuple[dict, dict]:
    """Train one (row, fold, seed); returns (metrics, predictions)."""
    from mai_core.runs import load_predictor
    from mai_core.training import resolve_config, train

    spec = _resolve_refs(ROWS[row][2], fold["dir"], work)
    cfg = resolve_config({"data": str(fold["dir"] / "train"), "seed": seed, **spec}, device_type="cpu")
    out = work / "runs" / row / f"{fold['fold']}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    load0, t0 = _load(), time.time()
    train(cfg, out, progress=False)
    t_train = time.time() - t0
    te, images = test_data(fold)
    pred = load_predictor(out, device="cpu")
    p = pred.predict_images(images)
    shifted = [pred.predict_images(s) for s in stain_shifts(images)]
    t_all = time.time() - t0
    (out / "checkpoints" / "last_state.pt").unlink(missing_ok=True)
    preds = {"pred": p, "shift0": shifted[0], "shift1": shifted[1], "genes": np.array(pred.genes)}
    met = score(p, shifted, te.X[:, [list(te.genes).index(g) for g in pred.genes]], pred.genes, fold)
    met.update(train_s=round(t_train, 1), total_s=round(t_all, 1), load=round((load0 + _load()) / 2, 2),
               run=str(out))
    return met, preds


def combine_row(row: str, fold: dict, seed: int, work: Path) -> tuple[dict, dict]:
    """An ensemble row: mean of its member rows' cached predictions (members must be done)."""
    members = ROWS[row][2]["members"]
    parts = [np.load(pred_path(work, m, fold["fold"], seed)) for m in members]
    genes = list(parts[0]["genes"])
    te, _ = test_data(fold)
    y = te.X[:, [list(te.genes).index(g) for g in genes]]
    preds = {k: np.mean([p[k] for p in parts], axis=0) for k in ("pred", "shift0", "shift1")}
    met = score(preds["pred"], [preds["shift0"], preds["shift1"]], y, genes, fold)
    res = [json.loads(result_path(work, m, fold["fold"], seed).read_text()) for m in members]
    met.update(train_s=sum(r["train_s"] for r in res), total_s=sum(r["total_s"] for r in res),
               load=float(np.mean([r["load"] for r in res])))
    return met, {**preds, "genes": np.array(genes)}


def result_path(work: Path, row: str, fold: str, seed: int) -> Path:
    return work / "results" / row / f"{fold}_s{seed}.json"


def pred_path(work: Path, row: str, fold: str, seed: int) -> Path:
    return work / "preds" / row / f"{fold}_s{seed}.npz"


def ensure(row: str, fold: dict, seed: int, work: Path, done: set) -> dict:
    rp = result_path(work, row, fold["fold"], seed)
    if rp.exists():
        return json.loads(rp.read_text())
    kind = ROWS[row][1]
    if kind == "ensemble":
        for m in ROWS[row][2]["members"]:
            ensure(m, fold, seed, work, done)
        met, preds = combine_row(row, fold, seed, work)
    else:
        print(f"[{time.strftime('%H:%M:%S')}] training {row} fold {fold['fold']} seed {seed} "
              f"(load {_load():.2f})", flush=True)
        met, preds = train_row(row, fold, seed, work)
    pp = pred_path(work, row, fold["fold"], seed)
    pp.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(pp, **preds)
    rp.parent.mkdir(parents=True, exist_ok=True)
    rp.write_text(json.dumps(met, indent=1))
    print(f"  {row} {fold['fold']} s{seed}: top-50 {met['top50']:.4f}  mean-250 {met['mean250']:.4f}  "
          f"shift {met.get('shift', float('nan')):.4f}  ({met['total_s'] / 60:.1f} min, load {met['load']:.2f})",
          flush=True)
    return met


# ------------------------------------------------------------------------------------------------ table
def collect(work: Path, row: str, folds, seeds) -> dict[tuple[str, int], dict]:
    out = {}
    for f in folds:
        for s in seeds:
            p = result_path(work, row, f, s)
            if p.exists():
                out[(f, s)] = json.loads(p.read_text())
    return out


def per_seed(res: dict, key: str, folds, seeds) -> dict[int, float]:
    """Fold-mean of ``key`` for every seed that has all folds."""
    out = {}
    for s in seeds:
        vals = [res[(f, s)].get(key) for f in folds if (f, s) in res]
        if len(vals) == len(folds) and all(v is not None for v in vals):
            out[s] = float(np.mean(vals))
    return out


def fmt(vals: dict[int, float]) -> str:
    if not vals:
        return "—"
    v = np.array(list(vals.values()))
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def delta(a: dict[int, float], b: dict[int, float]) -> str:
    common = sorted(set(a) & set(b))
    if not common:
        return ""
    d = np.array([a[s] - b[s] for s in common])
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    rel = d.mean() / np.mean([b[s] for s in common]) * 100
    noise = abs(d.mean()) < 0.01 or (math.isfinite(se) and abs(d.mean()) < 2 * se)
    note = "  no effect" if noise else ("  (1 seed)" if len(d) == 1 else "")
    return f"{d.mean():+.3f} ({rel:+.1f} %){note}"


def print_table(work: Path, rows, folds, seeds, labels=None, reference=None) -> None:
    labels = labels or {k: v[0] for k, v in ROWS.items()}
    reference = REFERENCE if reference is None else reference
    print(f"\nLeave-one-section-out on HER2ST {', '.join(folds)} (train on the other sections, test on the "
          f"held-out one); seeds {', '.join(map(str, seeds))}; mean over seeds of the fold mean ± sd over seeds")
    head = (f"{'row':11s} {'top-50 PCC':>15s} {'mean-250 PCC':>15s} {'stain-shift top-50':>19s}  "
            f"{'Δ top-50 vs ref':>28s} {'ref':>10s} {'min/run':>8s} {'load':>5s} {'runs':>5s}  strategy")
    print(head)
    print("-" * len(head))
    for row in rows:
        res = collect(work, row, folds, seeds)
        if not res:
            print(f"{row:11s} {'(not run)':>15s}")
            continue
        t = per_seed(res, "top50", folds, seeds)
        ref = reference.get(row)
        d = delta(t, per_seed(collect(work, ref, folds, seeds), "top50", folds, seeds)) if ref else ""
        mins = np.mean([r["total_s"] for r in res.values()]) / 60
        load = np.mean([r["load"] for r in res.values()])
        print(f"{row:11s} {fmt(t):>15s} {fmt(per_seed(res, 'mean250', folds, seeds)):>15s} "
              f"{fmt(per_seed(res, 'shift', folds, seeds)):>19s}  {d:>28s} {ref or '':>10s} {mins:8.1f} "
              f"{load:5.2f} {len(res):5d}  {labels[row]}")
    print("\nPublished figures (other protocols, not comparable with the rows above):")
    for name, fig, proto in PUBLISHED:
        print(f"  {name}: {fig}  [{proto}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "workspace" / "strategies"))
    ap.add_argument("--protocol", choices=("heads", "finetune"), default="heads",
                    help="heads: strategies as heads on frozen features (fast); finetune: end-to-end training")
    ap.add_argument("--rows", default=None, help="comma-separated rows (see --list; default: all of the protocol)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", default=",".join(SECTIONS))
    ap.add_argument("--table-only", action="store_true", help="print the table from cached results, train nothing")
    ap.add_argument("--list", action="store_true", help="list the rows")
    args = ap.parse_args()
    import strategies_heads as H

    table = {k: v[0] for k, v in (H.ROWS.items() if args.protocol == "heads" else ROWS.items())}
    if args.list:
        for k, label in table.items():
            print(f"{k:11s} {label}")
        return 0
    rows = [r for r in (args.rows or ",".join(table)).split(",") if r]
    unknown = [r for r in rows if r not in table]
    if unknown:
        print(f"unknown row(s) {unknown}; --list shows them", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    folds = [f for f in args.folds.split(",") if f]
    work = Path(args.work)
    if args.protocol == "heads":
        if not args.table_only:
            if not (HER2ST / "C5.jpg").exists():
                print(f"HER2ST data not found at {HER2ST}; nothing to benchmark")
                return 0
            os.environ.setdefault("MAI_WORKSPACE", str(work / "ws"))
            H.run(sys.modules[__name__], work, rows, folds, seeds)
        print_table(work / "heads", rows, folds, seeds, table, H.REFERENCE)
        print("\n" + H.describe())
        return 0
    if not args.table_only:
        if not (HER2ST / "C5.jpg").exists():
            print(f"HER2ST data not found at {HER2ST}; nothing to benchmark")
            return 0
        os.environ.setdefault("MAI_WORKSPACE", str(work / "ws"))
        info = prepare(work, folds)
        t0 = time.time()
        for seed in seeds:
            for fold in folds:
                for row in rows:
                    ensure(row, info[fold], seed, work, set())
        print(f"\nwall time of this invocation: {(time.time() - t0) / 60:.1f} min")
    print_table(work, rows, folds, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
