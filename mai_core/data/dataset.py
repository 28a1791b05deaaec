"""The MAI CSV dataset format: the contest's own layout and our canonical on-disk dataset.

A dataset is a folder holding
- ``train.csv``: ``ID``, ``path``, optional metadata columns (see ``META_COLUMNS``), then one float
  column per gene;
- optionally ``test.csv``: ``ID``, ``path`` (and metadata; gene columns, if present, must match train's);
- the images, referenced by ``path`` relative to the folder: 224x224 RGB PNG or JPEG.

``load_dataset`` validates on every load and raises :class:`MaiError` listing every problem.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from mai_core.errors import MaiError, Problem
from mai_core.data import checked
from mai_core.data.images import PATCH_SIZE, load_image, load_images
from mai_core.io import check_path_text, shown_path

ID_COL, PATH_COL = "ID", "path"
# Columns that are metadata, never genes. Importers add section/px/py; users may add split/fold.
META_COLUMNS = ("section", "px", "py", "array_x", "array_y", "split", "fold", "label")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _read_header(csv_path: Path) -> list[str]:
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        return next(csv.reader(fh), [])


FLOAT32_MAX = float(np.finfo(np.float32).max)
_SEPARATORS = {";": "semicolon", "\t": "tab", "|": "pipe"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _header_problems(csv_path: Path, header: list[str]) -> list[Problem]:
    """ID/path columns present? Said without repeating the file's content (it may not be a dataset at all)."""
    where = str(csv_path)
    missing = [c for c in (ID_COL, PATH_COL) if c not in header]
    if not missing:
        return []
    if not header or not any(h.strip() for h in header):
        return [Problem(where, "has no header row", "the first line must name the columns: ID, path, genes...")]
    if len(header) <= 2:
        for sep, sep_name in _SEPARATORS.items():
            if any(sep in h for h in header):
                return [Problem(where, f"looks {sep_name}-separated (its header reads as {len(header)} column(s))",
                                "save it comma-separated (in Excel: CSV UTF-8), columns ID, path, genes...")]
    out = []
    for col in missing:
        if any(h.strip().lower() == col.lower() for h in header):
            out.append(Problem(where, f"column '{col}' is missing; a column differs from it only in upper/lower "
                                      "case or spaces", f"rename that column to exactly '{col}'"))
        else:
            out.append(Problem(where, f"column '{col}' is missing ({len(header)} column(s), none named '{col}')",
                               "the first two columns must be named ID and path"))
    return out


def _name_problems(csv_path: Path, header: list[str]) -> list[Problem]:
    """Duplicate, empty and unprintable column names (a gene must round-trip through genes.txt)."""
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, col in enumerate(header):
        where = f"{csv_path} column {i + 1}"
        if not col.strip():
            out.append(Problem(where, "has no name", "give every gene column a name (or delete the column)"))
        elif _CONTROL.search(col):
            out.append(Problem(where, "name holds a line break or another control character",
                               "use a plain one-line gene name"))
        elif col != col.strip():
            out.append(Problem(where, f"name '{col.strip()}' has leading or trailing spaces", "remove the spaces"))
        if col in seen:
            out.append(Problem(where, f"duplicate column name '{col}' (also column {seen[col] + 1})",
                               "give every gene a unique name"))
        else:
            seen[col] = i
    return out


def _check_table(csv_path: Path, name: str, problems: list[Problem], need_genes: bool) -> pd.DataFrame | None:
    """Read one CSV, checking structure; returns None when it cannot be used at all."""
    if not csv_path.is_file():
        problems.append(Problem(str(csv_path), f"{name} is missing",
                                f"put a {name} with columns ID, path[, genes...] in the dataset folder"))
        return None
    try:
        header = _read_header(csv_path)
    except UnicodeDecodeError:
        problems.append(Problem(str(csv_path), "is not UTF-8 text", "save it as CSV UTF-8 (comma-separated)"))
        return None
    except (OSError, csv.Error) as exc:
        problems.append(Problem(str(csv_path), f"cannot be read ({type(exc).__name__})",
                                "check that it is a readable CSV file"))
        return None
    header_problems = _header_problems(csv_path, header)
    if header_problems:
        problems.extend(header_problems)
        return None
    try:
        df = pd.read_csv(csv_path, dtype={ID_COL: str, PATH_COL: str}, low_memory=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(csv_path), f"is not UTF-8 text (byte {exc.start})",
                                "save it as CSV UTF-8 (comma-separated)"))
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        problems.append(Problem(str(csv_path), f"cannot be parsed as CSV ({str(exc).splitlines()[0][:200]})",
                                "save it as comma-separated UTF-8 text with a header row"))
        return None
    problems.extend(_name_problems(csv_path, header))
    if len(df) == 0:
        problems.append(Problem(str(csv_path), "has no rows", "add at least one sample"))
    df.columns = header if len(header) == len(df.columns) else df.columns
    df = df.loc[:, ~pd.Index(df.columns).duplicated()]
    df[PATH_COL] = df[PATH_COL].str.replace("\\", "/", regex=False)  # Windows-exported paths
    ids = df[ID_COL]
    if ids.isna().any():
        for r in np.flatnonzero(ids.isna().to_numpy())[:20]:
            problems.append(Problem(f"{csv_path} row {r + 2}", "empty ID", "give every row an ID"))
    dup = ids[ids.duplicated(keep=False) & ids.notna()]
    for value, rows in list(dup.groupby(dup).groups.items())[:20]:
        rows_txt = ", ".join(str(r + 2) for r in list(rows)[:10])
        problems.append(Problem(f"{csv_path} rows {rows_txt}", f"duplicate ID '{shown_path(value, 60)}'",
                                "make IDs unique"))
    gene_cols = [c for c in df.columns if c not in (ID_COL, PATH_COL) and c not in META_COLUMNS]
    if need_genes and not gene_cols:
        problems.append(Problem(str(csv_path), "has no gene columns", "add one float column per gene after ID, path"))
    if gene_cols:
        raw = df[gene_cols]
        if all(pd.api.types.is_numeric_dtype(t) for t in raw.dtypes):  # the usual case: one fast conversion
            vals = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            vals = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad_nan = raw.isna().to_numpy()
        with np.errstate(invalid="ignore"):
            too_big = np.isfinite(vals) & (np.abs(vals) > FLOAT32_MAX)
        for mask, what, fix in (
            (np.isnan(vals) & ~bad_nan, "non-numeric value", "gene values must be numbers (1.5, not 1,5 or text)"),
            (bad_nan, "missing/NaN value", "fill missing expression (e.g. with 0)"),
            (np.isinf(vals), "infinite value", "replace inf with a finite number"),
            (too_big, f"value too large for 32-bit floats (beyond ±{FLOAT32_MAX:.3g})",
             "rescale the expression values (e.g. log1p) so they fit"),
        ):
            rr, cc = np.nonzero(mask)
            for r, c in list(zip(rr, cc))[:20]:
                problems.append(Problem(f"{csv_path} row {r + 2}, column '{gene_cols[c]}'", what, fix))
            if len(rr) > 20:
                problems.append(Problem(str(csv_path), f"{len(rr) - 20} more cells with {what}", fix))
        order = list(df.columns)
        is_gene = set(gene_cols)
        others = [c for c in order if c not in is_gene]
        df = pd.concat([df[others], pd.DataFrame(vals, columns=gene_cols, index=df.index)], axis=1)[order]
    return df


def _check_path(root: Path, rel: str, where: str, problems: list[Problem], check_images: bool) -> None:
    if not isinstance(rel, str) or not rel.strip():
        problems.append(Problem(where, "empty path", "give the image path relative to the dataset folder"))
        return
    bad = check_path_text(rel, where)
    if bad:
        problems.extend(bad)
        return
    shown = shown_path(rel)
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        problems.append(Problem(where, f"absolute path '{shown}'",
                                "paths must be relative to the dataset folder (copy images inside it)"))
        return
    try:
        full = (root / pure).resolve()
        folder = root.resolve()
        if ".." in pure.parts or not full.is_relative_to(folder):
            problems.append(Problem(where, f"path '{shown}' escapes the dataset folder",
                                    "keep images inside the dataset folder; remove '..' from paths"))
            return
        found = full.is_file()
    except (OSError, ValueError, RuntimeError) as exc:  # a name too long, a link loop, ...
        problems.append(Problem(where, f"image path '{shown}' cannot be used ({getattr(exc, 'strerror', None) or exc})",
                                "check the path"))
        return
    if not found:
        problems.append(Problem(where, f"image '{shown}' not found", "check the path or add the image"))
        return
    if not check_images:
        return
    try:
        st = full.stat()
    except OSError:
        st = None
    if st is not None and checked.known_good(folder, full, st):
        return  # decoded fine before and unchanged since (see mai_core.data.checked)
    try:
        with Image.open(full) as im:
            size, mode = im.size, im.mode
            im.verify()  # structure and checksums
        if size == (PATCH_SIZE, PATCH_SIZE):
            with Image.open(full) as im:
                im.load()  # decode every pixel (bounded: one patch): a truncated JPEG fails here, not in training
    except Exception as exc:  # PIL raises many types for corrupt files
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        problems.append(Problem(where, f"image '{shown}' is unreadable ({type(exc).__name__}: {detail})",
                                "re-export it as PNG or JPEG"))
        return
    if size != (PATCH_SIZE, PATCH_SIZE):
        problems.append(Problem(where, f"image '{shown}' is {size[0]}x{size[1]}, expected {PATCH_SIZE}x{PATCH_SIZE}",
                                "crop/resize patches to 224x224 (import-slide does this)"))
    if mode != "RGB":
        problems.append(Problem(where, f"image '{shown}' has mode {mode}, expected RGB",
                                "convert it to 3-channel RGB"))
    if st is not None and size == (PATCH_SIZE, PATCH_SIZE) and mode == "RGB":
        checked.remember_good(folder, full, st)


def collect_problems(root: str | os.PathLike, check_images: bool = True) -> tuple[list[Problem], pd.DataFrame | None, pd.DataFrame | None]:
    """Run every check on a dataset folder; return (problems, train_df, test_df)."""
    bad = check_path_text(str(root), shown_path(root))
    if bad:
        return bad, None, None
    root = Path(root)
    problems: list[Problem] = []
    try:
        found = root.is_dir()
    except (OSError, ValueError):
        found = False
    if not found:
        return [Problem(shown_path(root), "dataset folder not found", "pass a folder containing train.csv")], None, None
    train = _check_table(root / "train.csv", "train.csv", problems, need_genes=True)
    test = None
    if (root / "test.csv").exists():
        test = _check_table(root / "test.csv", "test.csv", problems, need_genes=False)
    for df, name in ((train, "train.csv"), (test, "test.csv")):
        if df is None or PATH_COL not in df.columns:
            continue
        for r, rel in enumerate(df[PATH_COL].tolist()):
            _check_path(root, rel if isinstance(rel, str) else "", f"{root / name} row {r + 2}", problems, check_images)
    if check_images:
        checked.save(root.resolve())
    if train is not None and test is not None:
        train_genes = [c for c in train.columns if c not in (ID_COL, PATH_COL) and c not in META_COLUMNS]
        test_genes = [c for c in test.columns if c not in (ID_COL, PATH_COL) and c not in META_COLUMNS]
        if test_genes and test_genes != train_genes:
            missing = [g for g in train_genes if g not in test_genes][:5]
            extra = [g for g in test_genes if g not in train_genes][:5]
            problems.append(Problem(str(root / "test.csv"),
                                    f"gene columns differ from train.csv (missing {missing}, extra {extra}, "
                                    f"{len(test_genes)} vs {len(train_genes)})",
                                    "test.csv needs either no gene columns or exactly train.csv's, in the same order"))
        if ID_COL in train.columns and ID_COL in test.columns:
            both = sorted(set(train[ID_COL].dropna()) & set(test[ID_COL].dropna()))
            if both:
                problems.append(Problem(str(root / "test.csv"), f"{len(both)} IDs also in train.csv (e.g. {both[:3]})",
                                        "train and test IDs must be distinct"))
    return problems, train, test


@dataclass
class MAIDataset:
    """A validated MAI-format dataset. Expression is float32 (samples x genes)."""

    root: Path
    train: pd.DataFrame
    test: pd.DataFrame | None
    genes: list[str]
    meta_columns: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return self.train[ID_COL].tolist()

    @property
    def test_ids(self) -> list[str]:
        return [] if self.test is None else self.test[ID_COL].tolist()

    @cached_property
    def X(self) -> np.ndarray:
        return np.ascontiguousarray(self.train[self.genes].to_numpy(dtype=np.float32))

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_test(self) -> int:
        return 0 if self.test is None else len(self.test)

    def image_path(self, key: str | int, split: str = "train") -> Path:
        df = self.train if split == "train" else self.test
        if isinstance(key, str):
            idx = self.index(split)[key]
        else:
            idx = int(key)
        return self.root / df[PATH_COL].iat[idx]

    def index(self, split: str) -> dict[str, int]:
        attr = f"_idx_{split}"
        if not hasattr(self, attr):
            df = self.train if split == "train" else self.test
            setattr(self, attr, {k: i for i, k in enumerate(df[ID_COL].tolist())})
        return getattr(self, attr)

    def _row_label(self, split: str, i: int) -> str:
        return f"{self.root / f'{split}.csv'} row {int(i) + 2}"

    def image(self, key: str | int, split: str = "train") -> np.ndarray:
        """One image as a uint8 HxWx3 array (loaded lazily from disk)."""
        i = self.index(split)[key] if isinstance(key, str) else int(key)
        return load_image(self.image_path(i, split), self._row_label(split, i))

    def images(self, split: str = "train", indices=None, progress: bool = False) -> np.ndarray:
        """Stack of uint8 images (N, 224, 224, 3)."""
        df = self.train if split == "train" else self.test
        idx = range(len(df)) if indices is None else indices
        paths = [self.root / df[PATH_COL].iat[int(i)] for i in idx]
        return load_images(paths, progress=progress, labels=[self._row_label(split, i) for i in idx])

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the tables plus image file sizes/mtimes: a cache key for derived data."""
        h = hashlib.sha1()
        for name in ("train.csv", "test.csv"):
            p = self.root / name
            if p.exists():
                h.update(p.read_bytes())
        for rel in self.train[PATH_COL].tolist():
            st = (self.root / rel).stat()
            h.update(f"{rel}:{st.st_size}:{int(st.st_mtime)}".encode())
        return h.hexdigest()[:16]

    def gene_stats(self) -> pd.DataFrame:
        """Per-gene mean, std, coefficient of variation and fraction of zeros."""
        X = self.X
        mean = X.mean(0)
        std = X.std(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cv = np.where(mean != 0, std / np.abs(mean), np.nan)
        return pd.DataFrame({"gene": self.genes, "mean": mean, "std": std, "cv": cv,
                             "zero_fraction": (X == 0).mean(0)})

    def torch_dataset(self, split: str = "train", indices=None, transform=None, with_targets: bool = True):
        """A ``torch.utils.data.Dataset`` yielding (float image CHW in [0,1], target) pairs."""
        from mai_core.data.torchdata import PatchDataset

        df = self.train if split == "train" else self.test
        idx = np.arange(len(df)) if indices is None else np.asarray(indices)
        paths = [self.root / df[PATH_COL].iat[int(i)] for i in idx]
        targets = self.X[idx] if (with_targets and split == "train") else None
        return PatchDataset(paths, targets, transform=transform)


def load_dataset(root: str | os.PathLike, check_images: bool = True) -> MAIDataset:
    """Load and validate a dataset folder; raises MaiError listing every problem found."""
    root = Path(root).expanduser()
    problems, train, test = collect_problems(root, check_images=check_images)
    if problems:
        raise MaiError(f"dataset {shown_path(root)} has {len(problems)} problem(s)", problems,
                       hint=f"run `python -m mai_core validate --data {shown_path(root)}` for the full list")
    meta = [c for c in train.columns if c in META_COLUMNS]
    genes = [c for c in train.columns if c not in (ID_COL, PATH_COL) and c not in META_COLUMNS]
    return MAIDataset(root=root, train=train.reset_index(drop=True),
                      test=None if test is None else test.reset_index(drop=True), genes=genes, meta_columns=meta)


def read_id_path_csv(csv_path: str | os.PathLike, check_images: bool = True) -> tuple[pd.DataFrame, list[Path]]:
    """Read a CSV with ``ID``, ``path`` (paths relative to the CSV's folder) for prediction.

    Raises MaiError listing every missing/unreadable image.
    """
    csv_path = Path(csv_path)
    problems: list[Problem] = []
    df = _check_table(csv_path, csv_path.name, problems, need_genes=False)
    if df is not None and PATH_COL in df.columns:
        for r, rel in enumerate(df[PATH_COL].tolist()):
            _check_path(csv_path.parent, rel if isinstance(rel, str) else "", f"{csv_path} row {r + 2}",
                        problems, check_images)
        if check_images:
            checked.save(csv_path.parent.resolve())
    if problems:
        raise MaiError(f"{csv_path} cannot be used for prediction: {len(problems)} problem(s)", problems)
    return df.reset_index(drop=True), [csv_path.parent / p for p in df[PATH_COL]]


def write_dataset(root: str | os.PathLike, train: pd.DataFrame, test: pd.DataFrame | None = None) -> None:
    """Write train.csv/test.csv atomically (images must already be in place under root)."""
    from mai_core.io import write_csv

    root = Path(root)
    write_csv(root / "train.csv", train, float_format="%.6g")
    if test is not None:
        write_csv(root / "test.csv", test, float_format="%.6g")
