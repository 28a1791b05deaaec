"""Ensembles of trained runs: a directory that predict/evaluate/load_predictor accept like a run.

``build_ensemble(runs, out, weights="mean"|"val")`` checks the members share genes, weights them
equally or by validation gene-wise PCC, and writes ``config.yaml`` (kind: ensemble, members with their
weights), ``genes.txt``, ``status.json`` and ``val_predictions.parquet`` (on the members' common
validation IDs, when they share a split). Member checkpoints are referenced, not copied.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from mai_core.errors import MaiError, Problem
from mai_core.runs.rundir import RunDir, read_config

WEIGHTINGS = ("mean", "val")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")  # the same rule as run names


def ensemble_path(name: str, root=None) -> Path:
    """Where an ensemble named ``name`` (typed in the app) goes: a plain name under the workspace runs/."""
    from mai_core.workspace import runs_dir

    name = str(name or "").strip()
    if not NAME_RE.match(name) or set(name) <= {"."}:
        raise MaiError(f"invalid ensemble name {name[:80]!r}",
                       [Problem("ensemble name", "use letters, digits, '.', '_' or '-' (starting with a letter or "
                                "digit, at most 80 characters, no folders)", "e.g. ensemble-3runs")])
    return Path(root if root is not None else runs_dir()) / name


def _val_frame(run: RunDir, genes: list[str]):
    vp = run.read_val_predictions()
    if vp is None or "ID" not in vp.columns:
        return None
    cols = [f"pred:{g}" for g in genes] + [f"true:{g}" for g in genes]
    if any(c not in vp.columns for c in cols):
        return None
    return vp.set_index(vp["ID"].astype(str))


def member_val_pcc(run: RunDir, genes: list[str]) -> float | None:
    from mai_core.metrics import gene_pearson

    vf = _val_frame(run, genes)
    if vf is not None and len(vf) >= 2:
        return float(gene_pearson(vf[[f"true:{g}" for g in genes]].to_numpy(),
                                  vf[[f"pred:{g}" for g in genes]].to_numpy())[0])
    best = run.read_status().get("best_val_gene_pcc")
    return None if best is None else float(best)


def build_ensemble(runs, out, weights: str = "mean", overwrite: bool = True, force: bool = False) -> RunDir:
    """Combine finished runs into an ensemble directory (mean or validation-PCC weights).

    ``overwrite=False`` refuses an ``out`` that exists already (what the app asks for). An existing ``out``
    that is not an ensemble is refused unless ``force`` (``mai_core.io.check_replaceable``).
    """
    import pandas as pd

    from mai_core.io import atomic_dir, write_json, write_parquet, write_text
    from mai_core.metrics import gene_pearson
    from mai_core.runs.contexthead import without_context_head
    from mai_core.runs.rundir import write_config

    if weights not in WEIGHTINGS:
        raise MaiError(f"unknown weighting {weights!r}", hint=f"use one of {', '.join(WEIGHTINGS)}")
    members = [RunDir(r) for r in runs]
    if len(members) < 2:
        raise MaiError("an ensemble needs at least two runs", hint="pass several run directories to --runs")
    problems = []
    for m in members:
        if not m.config_path.is_file():
            problems.append(Problem(str(m.path), "not a run directory (no config.yaml)", "pass folders written by train"))
        elif m.model_checkpoint() is None and read_config(m).get("kind") != "ensemble":
            problems.append(Problem(str(m.path), "has no checkpoint yet", "wait until it has trained an epoch"))
        elif read_config(m).get("kind") == "ensemble":
            problems.append(Problem(str(m.path), "is itself an ensemble", "list its member runs instead"))
    if problems:
        raise MaiError("cannot build the ensemble", problems)
    genes = members[0].read_genes()
    for m in members[1:]:
        g = m.read_genes()
        if g != genes:
            only_a = [x for x in genes if x not in set(g)][:5]
            only_b = [x for x in g if x not in set(genes)][:5]
            what = (f"{len(g)} genes vs {len(genes)}; only in {members[0].name}: {only_a}, only here: {only_b}"
                    if set(g) != set(genes) else "same genes in a different order")
            problems.append(Problem(str(m.path), f"predicts different genes than {members[0].path} ({what})",
                                    "ensemble only runs trained on the same dataset genes"))
    if problems:
        raise MaiError("ensemble members must share their genes", problems)

    pccs = [member_val_pcc(m, genes) for m in members]
    if weights == "val":
        if any(p is None for p in pccs):
            missing = [str(m.path) for m, p in zip(members, pccs) if p is None]
            raise MaiError("validation weighting needs every member's validation PCC",
                           [Problem(x, "no validation predictions or best_val_gene_pcc", "use --weights mean") for x in missing])
        w = np.clip(np.asarray(pccs, dtype=np.float64), 0.0, None)
        if w.sum() <= 0:
            raise MaiError("no member has a positive validation gene PCC", hint="use --weights mean")
    else:
        w = np.ones(len(members))
    w = w / w.sum()

    # validation predictions on the common validation IDs
    frames = [_val_frame(m, genes) for m in members]
    val_pcc, n_common = None, 0
    common = None
    if all(f is not None for f in frames):
        ids = set(frames[0].index)
        for f in frames[1:]:
            ids &= set(f.index)
        common = [i for i in frames[0].index if i in ids]
        n_common = len(common)
    cfgs = [read_config(m) for m in members]
    from mai_core.models.tta import tta_views

    tta = max(tta_views(c) for c in cfgs)  # the most views any member was validated with
    config = {
        "kind": "ensemble",
        "weighting": weights,
        "members": [{"path": str(m.path.resolve()), "weight": float(wi), "val_gene_pcc": p,
                     "model": (c.get("model") or {}).get("kind"), "backbone": (c.get("model") or {}).get("backbone")}
                    for m, wi, p, c in zip(members, w, pccs, cfgs)],
        "predict": {"tta": int(tta) if tta > 1 else False, "batch_size": int(min((c.get("predict") or {}).get("batch_size", 64) for c in cfgs))},
        "n_genes": len(genes),
        "val_common_ids": n_common,
        # spots with coordinates are predicted through every member's context head when all have one
        "spatial": {"context_head": not without_context_head(m.path for m in members)},
        "data": cfgs[0].get("data"),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(out)
    if not overwrite and out.exists():
        raise MaiError(f"{out} already exists", hint="choose another ensemble name")
    if any(m.path.resolve() == out.resolve() for m in members):
        raise MaiError(f"--out {out} is one of the ensemble's members", hint="choose another --out folder")

    def is_ensemble(p: Path) -> bool:
        try:
            return (p / "config.yaml").is_file() and read_config(p).get("kind") == "ensemble"
        except MaiError:
            return False

    with atomic_dir(out, is_ensemble, "ensemble directory", force=force) as tmp:
        write_config(tmp, config)
        write_text(tmp / "genes.txt", "".join(g + "\n" for g in genes))
        if members[0].grouping_path.is_file():
            write_text(tmp / "grouping.csv", members[0].grouping_path.read_text())
        if common and len(common) >= 2:
            pred = sum(wi * f.loc[common, [f"pred:{g}" for g in genes]].to_numpy(np.float64)
                       for wi, f in zip(w, frames))
            true = frames[0].loc[common, [f"true:{g}" for g in genes]].to_numpy(np.float64)
            val_pcc = float(gene_pearson(true, pred)[0])
            frame = pd.concat([pd.DataFrame({"ID": common}),
                               pd.DataFrame(pred.astype(np.float32), columns=[f"pred:{g}" for g in genes]),
                               pd.DataFrame(true.astype(np.float32), columns=[f"true:{g}" for g in genes])], axis=1)
            write_parquet(tmp / "val_predictions.parquet", frame)
        write_json(tmp / "status.json", {"state": "finished", "epoch": None, "epochs": None, "progress": 1.0,
                                         "pid": os.getpid(), "error": None, "started": time.time(),
                                         "updated": time.time(), "eta_s": 0, "best_val_gene_pcc": val_pcc})
        (tmp / "log.txt").write_text(
            f"[{config['created']}] ensemble of {len(members)} runs ({weights} weights): "
            + ", ".join(f"{m.name}={wi:.3f}" for m, wi in zip(members, w))
            + (f"; validation gene PCC on {n_common} common IDs: {val_pcc:.4f}\n" if val_pcc is not None
               else "; members share no validation IDs, no validation metrics\n"))
    return RunDir(out)
