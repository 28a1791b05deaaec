"""One section staged for import: spots, raw counts, the slide to cut patches from, and its resolution.

Every reader (legacy ST files, 10x Visium, HEST-1k, AnnData) ends in :func:`build_section`, which checks
the same things the same way before anything is written:

- the counts match the spots: at least ``min_match`` (default 50 %) of the spots under tissue have a
  counts row; counts from another section (which share array positions, so a few ids match by chance)
  are refused, with ``--min-match`` to override;
- spots with fewer than ``min_counts`` total counts are skipped (and reported);
- every spot centre lies on the image;
- the resolution: ``--mpp`` > the slide's metadata > the reader's own (Visium scale factors, HEST
  metadata) > the spot grid (:mod:`mai_core.data.mpp`); unknown stays ``None`` and is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mai_core.data.mpp import PLATFORMS, check_mpp, estimate_mpp
from mai_core.data.positions import read_positions
from mai_core.data.slideimage import DEFAULT_MAX_PIXELS
from mai_core.data.stfiles import (Counts, check_section_name, examples, need_file, read_counts, read_spots,
                                   round_half_up)
from mai_core.data.wsi import Slide, open_slide
from mai_core.errors import MaiError, Problem

DEFAULT_MIN_MATCH = 0.5


@dataclass
class Section:
    """A section ready to be written (nothing of it is on disk in the dataset yet)."""

    name: str
    spots: list[str]
    centres: np.ndarray  # n×2 int (cx, cy), full-resolution pixels
    array_xy: np.ndarray  # n×2 float (NaN when unknown)
    genes: list[str]
    values: np.ndarray  # spots × genes raw counts
    slide: Slide | None  # the image patches are cut from ...
    patches: np.ndarray | None = None  # ... or patches cut by the data's provider (n×H×W×3)
    patches_mpp: float | None = None
    mpp: float | None = None
    mpp_source: str = "unknown"
    platform: str | None = None
    sources: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    min_counts: float = 1.0

    def close(self) -> None:
        if self.slide is not None:
            self.slide.close()


def check_min_match(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (0 <= v <= 1):
        raise MaiError("invalid --min-match", [Problem("--min-match", f"{value!r}",
                                                       "give a fraction between 0 and 1 (e.g. 0.5 = half the spots)")])
    return v


def build_section(name: str, ids: list[str], xy, array_xy, counts: Counts, slide: Slide | None, *,
                  platform: str | None, sources: dict, spots_where: str, counts_where: str,
                  min_counts: float = 1, min_match: float = DEFAULT_MIN_MATCH, mpp: float | None = None,
                  reader_mpp: tuple[float | None, str] = (None, ""), patches: np.ndarray | None = None,
                  patches_mpp: float | None = None, notes: list[str] | None = None,
                  skipped: dict | None = None) -> Section:
    """Match spots to counts, drop low spots, check positions and settle the resolution."""
    name = check_section_name(name)
    min_match = check_min_match(min_match)
    if min_counts is None or not np.isfinite(float(min_counts)) or float(min_counts) < 0:
        raise MaiError("invalid --min-counts", [Problem("--min-counts", f"{min_counts!r}", "give a number >= 0")])
    notes = list(notes or []) + list(counts.notes)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    arr = np.full((len(ids), 2), np.nan) if array_xy is None else np.asarray(array_xy, np.float64).reshape(-1, 2)
    row_of = {s: i for i, s in enumerate(counts.spots)}
    has = np.array([s in row_of for s in ids], dtype=bool)
    n_match, n = int(has.sum()), len(ids)
    if n_match == 0:
        raise MaiError("counts do not match the spot table", [Problem(
            counts_where, f"0 of {n} selected spots have a counts row (selected e.g. {examples(ids, 3)}; "
            f"counts ids e.g. {examples(counts.spots, 3)})",
            "counts rows must be named like the spots (legacy ST: f'{x}x{y}' from the spot table's x and y; "
            "Visium: the barcode); check that both files belong to the same section")])
    if n_match < min_match * n:
        raise MaiError("counts match too few spots", [Problem(
            counts_where, f"only {n_match} of {n} spots under tissue ({n_match / n:.0%}) have a counts row; "
            f"at least {min_match:.0%} are required (--min-match {min_match:g})",
            f"check that {counts_where} and {spots_where} belong to the same section; to import the matching "
            f"spots anyway pass --min-match {math.floor(n_match / n * 100) / 100:g}")])
    missing = [s for s, h in zip(ids, has) if not h]
    keep_idx = np.flatnonzero(has)
    rows = np.array([row_of[ids[i]] for i in keep_idx], dtype=np.int64)
    values = counts.values[rows]
    totals = values.sum(1, dtype=np.float64)
    keep = totals >= float(min_counts)
    low = [ids[i] for i in keep_idx[~keep]]
    if not keep.any():
        raise MaiError("every spot is below --min-counts", [Problem(
            counts_where, f"all {len(keep_idx)} matched spots have fewer than {min_counts} counts "
            f"(largest total {totals.max():g})", "lower --min-counts")])
    sel = keep_idx[keep]
    values = values[keep]
    centres = np.stack([round_half_up(xy[sel, 0]), round_half_up(xy[sel, 1])], 1)
    if patches is not None:
        patches = patches[sel]
    if slide is not None:
        w, h = slide.width, slide.height
        bad = np.flatnonzero((centres[:, 0] < 0) | (centres[:, 0] >= w) | (centres[:, 1] < 0) | (centres[:, 1] >= h))
        if len(bad):
            probs = [Problem(f"{spots_where} spot {ids[sel[i]]}",
                             f"centre ({xy[sel[i], 0]:g}, {xy[sel[i], 1]:g}) is outside the {w}x{h} image", "")
                     for i in bad[:10]]
            raise MaiError(f"{len(bad)} spot(s) lie outside the image", probs,
                           hint="pixel coordinates must be full-resolution pixel coordinates of this image "
                                "(x = column, y = row); is the image downscaled or from another section?")
    res, how = None, "unknown"
    if mpp is not None:
        res, how = check_mpp(mpp), "--mpp"
    elif slide is not None and slide.mpp is not None:
        res, how = slide.mpp, slide.mpp_source
    elif reader_mpp[0] is not None:
        res, how = reader_mpp
    elif platform in PLATFORMS:
        res, how = estimate_mpp(xy, None if array_xy is None else arr, platform)
    if res is None:
        notes.append("resolution unknown: pass --mpp (µm per pixel) so runs trained on it know their scale")
    skipped = dict(skipped or {})
    skipped.update(no_counts=len(missing), below_min_counts=len(low), no_counts_examples=missing[:5],
                   below_min_counts_examples=low[:5],
                   counts_rows_not_selected=len(set(counts.spots) - set(ids)))
    skipped.setdefault("not_selected", 0)
    return Section(name=name, spots=[ids[i] for i in sel], centres=centres, array_xy=arr[sel], genes=counts.genes,
                   values=values, slide=slide, patches=patches, patches_mpp=patches_mpp, mpp=res, mpp_source=how,
                   platform=platform, sources=sources, skipped=skipped, notes=notes, min_counts=float(min_counts))


def stage_st(image, spots, counts, section: str, min_counts: float = 1, min_match: float = DEFAULT_MIN_MATCH,
             max_pixels: int = DEFAULT_MAX_PIXELS, mpp: float | None = None, progress: bool = False) -> Section:
    """A legacy-ST section from its three files (H&E image, spot table, counts table)."""
    image_path = need_file(image, "H&E image", "pass the full-resolution H&E image (JPEG/PNG/TIFF)")
    spots_path = need_file(spots, "spot table", "pass the spot/selection table (columns x y pixel_x pixel_y selected)")
    counts_path = need_file(counts, "counts table", "pass the spot x gene counts table (.tsv, .tsv.gz, .csv)")
    check_section_name(section)
    check_min_match(min_match)
    if max_pixels is None or int(max_pixels) <= 0:
        raise MaiError("invalid pixel limit", [Problem("--max-pixels", f"{max_pixels!r}", "give a positive number")])
    sp = read_spots(spots_path)
    selected = sp[sp["selected"]].reset_index(drop=True)
    if len(selected) == 0:
        raise MaiError("no spot is selected", [Problem(str(spots_path), "no row has selected == 1",
                                                       "mark the spots under tissue with selected = 1")])
    pos = read_positions(spots_path)  # the selected spots again, with refined array positions when present
    cn = read_counts(counts_path, expected_spots=selected["spot"])
    slide = open_slide(image_path, max_pixels=max_pixels)
    if progress:
        print(f"{section}: {image_path.name} ({slide.width}x{slide.height}, {slide.backend})", flush=True)
    try:
        return build_section(
            section, pos.ids, pos.xy, pos.array_xy, cn, slide, platform="st",
            sources={"image": str(image_path.resolve()), "spots": str(spots_path.resolve()),
                     "counts": str(counts_path.resolve())},
            spots_where=str(spots_path), counts_where=str(counts_path), min_counts=min_counts, min_match=min_match,
            mpp=mpp, skipped={"not_selected": int(len(sp) - len(selected))})
    except MaiError:
        slide.close()
        raise
