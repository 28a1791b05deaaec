"""The fast protocol of ``bench/strategies.py``: every strategy trained as heads on frozen backbone features.

Fine-tuning every row × 4 folds × 3 seeds takes days on two CPU cores. Here each backbone (ImageNet
EfficientNet-Lite0/1/2, offline package weights, 224 px) sees every HER2ST C2–C5 spot once per view: the four
flip views (identity, horizontal flip, vertical flip, both = rotation by 180°) and the two synthetic
stain/scanner shifts of :func:`strategies.stain_shifts`. The features are cached in ``WORK/heads/features``.
Each (row, fold, seed) then trains linear heads with the row's loss and gene grouping, built by the same
library code as a training run (``mai_core.training.objective.build_loss`` with the fold's grouping files,
a ``mai_core.models.model.GeneModel`` linear head; see :func:`train_heads` for how groups enter): 60 epochs, AdamW (lr 1e-3, weight decay 1e-4, cosine schedule with one
warm-up epoch), batch 64, one CPU thread, one random flip view per spot and step, no validation split (last epoch); the
held-out section is predicted as the mean over the four views (flip test-time augmentation).
Targets are standardised per gene on the training sections. The seed sets the head initialisation and the
batch order; the ridge floor is deterministic (its sd is 0).

What this protocol measures is how much each strategy's loss and gene grouping add on top of a fixed
representation; effects that need the backbone to adapt (fine-tuning) are not measured here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

VIEWS = (0, 2, 4, 6)  # dihedral indices of mai_core.models.tta: identity, rot 180 (= both flips), hflip, vflip
EPOCHS, BATCH, LR, WEIGHT_DECAY = 60, 64, 1e-3, 1e-4
MSE = {"alpha": 1.0, "beta": 0.0}
COV = {"alpha": 0.4, "beta": 0.4}
LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

# row -> (label, spec): spec keys "loss" (overrides of the config's loss section), "grouping" (a fold grouping
# file name), "backbone", "members" (ensemble rows), "ridge"
ROWS: dict[str, tuple[str, dict]] = {
    "ridge": ("ridge on frozen Lite0 features (floor)", {"ridge": True}),
    "mse": ("MSE heads (Lite0)", {"loss": MSE}),
    "pearson": ("+ Pearson (α .5, β .5)", {"loss": {"alpha": 0.5, "beta": 0.5}}),
    "covariance": ("+ Pearson + covariance (α .4, β .4, γ .2)", {"loss": COV}),
    "pathway": ("+ Hallmark pathway weights ×2 + within-set co-loss 0.1 (on covariance)",
                {"loss": {**COV, "pathway_gmt": "@hallmark_gmt", "pathway_weight": 2.0, "coexp_weight": 0.1}}),
    "prefix": ("+ prefix heads (MSE)", {"loss": MSE, "grouping": "prefix"}),
    "geneset": ("+ gene-set heads, Hallmark (MSE)", {"loss": MSE, "grouping": "hallmark"}),
    "kmeans5": ("+ k-means K=5 heads (MSE)", {"loss": MSE, "grouping": "kmeans5"}),
    "all": ("all strategies: Pearson + cov + prefix/k-means heads", {"loss": COV, "grouping": "prefix_kmeans5"}),
    "all_lite1": ("all strategies, Lite1", {"loss": COV, "grouping": "prefix_kmeans5", "backbone": LITE[1]}),
    "all_lite2": ("all strategies, Lite2", {"loss": COV, "grouping": "prefix_kmeans5", "backbone": LITE[2]}),
    "ensemble3": ("ensemble of Lite0/1/2 (all strategies)", {"members": ["all", "all_lite1", "all_lite2"]}),
    "context": ("+ spatial context: own features ⊕ mean of the neighbouring spots' (covariance loss)",
                {"loss": COV, "context": True}),
}
REFERENCE = {"context": "covariance", "pearson": "mse", "covariance": "mse", "pathway": "covariance", "prefix": "mse", "geneset": "mse",
             "kmeans5": "mse", "all": "mse", "ensemble3": "all", "mse": "ridge"}


def backbone_features(S, work: Path, backbone: str) -> dict[str, np.ndarray]:
    """Features of every C2–C5 spot: ``view{v}`` for the flip views, ``shift0`` / ``shift1`` (cached)."""
    from mai_core.data.dataset import load_dataset
    from mai_core.models.backbones import create_feature_extractor, extract_features
    from mai_core.models.tta import dihedral_view_np

    ds = load_dataset(work / "her2st_all")
    cache = work / "heads" / "features"
    keys = [f"view{v}" for v in VIEWS] + ["shift0", "shift1"]
    state: dict = {}

    def images():
        if "images" not in state:
            state["images"] = ds.images("train", np.arange(ds.n_train))
        return state["images"]

    def loader(key):
        if key.startswith("view"):
            return lambda: dihedral_view_np(images(), int(key[4:]))
        return lambda: S.stain_shifts(images())[int(key[5:])]

    model, _ = create_feature_extractor(backbone, weights="auto", device="cpu")
    out = {}
    for key in keys:
        t0 = time.time()
        out[key] = extract_features(backbone, loader(key), n=ds.n_train, model=model, device="cpu",
                                    cache_key=f"{ds.fingerprint}_{key}", cache_dir=cache, progress=False,
                                    batch_size=32)
        if time.time() - t0 > 1:
            print(f"  features {backbone} {key}: {time.time() - t0:.0f} s", flush=True)
    return out


def neighbour_mean(work: Path, radius: float = 1.6) -> np.ndarray:
    """Row-normalised N×N matrix: each spot's neighbours on its own section (array-grid distance ≤ ``radius``,
    the 8 surrounding spots of the ST grid); a spot without neighbours keeps itself."""
    import pandas as pd

    full = pd.read_csv(work / "her2st_all" / "train.csv", usecols=["section", "array_x", "array_y"])
    xy = full[["array_x", "array_y"]].to_numpy(np.float64)
    sec = full["section"].to_numpy()
    d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    A = ((d <= radius) & (d > 0) & (sec[:, None] == sec[None, :])).astype(np.float32)
    lonely = A.sum(1) == 0
    A[lonely, lonely] = 1.0
    return A / A.sum(1, keepdims=True)


def with_context(f: dict, A: np.ndarray) -> dict:
    """Each feature set with the neighbours' mean appended (the neighbours seen in the same view)."""
    return {k: np.concatenate([v, A @ v], axis=1).astype(np.float32) for k, v in f.items()}


def _targets(work: Path, fold: dict):
    import pandas as pd

    full = pd.read_csv(work / "her2st_all" / "train.csv", dtype={"ID": str, "path": str})
    genes = [c for c in pd.read_csv(fold["dir"] / "train" / "train.csv", nrows=0).columns
             if c not in ("ID", "path", "section", "px", "py", "array_x", "array_y")]
    tr = np.flatnonzero((full["section"] != fold["fold"]).to_numpy())
    te = np.flatnonzero((full["section"] == fold["fold"]).to_numpy())
    Y = full[genes].to_numpy(np.float64)
    return genes, tr, te, Y


def _groups(fold: dict, genes: list[str], name: str | None):
    if not name:
        return None
    from mai_core.genes.grouping import load_grouping

    g = load_grouping(fold["dir"] / "groupings" / f"{name}.csv")
    by_gene = dict(zip(g.genes, g.groups))
    labels = [by_gene.get(x, "other") for x in genes]
    order = list(dict.fromkeys(labels))
    return [[i for i, lab in enumerate(labels) if lab == o] for o in order]


def train_heads(F: np.ndarray, Z: np.ndarray, loss, seed: int):
    """Linear heads on V×N×D features and N×G standardised targets; returns the model.

    A linear head per gene group is a block of rows of one linear map (every gene has its own weights either
    way), so the heads are trained as one ``GeneModel`` head (the same initialisation); what a grouping changes
    is the objective: ``loss`` (built with the groups) averages its terms per group. This is ten times faster
    than one module per group on a CPU; the only difference is one dropout mask per spot instead of one per
    group."""
    import torch
    from torch import nn

    from mai_core.models.model import GeneModel, cosine_lr

    torch.manual_seed(seed)
    model = GeneModel(nn.Identity(), Z.shape[1], None, head="linear", dropout=0.1, num_features=F.shape[2])
    params = list(model.heads.parameters())
    try:  # the fused kernel is several times faster for heads this small
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    Ft, Zt = torch.from_numpy(F), torch.from_numpy(Z.astype(np.float32))
    n = Z.shape[0]
    spe = max(1, int(np.ceil(n / BATCH)))
    total, step = EPOCHS * spe, 0
    g = torch.Generator().manual_seed(seed)
    model.heads.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(n, generator=g)
        for s in range(spe):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            if len(idx) < 2:
                continue
            v = torch.randint(0, F.shape[0], (len(idx),), generator=g)
            for pg in opt.param_groups:
                pg["lr"] = LR * cosine_lr(step, total, spe, 0.01)
            lo = loss(model.head_forward(Ft[v, idx]), Zt[idx])
            opt.zero_grad(set_to_none=True)
            lo.backward()
            opt.step()
            step += 1
    return model.eval()


def run_one(S, work: Path, row: str, fold: dict, seed: int, feats: dict) -> tuple[dict, dict]:
    import torch

    from mai_core.training.config import BASE_CONFIG
    from mai_core.training.objective import build_loss

    spec = ROWS[row][1]
    genes, tr, te, Y = _targets(work, fold)
    mu, sd = Y[tr].mean(0), Y[tr].std(0)
    sd[sd < 1e-8] = 1.0
    Z = (Y - mu) / sd
    f = feats[spec.get("backbone", LITE[0])]
    if spec.get("context"):
        f = with_context(f, neighbour_mean(work))
    t0 = time.time()
    if spec.get("ridge"):
        from mai_core.models.ridge import fit_ridge, predict_ridge

        fit = fit_ridge(f["view0"][tr], Z[tr], None, None)
        pred = [predict_ridge(fit, f[k][te]) for k in ("view0", "shift0", "shift1")]
    else:
        groups = _groups(fold, genes, spec.get("grouping"))
        lc = {**BASE_CONFIG["loss"], **spec["loss"]}
        if lc.get("pathway_gmt") == "@hallmark_gmt":
            lc["pathway_gmt"] = str(S.HALLMARK)
        loss, _ = build_loss({"loss": lc}, genes, groups)
        F = np.stack([f[f"view{v}"][tr] for v in VIEWS])
        model = train_heads(F, Z[tr], loss, seed)
        with torch.no_grad():
            def head(key):
                return model.head_forward(torch.from_numpy(f[key][te])).numpy()

            pred = [np.mean([head(f"view{v}") for v in VIEWS], axis=0), head("shift0"), head("shift1")]
    t_train = time.time() - t0
    y = Y[te]
    met = S.score(pred[0], pred[1:], y, genes, fold)
    met.update(train_s=round(t_train, 2), total_s=round(t_train, 2), load=round(S._load(), 2))
    return met, {"pred": pred[0], "shift0": pred[1], "shift1": pred[2], "genes": np.array(genes)}


def ensure(S, work: Path, row: str, fold: dict, seed: int, feats: dict) -> dict:
    hw = work / "heads"
    rp = S.result_path(hw, row, fold["fold"], seed)
    if rp.exists():
        return json.loads(rp.read_text())
    spec = ROWS[row][1]
    if "members" in spec:
        parts = [np.load(S.pred_path(hw, m, fold["fold"], seed)) if S.pred_path(hw, m, fold["fold"], seed).exists()
                 else None for m in spec["members"]]
        for m, p in zip(spec["members"], parts):
            if p is None:
                ensure(S, work, m, fold, seed, feats)
        parts = [np.load(S.pred_path(hw, m, fold["fold"], seed)) for m in spec["members"]]
        genes, _, te, Y = _targets(work, fold)
        preds = {k: np.mean([p[k] for p in parts], axis=0) for k in ("pred", "shift0", "shift1")}
        met = S.score(preds["pred"], [preds["shift0"], preds["shift1"]], Y[te], genes, fold)
        res = [json.loads(S.result_path(hw, m, fold["fold"], seed).read_text()) for m in spec["members"]]
        met.update(train_s=sum(r["train_s"] for r in res), total_s=sum(r["total_s"] for r in res),
                   load=float(np.mean([r["load"] for r in res])))
        preds["genes"] = np.array(genes)
    else:
        met, preds = run_one(S, work, row, fold, seed, feats)
    pp = S.pred_path(hw, row, fold["fold"], seed)
    pp.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(pp, **preds)
    rp.parent.mkdir(parents=True, exist_ok=True)
    rp.write_text(json.dumps(met, indent=1))
    print(f"  {row} {fold['fold']} s{seed}: top-50 {met['top50']:.4f}  mean-250 {met['mean250']:.4f}  "
          f"shift {met['shift']:.4f}  ({met['total_s']:.1f} s)", flush=True)
    return met


def run(S, work: Path, rows: list[str], folds: list[str], seeds: list[int]) -> None:
    """Train every (row, fold, seed) not cached yet, then print the table."""
    info = S.prepare(work, folds)
    needed = {ROWS[r][1].get("backbone", LITE[0]) for r in rows if "members" not in ROWS[r][1]}
    for r in rows:
        for m in ROWS[r][1].get("members", []):
            needed.add(ROWS[m][1].get("backbone", LITE[0]))
    import torch

    t0 = time.time()
    feats = {b: backbone_features(S, work, b) for b in LITE if b in needed}
    t_feat = time.time() - t0
    # heads are small: one thread is faster than two on a shared machine (no oversubscription)
    torch.set_num_threads(1)
    t1 = time.time()
    for seed in seeds:
        for fold in folds:
            for row in rows:
                ensure(S, work, row, info[fold], seed, feats)
    t_heads = time.time() - t1
    print(f"\nwall time of this invocation: features {t_feat / 60:.1f} min (cached after the first run), "
          f"heads {t_heads / 60:.1f} min")


def describe() -> str:
    return (f"Protocol `heads` (fast): strategies trained as linear heads on frozen ImageNet EfficientNet-Lite "
            f"features (224 px, 4 flip views for training and test-time averaging), {EPOCHS} epochs, "
            f"last epoch; the backbone is not fine-tuned. `--protocol finetune` trains every row end to end.")
