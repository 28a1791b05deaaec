"""The AnnData a slide prediction is written as.

- ``X``: predicted expression (float32, spots × genes) in the run's training units (``uns['mai']['units']``);
- ``obs``: ``spot`` (legacy ST ``<x>x<y>`` as in its counts, the Visium barcode, the CSV id, or the grid
  ``<col>x<row>``), ``px``/``py`` (full-resolution centre), ``in_tissue``, array coordinates when known,
  ``label`` when a pathologist's annotation is given;
- ``obsm['spatial']``: centres in full-resolution pixels; ``obsm['programmes']``: gene-programme scores;
- ``layers['measured']``: measured expression, normalised like the training data (NaN = not measured);
- ``var['val_pcc']``: each gene's validation Pearson r from the run (how far to trust its map);
- ``uns['spatial'][library]``: thumbnail (``images['hires']``) + scale factors, so ``scanpy.pl.spatial`` and
  ``squidpy.gr.spatial_neighbors`` work unchanged; ``uns['mai']``: how the prediction was made.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mai_core.data.anndata_io import spatial_uns


def clean_uns(value):
    """uns-safe copy: None dropped, tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean_uns(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [clean_uns(v) for v in value if v is not None]
    if isinstance(value, np.generic):
        return value.item()
    return value


def val_pcc(run_path, genes: list[str]) -> np.ndarray:
    """Validation Pearson r per gene from the run's val_predictions.parquet (NaN when unknown)."""
    from mai_core.errors import MaiError
    from mai_core.runs.compare import load_val_predictions, per_gene_pcc

    try:
        table = per_gene_pcc(load_val_predictions(run_path))
    except (MaiError, OSError, KeyError, ValueError):
        return np.full(len(genes), np.nan, dtype=np.float32)
    lookup = dict(zip(table["gene"], table["pcc"]))
    return np.array([lookup.get(g, np.nan) for g in genes], dtype=np.float32)


def build_anndata(pred, run_path, X, ids, centres, array_xy, thumb, scale, spot_px, library: str,
                  measured=None, labels=None, programmes=None, meta: dict | None = None):
    """AnnData for predictions ``X`` at ``centres`` (see the module docstring).

    ``measured`` and ``labels`` are ``(values, info)`` pairs (from :mod:`mai_core.spatial.annotate`),
    ``programmes`` a ``({name: genes}, source)`` pair; each is optional.
    """
    import anndata

    from mai_core.spatial.annotate import programme_scores

    genes = list(pred.genes)
    names = pd.Index([str(i) for i in ids])
    obs = pd.DataFrame({"spot": names.to_numpy(), "px": centres[:, 0].astype(np.int64),
                        "py": centres[:, 1].astype(np.int64), "in_tissue": np.ones(len(ids), dtype=np.int64)},
                       index=names)
    if array_xy is not None and np.isfinite(array_xy).all():
        obs["array_x"], obs["array_y"] = array_xy[:, 0], array_xy[:, 1]
    var = pd.DataFrame({"val_pcc": val_pcc(run_path, genes)}, index=pd.Index(genes))
    adata = anndata.AnnData(X=np.asarray(X, dtype=np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = centres.astype(np.float64)
    info = dict(meta or {})
    if measured is not None:
        adata.layers["measured"], info["measured"] = measured
    if labels is not None:
        adata.obs["label"] = pd.Categorical(labels[0])
        info["labels"] = labels[1]
    if programmes is not None:
        groups, source = programmes
        scores = programme_scores(X, genes, groups)
        scores.index = names
        adata.obsm["programmes"] = scores
        info["programmes"] = {"source": source, "method": "mean per-gene z-score over spots",
                              "names": list(scores.columns)}
    adata.uns["spatial"] = {library: spatial_uns(thumb, scale, spot_px, {"source_image_path": info.get("image", "")})}
    adata.uns["mai"] = clean_uns(info)
    return adata
