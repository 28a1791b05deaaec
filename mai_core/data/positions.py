"""Where to predict on a slide: spot or tile positions in full-resolution pixels.

:func:`read_positions` reads three layouts (detected from the header):

- a legacy-ST spot table (``x y [new_x new_y] pixel_x pixel_y [selected]``): the selected spots, id
  ``<x>x<y>`` as in the section's counts;
- 10x Visium tissue positions (``tissue_positions.csv`` with header ``barcode,in_tissue,array_row,
  array_col,pxl_row_in_fullres,pxl_col_in_fullres``, or the header-less ``tissue_positions_list.csv``):
  the spots under tissue, id = barcode;
- a plain CSV ``id,px,py`` (x = column, y = row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mai_core.data.stfiles import examples, first_line, need_file, read_header, read_spots, separator
from mai_core.errors import MaiError, Problem

VISIUM_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
LAYOUTS = "a legacy-ST spot table (x y pixel_x pixel_y selected), Visium tissue positions, or a CSV id,px,py"


@dataclass
class Positions:
    ids: list[str]
    xy: np.ndarray  # n×2 float, full-resolution pixels (x = column, y = row)
    array_xy: np.ndarray | None = None  # n×2 array coordinates (legacy ST x/y; Visium array_col/array_row)
    platform: str | None = None  # "st", "visium" or None
    kind: str = "csv"
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _numeric(df: pd.DataFrame, cols, path: Path) -> dict[str, np.ndarray]:
    out, problems = {}, []
    for c in cols:
        v = pd.to_numeric(df[c], errors="coerce")
        bad = np.flatnonzero(v.isna().to_numpy())
        for r in bad[:5]:
            problems.append(Problem(f"{path} row {r + 2}, column '{c}'", f"not a number ({df[c].iat[r]!r})",
                                    "fill in a numeric value"))
        out[c] = v.to_numpy(dtype=np.float64, na_value=np.nan)
    if problems:
        raise MaiError("position table has non-numeric values", problems)
    return out


def read_visium_positions(path, in_tissue_only: bool = True) -> Positions:
    """Space Ranger tissue positions (with or without header)."""
    path = need_file(path, "tissue positions", "pass spatial/tissue_positions.csv from Space Ranger's outs/")
    header = read_header(path, ",")
    has_header = header[:1] == ["barcode"]
    try:
        df = pd.read_csv(path, header=0 if has_header else None, dtype={0: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MaiError("cannot parse the tissue positions", [Problem(str(path), str(exc), "pass Space Ranger's file")]) from None
    if not has_header:
        if df.shape[1] != len(VISIUM_COLUMNS):
            raise MaiError("tissue positions have the wrong shape", [Problem(
                str(path), f"{df.shape[1]} columns, expected {len(VISIUM_COLUMNS)}", f"columns: {', '.join(VISIUM_COLUMNS)}")])
        df.columns = list(VISIUM_COLUMNS)
    missing = [c for c in VISIUM_COLUMNS if c not in df.columns]
    if missing:
        raise MaiError("tissue positions lack columns", [Problem(str(path), f"missing {missing}",
                                                                 f"columns: {', '.join(VISIUM_COLUMNS)}")])
    num = _numeric(df, VISIUM_COLUMNS[1:], path)
    keep = num["in_tissue"] == 1 if in_tissue_only else np.ones(len(df), dtype=bool)
    if not keep.any():
        raise MaiError("no spot is under tissue", [Problem(str(path), "no row has in_tissue = 1",
                                                           "check that this is the positions file of a processed section")])
    ids = df["barcode"].astype(str).to_numpy()[keep].tolist()
    xy = np.c_[num["pxl_col_in_fullres"], num["pxl_row_in_fullres"]][keep]
    arr = np.c_[num["array_col"], num["array_row"]][keep]
    return Positions(ids, xy, arr, "visium", "visium", str(path),
                     [f"{int((~keep).sum())} spot(s) outside tissue ignored"] if (~keep).any() else [])


def read_positions(path) -> Positions:
    """Spot/tile centres from any of the three layouts (see the module docstring)."""
    path = need_file(path, "spot positions", f"pass {LAYOUTS}")
    line = first_line(path)
    sep = separator(line)
    cols = [c.strip() for c in read_header(path, sep)]
    if {"x", "y", "pixel_x", "pixel_y"} <= set(cols):
        sp = read_spots(path)
        sel = sp["selected"].to_numpy()
        array_cols = ["new_x", "new_y"] if {"new_x", "new_y"} <= set(cols) else None
        arr = sp[["x", "y"]].to_numpy(dtype=np.float64)
        if array_cols:
            raw = pd.read_csv(path, sep=sep)
            raw.columns = [str(c).strip() for c in raw.columns]
            arr = np.c_[_numeric(raw, array_cols, path)["new_x"], _numeric(raw, array_cols, path)["new_y"]]
        notes = [f"{int((~sel).sum())} spot(s) not under tissue (selected != 1) ignored"] if (~sel).any() else []
        if not sel.any():
            raise MaiError("no spot is selected", [Problem(str(path), "no row has selected == 1",
                                                           "mark the spots under tissue with selected = 1")])
        return Positions(sp.loc[sel, "spot"].tolist(), sp.loc[sel, ["pixel_x", "pixel_y"]].to_numpy(np.float64),
                         arr[sel], "st", "st", str(path), notes)
    if cols[:1] == ["barcode"] or (len(cols) == len(VISIUM_COLUMNS) and cols[1:2] in (["0"], ["1"])):
        return read_visium_positions(path)
    if {"id", "px", "py"} <= set(cols):
        try:
            df = pd.read_csv(path, sep=sep, dtype={"id": str})
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise MaiError("cannot parse the position table", [Problem(str(path), str(exc), f"pass {LAYOUTS}")]) from None
        df.columns = [str(c).strip() for c in df.columns]
        num = _numeric(df, ("px", "py"), path)
        ids = df["id"].astype(str).str.strip().tolist()
        dup = sorted(set(pd.Index(ids)[pd.Index(ids).duplicated()]))
        if dup:
            raise MaiError("position table lists an id twice", [Problem(str(path), f"duplicate id(s) {examples(dup)}",
                                                                        "give every position its own id")])
        if not ids:
            raise MaiError("position table is empty", [Problem(str(path), "no rows", "list at least one position")])
        return Positions(ids, np.c_[num["px"], num["py"]], None, None, "csv", str(path))
    raise MaiError("unknown spot position layout", [Problem(str(path), f"columns {cols[:8]}", f"pass {LAYOUTS}")])


def check_inside(pos: Positions, width: int, height: int, image: str) -> None:
    """Every centre lies on the image (else a clear error naming the first offenders)."""
    x, y = pos.xy[:, 0], pos.xy[:, 1]
    bad = np.flatnonzero(~((x >= 0) & (x < width) & (y >= 0) & (y < height)))
    if len(bad):
        probs = [Problem(f"{pos.source or 'positions'} spot {pos.ids[i]}",
                         f"centre ({x[i]:g}, {y[i]:g}) is outside the {width}x{height} image", "") for i in bad[:10]]
        raise MaiError(f"{len(bad)} of {len(pos)} position(s) lie outside the slide", probs,
                       hint=f"positions must be full-resolution pixel coordinates of {image} (x = column, y = row); "
                            "is the image downscaled or from another section?")
