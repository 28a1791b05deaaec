"""Synthetic spatial data written by the slide tests themselves: a pyramidal TIFF with known resolution and
demo tiles inside, a Space Ranger ``outs/`` folder, and a HEST-1k sample (all real formats, written with
tifffile, h5py and anndata)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

BACKGROUND = 242


def write_pyramid(path: Path, image: np.ndarray, mpp: float | None, levels: int = 3, compression: str = "zlib",
                  tile: int = 256) -> Path:
    """A tiled pyramidal TIFF (level k = 2^k downsampled), resolution tags in pixels per centimetre."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        lvl = image
        for i in range(levels):
            kw = {}
            if mpp:
                kw = dict(resolution=(1e4 / (mpp * 2 ** i), 1e4 / (mpp * 2 ** i)), resolutionunit="CENTIMETER")
            tw.write(lvl, tile=(tile, tile), photometric="rgb", compression=compression,
                     subfiletype=0 if i == 0 else 1, metadata=None, **kw)
            lvl = lvl[::2, ::2]
    return path


def tile_slide(tiles: np.ndarray, cols: int, margin: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(slide image with the tiles on a grid inside a pale margin, tile centres n×2 (x, y))."""
    n, s = len(tiles), tiles.shape[1]
    rows = math.ceil(n / cols)
    img = np.full((rows * s + 2 * margin, cols * s + 2 * margin, 3), BACKGROUND, np.uint8)
    centres = []
    for k in range(n):
        r, c = divmod(k, cols)
        y0, x0 = margin + r * s, margin + c * s
        img[y0:y0 + s, x0:x0 + s] = tiles[k]
        centres.append((x0 + s // 2, y0 + s // 2))
    return img, np.array(centres)


def hex_spots(n_rows: int, n_cols: int, mpp: float, origin=(150.0, 150.0)):
    """Visium-like hexagonal spot grid: (barcodes, array_row, array_col, pixel x, pixel y)."""
    codes, rows, cols, xs, ys = [], [], [], [], []
    rng = np.random.default_rng(0)
    for r in range(n_rows):
        for k in range(n_cols):
            c = 2 * k + (r % 2)
            codes.append("".join(rng.choice(list("ACGT"), 16)) + "-1")
            rows.append(r)
            cols.append(c)
            xs.append(origin[0] + c * 50.0 / mpp)
            ys.append(origin[1] + r * 100.0 * math.sqrt(3) / 2 / mpp)
    return codes, np.array(rows), np.array(cols), np.array(xs), np.array(ys)


def write_10x_h5(path: Path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
    """A Cell Ranger / Space Ranger v3 feature-barcode matrix (genes × barcodes, CSC)."""
    import h5py
    import scipy.sparse as sp

    m = sp.csc_matrix(np.asarray(counts).T)  # genes × barcodes
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        feat = g.create_group("features")
        feat.create_dataset("id", data=np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S"))
        feat.create_dataset("name", data=np.array(genes, dtype="S"))
        feat.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(genes), dtype="S"))
        feat.create_dataset("genome", data=np.array(["GRCh38"] * len(genes), dtype="S"))
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def write_visium(root: Path, mpp: float = 1.0, n_rows: int = 8, n_cols: int = 10, n_genes: int = 12,
                 seed: int = 0) -> dict:
    """A Space Ranger outs/ folder + full-resolution JPEG next to it; returns what was written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    codes, ar, ac, xs, ys = hex_spots(n_rows, n_cols, mpp)
    w, h = int(xs.max() + 300), int(ys.max() + 300)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    image[:, :, 0] = np.maximum(image[:, :, 0], 120)  # pinkish noise: tissue everywhere
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True)
    genes = [f"GENE{i}" for i in range(n_genes)]
    in_tissue = np.ones(len(codes), dtype=int)
    in_tissue[:3] = 0
    counts = rng.poisson(5, (len(codes), n_genes))
    keep = in_tissue == 1
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", counts[keep], [c for c, k in zip(codes, keep) if k], genes)
    pd.DataFrame({"barcode": codes, "in_tissue": in_tissue, "array_row": ar, "array_col": ac,
                  "pxl_row_in_fullres": np.round(ys).astype(int), "pxl_col_in_fullres": np.round(xs).astype(int)}
                 ).to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps({
        "spot_diameter_fullres": 65.0 / mpp, "tissue_hires_scalef": 0.1, "fiducial_diameter_fullres": 100.0,
        "tissue_lowres_scalef": 0.03}))
    Image.fromarray(image).save(root / "fullres.jpg", quality=95)
    Image.fromarray(image[::10, ::10]).save(outs / "spatial" / "tissue_hires_image.png")
    return {"outs": outs, "image": root / "fullres.jpg", "array": image, "codes": codes, "genes": genes,
            "counts": counts, "in_tissue": in_tissue, "x": np.round(xs).astype(int), "y": np.round(ys).astype(int)}


def write_hest(root: Path, sample: str = "TENX00", mpp: float = 0.5, with_wsi: bool = True, seed: int = 1) -> dict:
    """A HEST-1k sample: st/<id>.h5ad, wsis/<id>.tif, metadata/<id>.json, patches/<id>.h5."""
    import anndata
    import h5py
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    codes, ar, ac, xs, ys = hex_spots(6, 7, mpp, origin=(300.0, 300.0))
    xs, ys = np.round(xs).astype(int), np.round(ys).astype(int)
    w, h = int(xs.max() + 400), int(ys.max() + 400)
    image = rng.integers(30, 230, (h, w, 3), dtype=np.uint8)
    genes = [f"G{i}" for i in range(9)]
    counts = rng.poisson(4, (len(codes), len(genes))).astype(np.float32)
    obs = pd.DataFrame({"in_tissue": np.ones(len(codes), int), "array_row": ar, "array_col": ac,
                        "pxl_col_in_fullres": xs, "pxl_row_in_fullres": ys}, index=pd.Index(codes))
    ad = anndata.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    ad.obsm["spatial"] = np.c_[xs, ys].astype(np.float64)
    for sub in ("st", "wsis", "metadata", "patches"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ad.write_h5ad(root / "st" / f"{sample}.h5ad")
    if with_wsi:
        write_pyramid(root / "wsis" / f"{sample}.tif", image, mpp=None, levels=2)  # no tags: metadata JSON tells
    (root / "metadata" / f"{sample}.json").write_text(json.dumps({
        "pixel_size_um_estimated": mpp, "pixel_size_um_embedded": None, "st_technology": "Visium",
        "fullres_width": w, "fullres_height": h, "spots_under_tissue": len(codes)}))
    size = int(round(224 * 0.5 / mpp))  # HEST patches: 224 px at 0.5 µm/px
    patches = np.stack([image[y - size // 2:y - size // 2 + size, x - size // 2:x - size // 2 + size]
                        for x, y in zip(xs, ys)])
    with h5py.File(root / "patches" / f"{sample}.h5", "w") as f:
        f.create_dataset("img", data=patches)
        f.create_dataset("barcode", data=np.array(codes, dtype="S")[:, None])
        f.create_dataset("coords", data=np.c_[xs - size // 2, ys - size // 2])
    return {"root": root, "id": sample, "image": image, "codes": codes, "genes": genes, "counts": counts,
            "x": xs, "y": ys, "patches": patches}
