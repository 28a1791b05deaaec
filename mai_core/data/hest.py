"""HEST-1k samples → :class:`~mai_core.data.sections.Section`.

A HEST-1k download holds, per sample ``ID``:

- ``st/ID.h5ad``: the counts and spot centres (``obsm['spatial']`` or ``pxl_col_in_fullres``/
  ``pxl_row_in_fullres``, full-resolution pixels), ``in_tissue``, ``array_col``/``array_row``;
- ``wsis/ID.tif``: the whole-slide image (pyramidal generic TIFF), read by regions;
- ``metadata/ID.json``: ``pixel_size_um_embedded`` / ``pixel_size_um_estimated`` (µm per pixel of the
  WSI), ``st_technology`` (Visium, Spatial Transcriptomics, Xenium, ...);
- ``patches/ID.h5``: patches cut by HEST around every spot (``img`` N×H×W×3, ``barcode``) at 0.5 µm per
  pixel, used only when the WSI is absent.

``path`` is the download's root folder (with ``sample``, or the only sample it holds), or ``st/ID.h5ad``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mai_core.data.anndata_io import read_h5ad, spots_of_anndata
from mai_core.data.sections import DEFAULT_MIN_MATCH, Section, build_section
from mai_core.data.slideimage import DEFAULT_MAX_PIXELS
from mai_core.data.visium import counts_from_anndata
from mai_core.data.wsi import open_slide, plausible_mpp
from mai_core.errors import MaiError, Problem

HEST_PATCH_MPP = 0.5  # HEST-1k cuts its patches at 0.5 µm per pixel
TECHNOLOGIES = {"visium": "visium", "spatial transcriptomics": "st", "st": "st"}


def hest_root(path) -> Path | None:
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".h5ad" and p.parent.name == "st":
        return p.parent.parent
    if p.is_dir() and (p / "st").is_dir() and any((p / "st").glob("*.h5ad")):
        return p
    return None


def hest_files(path, sample: str | None = None) -> dict:
    """Paths of one HEST sample: h5ad, wsi (or None), metadata (or None), patches (or None), id."""
    p = Path(path).expanduser()
    root = hest_root(p)
    if root is None:
        raise MaiError("not a HEST-1k sample", [Problem(str(p), "no st/<ID>.h5ad", "pass the HEST download folder "
                                                                                  "(with st/, wsis/, metadata/) or st/<ID>.h5ad")])
    if p.is_file():
        sample = p.stem
    if sample is None:
        ids = sorted(f.stem for f in (root / "st").glob("*.h5ad"))
        if len(ids) != 1:
            raise MaiError("which HEST sample?", [Problem(str(root / "st"), f"{len(ids)} samples: "
                                                          f"{', '.join(ids[:8])}", "pass --sample ID")])
        sample = ids[0]
    h5ad = root / "st" / f"{sample}.h5ad"
    if not h5ad.is_file():
        raise MaiError("HEST sample not found", [Problem(str(h5ad), "no such file", "check --sample")])

    def opt(*cands):
        return next((c for c in cands if c.is_file()), None)

    return {"id": sample, "h5ad": h5ad,
            "wsi": opt(*(root / "wsis" / f"{sample}{s}" for s in (".tif", ".tiff", ".btf", ".svs"))),
            "meta": opt(root / "metadata" / f"{sample}.json"),
            "patches": opt(root / "patches" / f"{sample}.h5")}


def _read_meta(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MaiError("HEST metadata is not valid JSON", [Problem(str(path), "unreadable", "download it again")]) from None
    return meta if isinstance(meta, dict) else {}


def _read_patches(path: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """(patches in ``ids`` order for the ids that have one, mask of those ids, patch mpp after resizing to 224)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            imgs = f["img"]
            codes = [b.decode() if isinstance(b, bytes) else str(b) for b in np.asarray(f["barcode"]).reshape(-1)]
            row = {c: i for i, c in enumerate(codes)}
            have = np.array([i in row for i in ids], dtype=bool)
            idx = [row[i] for i, h in zip(ids, have) if h]
            order = np.argsort(idx)
            data = imgs[np.asarray(idx)[order]] if idx else np.zeros((0, 224, 224, 3), np.uint8)
            data = data[np.argsort(order)]
    except (OSError, KeyError) as exc:
        raise MaiError("cannot read the HEST patches", [Problem(str(path), f"{type(exc).__name__}: {exc}",
                                                               "download the sample's patches/<ID>.h5 again")]) from None
    if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
        raise MaiError("HEST patches have an unexpected layout", [Problem(str(path), f"img {data.shape} {data.dtype}",
                                                                          "expected N×H×W×3 uint8")])
    return data, have, HEST_PATCH_MPP * data.shape[1] / 224


def stage_hest(path, section: str | None = None, sample: str | None = None, min_counts: float = 1,
               min_match: float = DEFAULT_MIN_MATCH, mpp: float | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Section:
    files = hest_files(path, sample)
    adata = read_h5ad(files["h5ad"])
    meta = _read_meta(files["meta"])
    keep, arr, xy, guess, notes = spots_of_anndata(adata, str(files["h5ad"]))
    tech = str(meta.get("st_technology", "")).strip().lower()
    platform = TECHNOLOGIES.get(tech, guess if not tech else None)
    counts = counts_from_anndata(adata, str(files["h5ad"]))
    ids = [str(s) for s in adata.obs_names]
    sel = np.flatnonzero(keep)
    ids_sel, xy_sel, arr_sel = [ids[i] for i in sel], xy[sel], None if arr is None else arr[sel]
    meta_mpp = plausible_mpp(meta.get("pixel_size_um_embedded")) or plausible_mpp(meta.get("pixel_size_um_estimated"))
    slide, patches, patches_mpp = None, None, None
    if files["wsi"] is not None:
        slide = open_slide(files["wsi"], max_pixels=max_pixels)
    elif files["patches"] is not None:
        patches, have, patches_mpp = _read_patches(files["patches"], ids_sel)
        if not have.all():
            notes.append(f"{int((~have).sum())} spot(s) without a HEST patch skipped")
        ids_sel, xy_sel = [i for i, h in zip(ids_sel, have) if h], xy_sel[have]
        arr_sel = None if arr_sel is None else arr_sel[have]
        notes.append(f"no WSI: using HEST's own patches ({patches_mpp:.3g} µm/px after resizing to 224 px)")
    else:
        raise MaiError("the HEST sample has no image", [Problem(
            str(files["h5ad"].parent.parent), f"neither wsis/{files['id']}.tif nor patches/{files['id']}.h5",
            "download the sample's WSI (or its patches)")])
    src = {"image": str(files["wsi"] or files["patches"]), "spots": str(files["h5ad"]), "counts": str(files["h5ad"]),
           "format": "hest", "hest_id": files["id"]}
    try:
        return build_section(section or files["id"], ids_sel, xy_sel, arr_sel, counts, slide, platform=platform,
                             sources=src, spots_where=str(files["h5ad"]), counts_where=str(files["h5ad"]),
                             min_counts=min_counts, min_match=min_match, mpp=mpp,
                             reader_mpp=(meta_mpp, "HEST metadata (pixel_size_um)"), patches=patches,
                             patches_mpp=patches_mpp, notes=notes, skipped={"not_selected": int((~keep).sum())})
    except MaiError:
        if slide is not None:
            slide.close()
        raise
