"""AnnData in and out: spatial sections stored as ``.h5ad``, and the files predictions are written to.

Reading (:func:`stage_h5ad`): any AnnData with spot centres in ``obsm['spatial']`` (full-resolution pixels,
scanpy's convention) plus the H&E image they refer to. Counts come from ``layers['counts']``, else
``raw``, else ``X``; spots with ``obs['in_tissue'] == 0`` are left out; Visium array coordinates
(``array_col``/``array_row``) give the resolution when the image has none.

Writing (:func:`write_h5ad`, :func:`spatial_uns`): an AnnData written atomically, and the
``uns['spatial'][library]`` block (a thumbnail as ``images['hires']`` and its scale factor) that makes
``scanpy.pl.spatial`` and ``squidpy`` draw spots over the tissue without further arguments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mai_core.data.mpp import mpp_from_scalefactors
from mai_core.data.sections import DEFAULT_MIN_MATCH, Section, build_section
from mai_core.data.slideimage import DEFAULT_MAX_PIXELS
from mai_core.data.stfiles import need_file
from mai_core.data.visium import counts_from_anndata
from mai_core.data.wsi import open_slide
from mai_core.errors import MaiError, Problem
from mai_core.io import atomic_path


def read_h5ad(path, backed: bool = False):
    """``anndata.read_h5ad`` with a readable error for files that are not AnnData."""
    import anndata

    path = need_file(path, "AnnData file", "pass an .h5ad file")
    try:
        return anndata.read_h5ad(str(path), backed="r" if backed else None)
    except Exception as exc:  # h5py / anndata raise many types for a foreign or damaged file
        raise MaiError("cannot read the AnnData file", [Problem(str(path), f"{type(exc).__name__}: {exc}",
                                                               "pass an .h5ad written by anndata/scanpy")]) from None


def write_h5ad(adata, path) -> Path:
    """Write ``adata`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path).expanduser()
    if path.suffix != ".h5ad":
        raise MaiError("AnnData output must end in .h5ad", [Problem(str(path), "wrong extension", "name it X.h5ad")])
    if path.is_dir():
        raise MaiError("output is a folder", [Problem(str(path), "a folder exists there", "pass a file name")])
    with atomic_path(path, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    return path


def spatial_uns(thumbnail: np.ndarray, scale: float, spot_diameter_px: float, metadata: dict | None = None) -> dict:
    """The ``uns['spatial'][library]`` block: ``images['hires']`` = thumbnail, its scale factor, spot size."""
    return {"images": {"hires": np.ascontiguousarray(thumbnail, dtype=np.uint8)},
            "scalefactors": {"tissue_hires_scalef": float(scale), "spot_diameter_fullres": float(spot_diameter_px)},
            "metadata": dict(metadata or {})}


def spatial_library(adata) -> str | None:
    sp = adata.uns.get("spatial") if hasattr(adata, "uns") else None
    if isinstance(sp, dict) and sp:
        return next(iter(sp))
    return None


def _coords(adata, where: str) -> np.ndarray:
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs.columns):
        xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    else:
        raise MaiError("the AnnData has no spot coordinates", [Problem(
            where, "no obsm['spatial'] (and no pxl_col_in_fullres/pxl_row_in_fullres in obs)",
            "store the spot centres in full-resolution pixels as obsm['spatial'] (x = column, y = row)")])
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise MaiError("obsm['spatial'] must be n×2", [Problem(where, f"shape {xy.shape}", "store (x, y) per spot")])
    return xy[:, :2]


def spots_of_anndata(adata, where: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, str | None, list[str]]:
    """(keep mask, array coordinates or None, pixel centres, platform guess, notes) of an AnnData's spots."""
    xy = _coords(adata, where)
    obs = adata.obs
    keep = np.ones(adata.n_obs, dtype=bool)
    notes = []
    if "in_tissue" in obs.columns:
        keep = obs["in_tissue"].to_numpy() == 1
        if (~keep).any():
            notes.append(f"{int((~keep).sum())} spot(s) outside tissue (in_tissue = 0) ignored")
    arr, platform = None, None
    if {"array_col", "array_row"} <= set(obs.columns):
        arr, platform = obs[["array_col", "array_row"]].to_numpy(np.float64), "visium"
    elif {"array_x", "array_y"} <= set(obs.columns):
        arr = obs[["array_x", "array_y"]].to_numpy(np.float64)
    return keep, arr, xy, platform, notes


def stage_h5ad(path, section: str, image=None, platform: str | None = None, min_counts: float = 1,
               min_match: float = DEFAULT_MIN_MATCH, mpp: float | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Section:
    """A section from an AnnData with ``obsm['spatial']`` and the full-resolution image (``image``)."""
    path = need_file(path, "AnnData file", "pass an .h5ad file")
    adata = read_h5ad(path)
    keep, arr, xy, guess, notes = spots_of_anndata(adata, str(path))
    platform = platform or guess
    counts = counts_from_anndata(adata, str(path))
    ids = [str(s) for s in adata.obs_names]
    if image is None:
        raise MaiError("the full-resolution image is needed", [Problem(
            "--image", "not given", "pass the H&E image obsm['spatial'] refers to (uns['spatial'] holds only "
            "downscaled copies)")])
    slide = open_slide(image, max_pixels=max_pixels)
    lib = spatial_library(adata)
    reader = (None, "")
    if lib and platform == "visium":
        sf = adata.uns["spatial"][lib].get("scalefactors", {})
        reader = (mpp_from_scalefactors(sf), "uns['spatial'] spot_diameter_fullres (65 µm)")
    sel = np.flatnonzero(keep)
    try:
        return build_section(section, [ids[i] for i in sel], xy[sel], None if arr is None else arr[sel], counts, slide,
                             platform=platform, sources={"image": str(Path(image).expanduser().resolve()),
                                                         "spots": str(path.resolve()), "counts": str(path.resolve()),
                                                         "format": "h5ad"},
                             spots_where=str(path), counts_where=str(path), min_counts=min_counts,
                             min_match=min_match, mpp=mpp, reader_mpp=reader, notes=notes,
                             skipped={"not_selected": int((~keep).sum())})
    except MaiError:
        slide.close()
        raise
