"""``write_gradcam``: the whole ``python -m mai_core gradcam`` command (maps, overlays, index.csv).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from mai_core.errors import MaiError, Problem
from mai_core.explain.analysis import _unknown, select_genes
from mai_core.explain.engine import CamExplainer
from mai_core.explain.methods import check_method
from mai_core.explain.render import _cmap, overlay, save_png


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"


def resolve_ids(ds, ids: Sequence[str], split: str | None) -> list[tuple[str, str]]:
    """(id, split) pairs; ``split=None`` looks in train then test. MaiError with close IDs otherwise."""
    if split not in (None, "train", "test"):
        raise MaiError(f"unknown split {split!r}", [Problem("--split", f"{split!r}", "use train or test")])
    pools = {"train": set(ds.ids), "test": set(ds.test_ids)}
    out, problems = [], []
    for i in ids:
        found = None
        for s in ([split] if split else ["train", "test"]):
            if i in pools[s]:
                found = s
                break
        if found is None:
            space = list(pools[split]) if split else list(pools["train"] | pools["test"])
            problems.append(_unknown(i, space, "image ID", f"the {split or 'train/test'} split of {ds.root}"))
        else:
            out.append((i, found))
    if problems:
        raise MaiError(f"{len(problems)} image ID(s) not found", problems)
    if not out:
        raise MaiError("no image IDs given", hint="pass --ids ID1,ID2")
    return out


def write_gradcam(run, data, ids: Sequence[str], genes: Sequence[str] | None = None, prefix: str | None = None,
                  method: str = "gradcam", layer: str | None = None, split: str | None = None, out=None,
                  alpha: float = 0.5, cmap: str = "jet", device="auto", disk_cache=None,
                  progress: bool = False, force: bool = False) -> pd.DataFrame:
    """Overlay PNGs, raw maps (.npy) and ``index.csv`` for (ids × genes) into ``out`` (atomically).

    Returns the index: id, split, gene, method, layer, predicted, true, png, npy (paths relative to out).
    """
    import pandas as pd

    from mai_core.data.dataset import load_dataset
    from mai_core.io import atomic_dir, write_csv
    from mai_core.runs import RunDir

    check_method(method)
    _cmap(cmap)
    if not 0.0 <= float(alpha) <= 1.0:
        raise MaiError(f"--alpha must be between 0 and 1, got {alpha}")
    rd = RunDir(run)
    if not rd.path.is_dir():
        from mai_core.workspace import runs_dir

        named = runs_dir() / str(run)
        if named.is_dir():
            rd = RunDir(named)
        else:
            raise MaiError(f"run {run!r} not found", [Problem("--run", f"{run} is not a folder",
                                                                 "pass a run directory or a run name under workspace/runs")])
    if out is None:
        raise MaiError("no output folder", hint="pass --out DIR")
    run_genes = rd.read_genes()
    ds = load_dataset(data)
    problems: list[Problem] = []
    chosen, pairs = [], []
    try:
        chosen = select_genes(run_genes, genes=genes, prefix=prefix)
    except MaiError as exc:
        problems += exc.problems or [Problem("genes", exc.message, exc.hint)]
    try:
        pairs = resolve_ids(ds, ids, split)
    except MaiError as exc:
        problems += exc.problems or [Problem("--ids", exc.message, exc.hint)]
    if problems:
        raise MaiError(f"{len(problems)} unknown gene(s)/image ID(s)", problems)
    explainer = CamExplainer.from_run(rd, layer=layer, device=device, disk_cache=disk_cache)
    images = np.stack([ds.image(i, s) for i, s in pairs])
    result = explainer.explain(images, chosen, method=method, progress=progress)
    true_lookup: dict[tuple[str, str], float] = {}
    for i, s in pairs:
        frame = ds.train if s == "train" else ds.test
        if frame is None:
            continue
        row = frame.index[frame["ID"] == i]
        for g in chosen:
            if g in frame.columns and len(row):
                true_lookup[(i, g)] = float(frame.at[row[0], g])
    rows = []
    with atomic_dir(out, lambda p: (p / "index.csv").is_file(), "Grad-CAM output", force=force) as tmp:
        (tmp / "overlays").mkdir()
        (tmp / "maps").mkdir()
        for n, (i, s) in enumerate(pairs):
            for k, g in enumerate(chosen):
                stem = f"{_safe(i)}__{_safe(g)}__{_safe(method)}"
                png, npy = f"overlays/{stem}.png", f"maps/{stem}.npy"
                save_png(tmp / png, overlay(images[n], result.cams[n, k], alpha, cmap))
                np.save(tmp / npy, result.cams[n, k].astype(np.float32))
                rows.append({"id": i, "split": s, "gene": g, "method": method, "layer": result.layer,
                             "predicted": float(result.predicted[n, k]),
                             "true": true_lookup.get((i, g), float("nan")), "png": png, "npy": npy})
        index = pd.DataFrame(rows)
        write_csv(tmp / "index.csv", index)
    return index
