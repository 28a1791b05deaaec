"""10x Visium: a Space Ranger ``outs/`` folder → a :class:`~mai_core.data.sections.Section`.

Read from ``outs/``:

- ``filtered_feature_bc_matrix.h5`` (or ``raw_feature_bc_matrix.h5``): the counts, through
  ``scanpy.read_10x_h5`` (gene symbols as names, duplicates summed);
- ``spatial/tissue_positions.csv`` (Space Ranger ≥ 2.0, with header) or ``tissue_positions_list.csv``: the
  spots under tissue and their full-resolution pixel centres;
- ``spatial/scalefactors_json.json``: ``spot_diameter_fullres`` (a second source of the resolution);
- the full-resolution H&E image given to Space Ranger (``--image``); without it, the one image in
  ``outs/`` or its parent folder that is not under ``spatial/`` (the low/high-res PNGs there are too
  coarse to cut 224 px patches from).

Resolution: the slide's metadata, else the spot grid (100 µm pitch, array fit), else the scale factors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mai_core.data.mpp import mpp_from_array, mpp_from_scalefactors
from mai_core.data.positions import read_visium_positions
from mai_core.data.sections import DEFAULT_MIN_MATCH, Section, build_section
from mai_core.data.slideimage import DEFAULT_MAX_PIXELS
from mai_core.data.stfiles import Counts
from mai_core.data.wsi import SLIDE_SUFFIXES, open_slide
from mai_core.errors import MaiError, Problem

MATRIX_FILES = ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5")
POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv")


def visium_outs(path) -> Path | None:
    """The ``outs/`` folder at or under ``path`` (None when it is not a Space Ranger output)."""
    p = Path(path).expanduser()
    for cand in (p, p / "outs"):
        if cand.is_dir() and any((cand / m).is_file() for m in MATRIX_FILES) and (cand / "spatial").is_dir():
            return cand
    return None


def counts_from_anndata(adata, where: str) -> Counts:
    """Raw counts (spots × genes) of an AnnData: ``layers['counts']``, else ``raw.X``, else ``X``."""
    import scipy.sparse as sp

    if "counts" in adata.layers:
        X, genes = adata.layers["counts"], list(adata.var_names)
    elif adata.raw is not None:
        X, genes = adata.raw.X, list(adata.raw.var_names)
    else:
        X, genes = adata.X, list(adata.var_names)
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = np.asarray(X, dtype=np.float64)
    problems = []
    if not np.isfinite(X).all():
        problems.append(Problem(where, "counts contain NaN or infinite values", "store raw counts"))
    elif (X < 0).any():
        problems.append(Problem(where, "counts contain negative values (already normalised or scaled?)",
                                "store raw counts in X, layers['counts'] or raw"))
    if problems:
        raise MaiError("the AnnData does not hold raw counts", problems)
    notes = []
    if X.size and not np.all(X == np.round(X)):
        notes.append("counts are not whole numbers (normalised data?); imported as they are")
    if len(set(genes)) != len(genes):
        uniq, inverse = np.unique(np.asarray(genes, dtype=object), return_inverse=True)
        merged = np.zeros((X.shape[0], len(uniq)))
        np.add.at(merged.T, inverse, X.T)
        order = {g: i for i, g in enumerate(dict.fromkeys(genes))}
        perm = sorted(range(len(uniq)), key=lambda j: order[uniq[j]])
        notes.append(f"{len(genes) - len(uniq)} duplicate gene name(s) summed")
        X, genes = merged[:, perm], [str(uniq[j]) for j in perm]
    if X.size and np.all(X == np.round(X)) and X.max() < 2**31:
        X = X.astype(np.int32)
    return Counts(spots=[str(s) for s in adata.obs_names], genes=[str(g) for g in genes], values=X, notes=notes)


def read_10x_counts(path: Path) -> Counts:
    """Counts of a 10x HDF5 feature-barcode matrix (via scanpy)."""
    import scanpy as sc

    try:
        adata = sc.read_10x_h5(str(path))
    except Exception as exc:  # h5py/scanpy raise many types for a damaged or foreign file
        raise MaiError("cannot read the 10x feature-barcode matrix", [Problem(
            str(path), f"{type(exc).__name__}: {exc}", "pass Space Ranger's filtered_feature_bc_matrix.h5")]) from None
    return counts_from_anndata(adata, str(path))


def _find_image(outs: Path) -> Path:
    found = []
    for folder in (outs, outs.parent):
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith("."):
                found.append(p)
    if len(found) == 1:
        return found[0]
    raise MaiError("which full-resolution image belongs to this Visium section?", [Problem(
        str(outs), "no image found next to outs/" if not found else f"{len(found)} candidates: "
        f"{', '.join(p.name for p in found[:5])}",
        "pass --image, the full-resolution H&E given to Space Ranger (spatial/ only holds downscaled copies)")])


def stage_visium(path, section: str, image=None, min_counts: float = 1, min_match: float = DEFAULT_MIN_MATCH,
                 mpp: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Section:
    outs = visium_outs(path)
    if outs is None:
        raise MaiError("not a Space Ranger output folder", [Problem(
            str(path), f"needs {MATRIX_FILES[0]} and spatial/", "pass the outs/ folder of `spaceranger count`")])
    matrix = next(outs / m for m in MATRIX_FILES if (outs / m).is_file())
    pos_file = next((outs / "spatial" / f for f in POSITION_FILES if (outs / "spatial" / f).is_file()), None)
    if pos_file is None:
        raise MaiError("Visium tissue positions are missing", [Problem(
            str(outs / "spatial"), f"neither {' nor '.join(POSITION_FILES)}", "copy the complete spatial/ folder")])
    pos = read_visium_positions(pos_file)
    counts = read_10x_counts(matrix)
    sf_path = outs / "spatial" / "scalefactors_json.json"
    scalefactors = {}
    if sf_path.is_file():
        try:
            scalefactors = json.loads(sf_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MaiError("scale factors are not valid JSON", [Problem(str(sf_path), "unreadable",
                                                                       "copy Space Ranger's file again")]) from None
    image_path = Path(image).expanduser() if image else _find_image(outs)
    slide = open_slide(image_path, max_pixels=max_pixels)
    grid = mpp_from_array(pos.xy, pos.array_xy, "visium")
    reader = (grid, "spot grid (10x Visium, 100 µm pitch, array fit)") if grid else \
        (mpp_from_scalefactors(scalefactors), "Space Ranger spot_diameter_fullres (65 µm)")
    try:
        return build_section(section, pos.ids, pos.xy, pos.array_xy, counts, slide, platform="visium",
                             sources={"image": str(image_path.resolve()), "spots": str(pos_file.resolve()),
                                      "counts": str(matrix.resolve()), "format": "visium"},
                             spots_where=str(pos_file), counts_where=str(matrix), min_counts=min_counts,
                             min_match=min_match, mpp=mpp, reader_mpp=reader, notes=pos.notes)
    except MaiError:
        slide.close()
        raise
