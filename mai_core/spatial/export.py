"""``export``: a run's predictions on a patch dataset's split as AnnData.

``val``: the run's ``val_predictions.parquet`` (no model needed); ``test``: the run predicts the test split's
images. ``X`` = predicted, ``layers['measured']`` = the truth when known; ``obs`` carries the dataset's
metadata (section, px, py, array_x, array_y, label) by ID; when patches come from imported sections
their centres become ``obsm['spatial']`` with one ``uns['spatial']`` library per section (a thumbnail of the
section's image when it is still on disk) and ``obs['library_id']``, scanpy's convention for several
sections in one object.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem

SPLITS = ("val", "test")


def _dataset_path(cfg: dict, data) -> Path | None:
    p = data or cfg.get("data")
    return Path(p).expanduser() if p else None


def _meta_table(ds) -> pd.DataFrame:
    frames = [ds.train] + ([ds.test] if ds.test is not None else [])
    cols = ["ID"] + [c for c in ("section", "px", "py", "array_x", "array_y", "label") if any(c in f for f in frames)]
    parts = [f[[c for c in cols if c in f.columns]] for f in frames]
    return pd.concat(parts, ignore_index=True).drop_duplicates("ID").set_index("ID")


def export_split(run, split: str, out, data=None, device: str = "auto", progress: bool = True,
                 thumbnails: bool = True) -> dict:
    """Write the run's predictions on ``split`` (val | test) of its dataset as ``out`` (.h5ad)."""
    import anndata

    from mai_core.data.anndata_io import spatial_uns, write_h5ad
    from mai_core.data.dataset import load_dataset
    from mai_core.data.importer import read_manifest
    from mai_core.runs import RunDir, read_config
    from mai_core.runs.compare import load_val_predictions
    from mai_core.spatial.output import clean_uns, val_pcc
    from mai_core.spatial.resolution import run_facts

    if split not in SPLITS:
        raise MaiError("unknown split", [Problem("--split", f"'{split}'", f"choose one of {', '.join(SPLITS)}")])
    out = Path(out).expanduser()
    if out.suffix != ".h5ad":
        raise MaiError("output must be an .h5ad file", [Problem(str(out), "wrong extension", "pass --out NAME.h5ad")])
    rd = RunDir(run)
    cfg = read_config(rd)
    facts = run_facts(cfg, rd.path)
    if split == "val":
        vp = load_val_predictions(rd)
        ids, genes, pred, truth = vp.ids, vp.genes, vp.y_pred.astype(np.float32), vp.y_true.astype(np.float32)
    else:
        from mai_core.runs import labelled_split, load_predictor

        dpath = _dataset_path(cfg, data)
        if dpath is None:
            raise MaiError("--data is required", [Problem("--data", "the run does not record its dataset",
                                                          "pass the dataset folder")])
        p = load_predictor(rd.path, device=device)
        genes = p.genes
        try:
            ids, paths, X, dgenes, _ = labelled_split(dpath, "test")
            col = {g: j for j, g in enumerate(dgenes)}
            truth = np.full((len(ids), len(genes)), np.nan, np.float32)
            have = [j for j, g in enumerate(genes) if g in col]
            truth[:, have] = X[:, [col[genes[j]] for j in have]]
        except MaiError as exc:
            if "no test split" in exc.message:
                raise
            ds = load_dataset(dpath)
            ids, paths, truth = ds.test_ids, [ds.image_path(i, "test") for i in range(ds.n_test)], None
        pred = p.predict_paths(paths, progress=progress)
    dpath = _dataset_path(cfg, data)
    obs = pd.DataFrame(index=pd.Index([str(i) for i in ids], name=None))
    meta = None
    if dpath is not None and (dpath / "train.csv").is_file():
        ds = load_dataset(dpath, check_images=False)
        meta = _meta_table(ds).reindex(obs.index)
        for c in meta.columns:
            obs[c] = meta[c].to_numpy()
    adata = anndata.AnnData(X=pred, obs=obs, var=pd.DataFrame({"val_pcc": val_pcc(rd.path, genes)},
                                                              index=pd.Index(genes)))
    if truth is not None:
        adata.layers["measured"] = truth
    info = {"run": str(rd.path.resolve()), "split": split, "units": facts.units, "norm": facts.norm,
            "data": str(dpath) if dpath else None, "run_mpp": facts.mpp}
    libraries = []
    if meta is not None and {"px", "py", "section"} <= set(meta.columns) and meta[["px", "py"]].notna().all().all():
        adata.obsm["spatial"] = meta[["px", "py"]].to_numpy(np.float64)
        adata.obs["library_id"] = pd.Categorical(meta["section"].astype(str).to_numpy())
        manifest = read_manifest(dpath) or {"sections": {}}
        spatial = {}
        for sec in adata.obs["library_id"].cat.categories:
            src = manifest["sections"].get(sec, {})
            image = src.get("image")
            if thumbnails and image and Path(image).is_file():
                from mai_core.data.wsi import open_slide

                try:
                    with open_slide(image) as slide:
                        thumb, scale = slide.thumbnail(1200)
                except MaiError:
                    continue
                spot = 100.0 / src["mpp"] if src.get("platform") == "st" and src.get("mpp") else 224.0
                spatial[sec] = spatial_uns(thumb, scale, spot, {"source_image_path": image})
                libraries.append(sec)
        if spatial:
            adata.uns["spatial"] = spatial
    adata.uns["mai"] = clean_uns(info)
    write_h5ad(adata, out)
    return {"out": str(out.resolve()), "rows": adata.n_obs, "genes": adata.n_vars, "split": split,
            "measured": truth is not None, "spatial": "spatial" in adata.obsm, "libraries": libraries}
