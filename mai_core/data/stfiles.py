"""Readers for legacy spatial-transcriptomics text files: spot tables, count tables, gene lists.

A spot table (tab- or comma-separated, with header) has columns ``x``, ``y`` (array position),
``pixel_x``, ``pixel_y`` (spot centre in image pixels, x = column, y = row) and optionally ``selected``
(1 = under tissue; when the column is absent every row counts as selected). A counts table
(``.tsv``/``.csv``, optionally gzipped) has one row per spot, first column the spot id ``f"{x}x{y}"``,
one column per gene with raw counts (a genes x spots table is transposed automatically).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem

SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")
_SECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def need_file(path, what: str, fix: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise MaiError(f"{what} not found", [Problem(str(p), "no such file" if not p.exists() else "not a file", fix)])
    return p


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def first_line(path: Path) -> str:
    try:
        opener = gzip.open if is_gzip(path) else open
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            return fh.readline()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise MaiError(f"cannot read {path}", [Problem(str(path), f"unreadable ({exc})",
                                                       "pass a plain or gzipped UTF-8 text table")]) from None


def separator(line: str) -> str:
    return "\t" if line.count("\t") >= line.count(",") else ","


def read_header(path: Path, sep: str) -> list[str]:
    return next(csv.reader(io.StringIO(first_line(path)), delimiter=sep), [])


def spot_name(x: float, y: float) -> str:
    def fmt(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else str(v)
    return f"{fmt(x)}x{fmt(y)}"


def round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


def examples(items: Sequence, k: int = 5) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:k])
    return shown + (f", ... ({len(items)} in all)" if len(items) > k else "")


def progress_iter(iterable, progress: bool, **kw):
    if not progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, **kw)


def check_section_name(section: str) -> str:
    section = str(section).strip()
    if not _SECTION_RE.match(section):
        raise MaiError("invalid section name", [Problem(
            "--section", f"'{section}' cannot be used as a section name",
            "use letters, digits, '.', '_' or '-' (starting with a letter or digit), e.g. C5")])
    return section



def read_spots(path) -> pd.DataFrame:
    """Read and validate a spot table; returns columns spot, x, y, pixel_x, pixel_y, selected (bool)."""
    path = need_file(path, "spot table", "pass the spot/selection table (columns x y pixel_x pixel_y selected)")
    sep = separator(first_line(path))
    try:
        df = pd.read_csv(path, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MaiError("cannot parse the spot table", [Problem(str(path), f"not a readable table ({exc})",
                                                              "save it as tab- or comma-separated text with a header")]) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in SPOT_COLUMNS if c not in df.columns]
    if missing:
        raise MaiError("spot table lacks required columns", [Problem(
            str(path), f"missing column(s) {missing}; found {list(df.columns)[:10]}",
            "the spot table needs a header with x, y (array position), pixel_x, pixel_y (spot centre in "
            "image pixels) and optionally selected (1 = under tissue)")])
    if len(df) == 0:
        raise MaiError("spot table is empty", [Problem(str(path), "no rows", "pass the table listing the spots")])
    problems: list[Problem] = []
    cols = list(SPOT_COLUMNS) + (["selected"] if "selected" in df.columns else [])
    num = {}
    for c in cols:
        values = pd.to_numeric(df[c], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        for r in bad[:10]:
            problems.append(Problem(f"{path} row {r + 2}, column '{c}'", f"not a number ({df[c].iat[r]!r})",
                                    "fill in a numeric value"))
        if len(bad) > 10:
            problems.append(Problem(str(path), f"{len(bad) - 10} more non-numeric values in column '{c}'", ""))
        num[c] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    if problems:
        raise MaiError("spot table has non-numeric values", problems)
    out = pd.DataFrame({
        "spot": [spot_name(x, y) for x, y in zip(num["x"], num["y"])],
        "x": num["x"], "y": num["y"], "pixel_x": num["pixel_x"], "pixel_y": num["pixel_y"],
        "selected": (num["selected"] == 1) if "selected" in num else np.ones(len(df), dtype=bool),
    })
    dup = out["spot"][out["spot"].duplicated(keep=False)]
    if len(dup):
        raise MaiError("spot table lists a spot twice", [Problem(
            str(path), f"duplicate spot position(s) {examples(sorted(set(dup)))}", "keep one row per (x, y)")])
    return out


@dataclass
class Counts:
    spots: list[str]
    genes: list[str]
    values: np.ndarray  # spots x genes, int32 or float64
    notes: list[str] = field(default_factory=list)


def read_counts(path, expected_spots: Iterable[str] | None = None) -> Counts:
    """Read a spots x genes counts table (first column = spot id); validate numbers.

    When ``expected_spots`` is given and no row id is one of them but column names are, the table is
    taken to be genes x spots and transposed.
    """
    path = need_file(path, "counts table", "pass the spot x gene counts table (.tsv, .tsv.gz, .csv)")
    sep = separator(first_line(path))
    header = read_header(path, sep)
    if len(header) < 2:
        raise MaiError("counts table has no gene columns", [Problem(
            str(path), f"header has {len(header)} column(s)",
            "the first column must be the spot id (e.g. 10x11), then one column per gene")])
    try:
        df = pd.read_csv(path, sep=sep, index_col=0, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise MaiError("cannot parse the counts table", [Problem(str(path), f"not a readable table ({exc})",
                                                                "save it as tab- or comma-separated text")]) from None
    if len(header) == df.shape[1] + 1:
        df.columns = header[1:]
    notes: list[str] = []
    if expected_spots is not None:
        expected = set(expected_spots)
        row_ids = {str(i).strip() for i in df.index}
        if not (row_ids & expected) and ({str(c).strip() for c in df.columns} & expected):
            df = df.T
            notes.append("counts table is genes x spots: transposed")
    if len(df) == 0:
        raise MaiError("counts table has no rows", [Problem(str(path), "no spots", "pass a non-empty counts table")])
    spots = [str(i).strip() for i in df.index]
    genes = [str(c).strip() for c in df.columns]
    dup_spots = sorted(set(pd.Index(spots)[pd.Index(spots).duplicated()]))
    if dup_spots:
        raise MaiError("counts table lists a spot twice", [Problem(
            str(path), f"duplicate spot id(s) {examples(dup_spots)}", "keep one row per spot")])
    empty_genes = [i for i, g in enumerate(genes) if not g or g.lower() == "nan"]
    if empty_genes:
        raise MaiError("counts table has unnamed gene columns", [Problem(
            str(path), f"{len(empty_genes)} gene column(s) without a name (column {empty_genes[0] + 2}, ...)",
            "give every gene column a name in the header")])
    problems: list[Problem] = []
    numeric_ok = all(getattr(t, "kind", "O") in "iufb" for t in df.dtypes)
    if numeric_ok:
        values = df.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
    else:
        missing = df.isna().to_numpy()
        block = df.apply(pd.to_numeric, errors="coerce")
        values = block.to_numpy(dtype=np.float64, na_value=np.nan)
        bad_text = block.isna().to_numpy() & df.notna().to_numpy()
        rr, cc = np.nonzero(bad_text)
        for r, c in list(zip(rr, cc))[:10]:
            problems.append(Problem(f"{path} spot '{spots[r]}', gene '{genes[c]}'",
                                    f"non-numeric count ({df.iat[r, c]!r})", "counts must be numbers"))
        if len(rr) > 10:
            problems.append(Problem(str(path), f"{len(rr) - 10} more non-numeric counts", "counts must be numbers"))
    for mask, what, fix in ((missing, "missing count", "fill empty cells with 0"),
                            (np.isinf(values), "infinite count", "counts must be finite"),
                            (values < 0, "negative count", "counts must be >= 0 (raw counts)")):
        rr, cc = np.nonzero(mask)
        for r, c in list(zip(rr, cc))[:10]:
            problems.append(Problem(f"{path} spot '{spots[r]}', gene '{genes[c]}'", f"{what} ({values[r, c]})", fix))
        if len(rr) > 10:
            problems.append(Problem(str(path), f"{len(rr) - 10} more cells with {what}", fix))
    if problems:
        raise MaiError(f"counts table {path.name} has invalid values", problems)
    if len(set(genes)) != len(genes):
        uniq, inverse = np.unique(np.asarray(genes, dtype=object), return_inverse=True)
        order = {g: i for i, g in enumerate(dict.fromkeys(genes))}
        merged = np.zeros((values.shape[0], len(uniq)))
        np.add.at(merged.T, inverse, values.T)
        perm = sorted(range(len(uniq)), key=lambda j: order[uniq[j]])
        n_dup = len(genes) - len(uniq)
        notes.append(f"{n_dup} duplicate gene column(s) summed")
        values, genes = merged[:, perm], [str(uniq[j]) for j in perm]
    if np.all(values == np.round(values)) and (values.size == 0 or values.max() < 2**31):
        values = values.astype(np.int32)
    return Counts(spots=spots, genes=genes, values=values, notes=notes)


def read_gene_list(path) -> list[str]:
    """Genes from a file with one gene per line (blank lines and '#' comments ignored)."""
    path = need_file(path, "gene list", "pass a text file with one gene symbol per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise MaiError("cannot read the gene list", [Problem(str(path), "not UTF-8 text",
                                                            "save it as plain text, one gene per line")]) from None
    genes = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    bad = [g for g in genes if "\t" in g or "," in g]
    if bad:
        raise MaiError("gene list is not one gene per line", [Problem(
            str(path), f"line(s) with separators, e.g. {bad[0]!r}", "put exactly one gene symbol on each line")])
    if not genes:
        raise MaiError("gene list is empty", [Problem(str(path), "no gene names", "list one gene per line")])
    return list(dict.fromkeys(genes))
