"""Spatial context on top of the fine-tuned default recipe, scored leave-one-section-out on HER2ST from the
cache of ``bench/her2st_accuracy.py --folds C2,C3,C4,C5`` (no training here).

    .venv/bin/python bench/spatial_context.py [--work DIR] [--seed 0] [--ensembles A+B,...] [--plain-seeds 0,1,2]

Per held-out section, from the default run's cached embeddings of every spot (its fine-tuned backbone, mean
over its TTA views) and its cached held-out predictions:
  plain fine-tune    the plain fine-tune's predictions (6 epochs, MSE + Pearson, flips, lr 1e-3), for reference
  default            the run's own predictions
  default+smooth     predictions smoothed towards the neighbours' (weight chosen on the run's validation spots)
  ridge(own)         ridge on the spot's own embedding, fitted on the training sections (alpha on the run's
                     validation spots): the control for the next row
  ridge(own+nbr)     ridge on own ⊕ mean of the neighbouring spots' embeddings (a context head, TRIPLEX-style)
  mean(default, ridge(own+nbr))   the two averaged
  context head (product)  mai_core.runs.contexthead, as train fits it: ridge(own+nbr), then refitted on the
                     training and validation spots with the chosen penalty (the gap to ridge(own+nbr) is
                     what the refit adds)
  train rule         what train keeps: the context head where it beats the fine-tuned head on the validation
                     spots, else default+smooth
Top-50 = the 50 most variable genes of the training sections; all = every gene.

``--ensembles default_s0+default_s1,default_s0+lite1_s0`` adds rows for ensembles of cached runs (``STRATEGY_sSEED``
in WORK/loso with embeddings): every member's context head, as train fits it, averaged with equal weights, which
is how an ensemble built by ``mai_core ensemble`` (mean weights) predicts when every member kept its head. A
member whose head would lose to its fine-tuned head on its validation spots is named (the product ensemble
would then fall back to the fine-tuned heads). Members' own context-head rows are printed too.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def score(y: np.ndarray, p: np.ndarray, top) -> tuple[float, float]:
    from mai_core.metrics import gene_pearson

    _, r = gene_pearson(y, p)
    return float(np.nanmean(r[top])), float(np.nanmean(r))


def cached_fold(work: Path, name: str, fold: str, seed) -> dict | None:
    """A cached run of strategy ``name`` with ``fold`` held out: its result, cached predictions, expression X and
    embeddings E of every spot (rows in embedding order), coordinates, and the run's own split into fit (training
    minus validation), val and test (the held-out section) rows. None when not cached with embeddings."""
    import pandas as pd

    from mai_core.runs import RunDir
    from mai_core.runs.neighbours import spot_coordinates

    stem = work / "loso" / f"{name}_{fold}_s{seed}"
    if not (stem.with_suffix(".json").exists() and Path(f"{stem}.emb.npz").exists()):
        return None
    res = json.loads(stem.with_suffix(".json").read_text())
    emb, cached = np.load(f"{stem}.emb.npz"), np.load(f"{stem}.pred.npz")
    full = pd.read_csv(work / "her2st_all" / "train.csv", dtype={"ID": str, "path": str})
    full = full.set_index("ID").loc[[str(i) for i in emb["ids"]]].reset_index()
    genes = [str(g) for g in cached["genes"]]
    xy, sections = spot_coordinates(full)
    run = RunDir(res["run"])
    vp = run.read_val_predictions()
    val_ids = {str(i) for i in vp["ID"]}  # the run's own split
    return {"res": res, "cached": cached, "full": full, "genes": genes, "X": full[genes].to_numpy(np.float32),
            "E": emb["emb"].astype(np.float32), "xy": xy, "sections": sections, "run": run, "vp": vp,
            "test": np.flatnonzero(sections == fold),
            "val": np.array([i for i, k in enumerate(full["ID"]) if k in val_ids]),
            "fit": np.array([i for i in np.flatnonzero(sections != fold) if full["ID"].iat[i] not in val_ids])}


def fold_rows(work: Path, fold: str, seed: int) -> dict | None:
    from mai_core.models.ridge import fit_ridge, predict_ridge
    from mai_core.runs.neighbours import neighbour_matrix, smooth, smoothing_facts

    c = cached_fold(work, "default", fold, seed)
    if c is None:
        return None
    cached, full, X, E, xy, sections = c["cached"], c["full"], c["X"], c["E"], c["xy"], c["sections"]
    run, vp, test, val, fit = c["run"], c["vp"], c["test"], c["val"], c["fit"]
    nb = neighbour_matrix(xy, sections)
    has = np.asarray(nb.getnnz(axis=1) > 0)
    M = np.where(has[:, None], np.asarray(nb @ E), E)
    mu, sd = X[fit].mean(0), X[fit].std(0) + 1e-6
    Z = (X - mu) / sd
    top = cached["top50"]
    pos = {k: i for i, k in enumerate(full["ID"])}
    order = [pos[str(i)] for i in cached["ids"]]
    assert list(order) == list(test), "held-out order differs from the embedding order"
    y = X[test]
    out = {}
    plain = work / "loso" / f"plain_lr1e-3_{fold}_s{seed}.pred.npz"
    if plain.exists():
        out["plain fine-tune"] = score(y, np.load(plain)["pred"], top)
    out["default"] = score(y, cached["pred"], top)
    run_genes = run.read_genes()
    tr_rows = np.flatnonzero(sections != fold)
    val_idx = [list(tr_rows).index(pos[str(i)]) for i in vp["ID"]]
    facts = smoothing_facts({"smoothing": "auto"}, full.iloc[tr_rows], val_idx,
                            vp[[f"pred:{g}" for g in run_genes]].to_numpy(), vp[[f"true:{g}" for g in run_genes]].to_numpy())
    nb_test = neighbour_matrix(xy[test], sections[test])
    out["default+smooth"] = score(y, smooth(cached["pred"], nb_test, facts["weight"]), top)
    preds = {}
    for name, F in (("ridge(own)", E), ("ridge(own+nbr)", np.hstack([E, M]))):
        r = fit_ridge(F[fit], Z[fit], F[val], Z[val], pca=256)
        preds[name] = predict_ridge(r, F[test]) * sd + mu
        out[name] = score(y, preds[name], top)
    out["mean(default, ridge(own+nbr))"] = score(y, 0.5 * (cached["pred"] + preds["ridge(own+nbr)"]), top)
    # the rule train applies: the context head where it beats the fine-tuned head on the validation spots
    from mai_core.metrics import gene_pearson
    from mai_core.runs.contexthead import apply_context_head, fit_context_head

    head = fit_context_head(E, nb, Z, fit, val, mu, sd)
    ctx_val = gene_pearson(X[val], head["val_pred"])[0]
    vp_idx = [pos[str(i)] for i in vp["ID"]]
    run_val = gene_pearson(X[vp_idx], vp[[f"pred:{g}" for g in run_genes]].to_numpy())[0]
    ctx_test = apply_context_head((head["weight"], head["bias"]), E[test], neighbour_matrix(xy[test], sections[test]))
    out["context head (product)"] = score(y, ctx_test, top)
    out["_val"] = (run_val, ctx_val)
    out["train rule"] = out["context head (product)"] if ctx_val > run_val else out["default+smooth"]
    out["_weight"] = facts["weight"]
    return out


def context_prediction(work: Path, member: str, fold: str) -> tuple | None:
    """A cached run's held-out predictions through its context head as train fits it (``member``:
    STRATEGY_sSEED); returns (pred, truth, top-50 indices, held-out IDs) or None when not cached."""
    from mai_core.metrics import gene_pearson
    from mai_core.runs.contexthead import apply_context_head, fit_context_head
    from mai_core.runs.neighbours import neighbour_matrix

    name, _, seed = member.rpartition("_s")
    c = cached_fold(work, name, fold, seed)
    if c is None:
        return None
    X, E, xy, sections, full = c["X"], c["E"], c["xy"], c["sections"], c["full"]
    test, val, fit, vp = c["test"], c["val"], c["fit"], c["vp"]
    mu, sd = X[fit].mean(0), X[fit].std(0) + 1e-6
    head = fit_context_head(E, neighbour_matrix(xy, sections), (X - mu) / sd, fit, val, mu, sd)
    run_genes = c["run"].read_genes()
    pos = {k: i for i, k in enumerate(full["ID"])}
    own_val = gene_pearson(X[[pos[str(i)] for i in vp["ID"]]], vp[[f"pred:{g}" for g in run_genes]].to_numpy())[0]
    if gene_pearson(X[val], head["val_pred"])[0] <= own_val:
        print(f"  {member} {fold}: its context head loses to its fine-tuned head on validation; train would drop it")
    pred = apply_context_head((head["weight"], head["bias"]), E[test], neighbour_matrix(xy[test], sections[test]))
    return pred, X[test], c["cached"]["top50"], list(full["ID"].iloc[test])


def ensemble_rows(work: Path, folds, ensembles) -> dict:
    """{row name: {fold: (top-50, all)}} for every member and every ensemble (mean of the members' context-head
    predictions)."""
    members = sorted({m for e in ensembles for m in e.split("+")})
    got = {m: {f: context_prediction(work, m, f) for f in folds} for m in members}
    rows = {}
    for m in members:
        if all(got[m][f] is not None for f in folds):
            rows[f"{m} context head"] = {f: score(got[m][f][1], got[m][f][0], got[m][f][2]) for f in folds}
        else:
            print(f"{m}: not cached for every fold (bench/her2st_accuracy.py --folds ... --strategies ...)")
    for e in ensembles:
        parts = e.split("+")
        if not all(f"{m} context head" in rows for m in parts):
            continue
        rows[f"ensemble {e}"] = {}
        for f in folds:
            first = got[parts[0]][f]
            assert all(got[m][f][3] == first[3] for m in parts), "members predicted different spots"
            rows[f"ensemble {e}"][f] = score(first[1], np.mean([got[m][f][0] for m in parts], axis=0), first[2])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "workspace" / "bench_her2st"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", default="C2,C3,C4,C5")
    ap.add_argument("--ensembles", default="",
                    help="comma-separated ensembles of cached runs, members joined by +, e.g. default_s0+default_s1")
    ap.add_argument("--plain-seeds", default="0,1,2",
                    help="seeds of cached plain fine-tunes to average as a second reference (those cached for "
                         "every fold are used)")
    args = ap.parse_args()
    work = Path(args.work)
    results = {}
    for fold in args.folds.split(","):
        r = fold_rows(work, fold, args.seed)
        if r is None:
            print(f"{fold}: no cached default run with embeddings (run bench/her2st_accuracy.py --folds first)")
            continue
        results[fold] = r
        print(f"{fold}: smoothing weight {r['_weight']:.1f}; validation PCC head {r['_val'][0]:.4f} "
              f"context {r['_val'][1]:.4f}; " +
              "  ".join(f"{k} {v[0]:.4f}/{v[1]:.4f}" for k, v in r.items() if not k.startswith("_")), flush=True)
    if not results:
        return 0
    names = [k for k in next(iter(results.values())) if not k.startswith("_")]
    folds = list(results)
    if args.ensembles:
        for row, per_fold in ensemble_rows(work, folds, [e for e in args.ensembles.split(",") if e]).items():
            names.append(row)
            for f in folds:
                results[f][row] = per_fold[f]
    # the plain fine-tune of every seed cached for every fold, and their mean: the reference across seeds
    plain_seeds = [int(x) for x in args.plain_seeds.split(",") if x.strip()]
    seeds_here = []
    for ps in plain_seeds:
        row = {}
        for f in folds:
            cached = work / "loso" / f"plain_lr1e-3_{f}_s{ps}.pred.npz"
            ref = np.load(work / "loso" / f"default_{f}_s{args.seed}.pred.npz")
            if cached.exists():
                truth = context_prediction(work, f"default_s{args.seed}", f)
                row[f] = score(truth[1], np.load(cached)["pred"], ref["top50"])
        if len(row) == len(folds):
            seeds_here.append(ps)
            names.append(f"plain fine-tune seed {ps}")
            for f in folds:
                results[f][f"plain fine-tune seed {ps}"] = row[f]
    print("\nheld-out gene PCC, top-50 / all genes; gain of the mean top-50 over the plain fine-tune of the same "
          f"seed ({args.seed}), and over the mean of the plain fine-tunes of seeds {seeds_here}")
    print(f"{'':32s}" + "".join(f"{f:>18s}" for f in folds) + f"{'mean':>18s}   gain   gain vs seeds")
    base = [results[f]["plain fine-tune"][0] for f in folds] if all("plain fine-tune" in results[f] for f in folds) \
        else None
    over = (np.mean([[results[f][f"plain fine-tune seed {ps}"][0] for f in folds] for ps in seeds_here])
            if seeds_here else None)
    for n in names:
        if not all(n in results[f] for f in folds):
            continue
        t = [results[f][n][0] for f in folds]
        a = [results[f][n][1] for f in folds]
        gain = f"{(np.mean(t) / np.mean(base) - 1) * 100:+.1f} %" if base else ""
        gain_all = f"{(np.mean(t) / over - 1) * 100:+.1f} %" if over else ""
        print(f"{n:32s}" + "".join(f"{x:9.4f}/{z:.4f}  " for x, z in zip(t, a)) +
              f"{np.mean(t):9.4f}/{np.mean(a):.4f}   {gain:>7s}   {gain_all:>7s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
