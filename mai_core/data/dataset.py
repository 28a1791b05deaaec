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
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from mai_core.errors import MaiError, Problem
from mai_core.data.images import PATCH_SIZE, load_image, load_images

ID_COL, PATH_COL = "ID", "path"
# Columns that are metadata, never genes. Importers add section/px/py; users may add split/fold.
META_COLUMNS = ("section", "px", "py", "array_x", "array_y", "split", "fold", "label")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _read_header(csv_path: Path) -> list[str]:
    with open(csv_path, newline="") as fh:
        return next(csv.reader(fh), [])


def _check_table(csv_path: Path, name: str, problems: list[Problem], need_genes: bool) -> pd.DataFrame | None:
    """Read one CSV, checking structure; returns None when it cannot be used at all."""
    if not csv_path.is_file():
        problems.append(Problem(str(csv_path), f"{name} is missing",
                                f"put a {name} with columns ID, path[, genes...] in the dataset folder"))
        return None
    try:
        header = _read_header(csv_path)
        df = pd.read_csv(csv_path, dtype={ID_COL: str, PATH_COL: str}, low_memory=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, StopIteration) as exc:
        problems.append(Problem(str(csv_path), f"cannot be parsed as CSV ({exc})",
                                "save it as comma-separated UTF-8 text with a header row"))
        return None
    for col in (ID_COL, PATH_COL):
        if col not in header:
            problems.append(Problem(str(csv_path), f"column '{col}' is missing (header: {header[:5]}...)",
                                    "the first two columns must be named ID and path"))
    seen: dict[str, int] = {}
    for i, col in enumerate(header):
        if col in seen:
            problems.append(Problem(f"{csv_path} column {i + 1}", f"duplicate column name '{col}' "
                                    f"(also column {seen[col] + 1})", "give every gene a unique name"))
        else:
            seen[col] = i
    if any(p.where.startswith(str(csv_path)) and "missing" in p.what for p in problems):
        return None
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
    for value, rows in dup.groupby(dup).groups.items():
        rows_txt = ", ".join(str(r + 2) for r in list(rows)[:10])
        problems.append(Problem(f"{csv_path} rows {rows_txt}", f"duplicate ID '{value}'", "make IDs unique"))
    gene_cols = [c for c in df.columns if c not in (ID_COL, PATH_COL) and c not in META_COLUMNS]
    if need_genes and not gene_cols:
        problems.append(Problem(str(csv_path), "has no gene columns", "add one float column per gene after ID, path"))
    if gene_cols:
        block = df[gene_cols].apply(pd.to_numeric, errors="coerce")
        raw = df[gene_cols]
        bad_text = block.isna() & raw.notna()
        bad_nan = raw.isna()
        vals = block.to_numpy(dtype=np.float64, na_value=np.nan)
        bad_inf = np.isinf(vals)
        for mask, what, fix in (
            (bad_text.to_numpy(), "non-numeric value", "gene values must be numbers"),
            (bad_nan.to_numpy(), "missing/NaN value", "fill missing expression (e.g. with 0)"),
            (bad_inf, "infinite value", "replace inf with a finite number"),
        ):
            rr, cc = np.nonzero(mask)
            for r, c in list(zip(rr, cc))[:20]:
                shown = raw.iat[r, c]
                problems.append(Problem(f"{csv_path} row {r + 2}, column '{gene_cols[c]}'",
                                        f"{what} ({shown!r})", fix))
            if len(rr) > 20:
                problems.append(Problem(str(csv_path), f"{len(rr) - 20} more cells with {what}", fix))
        df[gene_cols] = block
    return df


def _check_path(root: Path, rel: str, where: str, problems: list[Problem], check_images: bool) -> None:
    if not isinstance(rel, str) or not rel.strip():
        problems.append(Problem(where, "empty path", "give the image path relative to the dataset folder"))
        return
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        problems.append(Problem(where, f"absolute path '{rel}'",
                                "paths must be relative to the dataset folder (copy images inside it)"))
        return
    full = (root / pure).resolve()
    if ".." in pure.parts or not full.is_relative_to(root.resolve()):
        problems.append(Problem(where, f"path '{rel}' escapes the dataset folder",
                                "keep images inside the dataset folder; remove '..' from paths"))
        return
    if not full.is_file():
        problems.append(Problem(where, f"image '{rel}' not found", "check the path or add the image"))
        return
    if not check_images:
        return
    try:
        with Image.open(full) as im:
            size, mode = im.size, im.mode
            im.verify()
    except Exception as exc:  # PIL raises many types for corrupt files
        problems.append(Problem(where, f"image '{rel}' is unreadable ({type(exc).__name__}: {exc})",
                                "re-export it as PNG or JPEG"))
        return
    if size != (PATCH_SIZE, PATCH_SIZE):
        problems.append(Problem(where, f"image '{rel}' is {size[0]}x{size[1]}, expected {PATCH_SIZE}x{PATCH_SIZE}",
                                "crop/resize patches to 224x224 (import-slide does this)"))
    if mode != "RGB":
        problems.append(Problem(where, f"image '{rel}' has mode {mode}, expected RGB",
                                "convert it to 3-channel RGB"))


def collect_problems(root: str | os.PathLike, check_images: bool = True) -> tuple[list[Problem], pd.DataFrame | None, pd.DataFrame | None]:
    """Run every check on a dataset folder; return (problems, train_df, test_df)."""
    root = Path(root)
    problems: list[Problem] = []
    if not root.is_dir():
        return [Problem(str(root), "dataset folder not found", "pass a folder containing train.csv")], None, None
    train = _check_table(root / "train.csv", "train.csv", problems, need_genes=True)
    test = None
    if (root / "test.csv").exists():
        test = _check_table(root / "test.csv", "test.csv", problems, need_genes=False)
    for df, name in ((train, "train.csv"), (test, "test.csv")):
        if df is None or PATH_COL not in df.columns:
            continue
        for r, rel in enumerate(df[PATH_COL].tolist()):
            _check_path(root, rel if isinstance(rel, str) else "", f"{root / name} row {r + 2}", problems, check_images)
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

    def image(self, key: str | int, split: str = "train") -> np.ndarray:
        """One image as a uint8 HxWx3 array (loaded lazily from disk)."""
        return load_image(self.image_path(key, split))

    def images(self, split: str = "train", indices=None, progress: bool = False) -> np.ndarray:
        """Stack of uint8 images (N, 224, 224, 3)."""
        df = self.train if split == "train" else self.test
        idx = range(len(df)) if indices is None else indices
        paths = [self.root / df[PATH_COL].iat[int(i)] for i in idx]
        return load_images(paths, progress=progress)

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
        raise MaiError(f"dataset {root} has {len(problems)} problem(s)", problems,
                       hint=f"run `python -m mai_core validate --data {root}` for the full list")
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
