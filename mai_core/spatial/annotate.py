"""What goes next to predictions in a slide's AnnData: measured expression, pathologist labels, programmes.

- :func:`measured_expression`: a section's counts (legacy-ST table, 10x ``.h5``, or ``.h5ad``) normalised like
  the run's training data, for the run's genes, aligned to the predicted spots (NaN where a spot or gene
  has no measurement);
- :func:`read_labels`: a pathologist's annotation table (a spot id column or ``x``/``y`` or ``pixel_x``/
  ``pixel_y``, plus ``label``), matched to the spots by id, by rounded array position, or by the nearest
  centre, whichever matches most;
- :func:`programme_scores`: mean per-gene z-score of each gene programme (a GMT file, a grouping CSV, or
  the run's own grouping).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mai_core.errors import MaiError, Problem


def _counts(path: Path, ids):
    from mai_core.data.stfiles import read_counts

    if path.suffix.lower() == ".h5":
        from mai_core.data.visium import read_10x_counts

        return read_10x_counts(path)
    if path.suffix.lower() == ".h5ad":
        from mai_core.data.anndata_io import read_h5ad
        from mai_core.data.visium import counts_from_anndata

        return counts_from_anndata(read_h5ad(path), str(path))
    return read_counts(path, expected_spots=ids)


def measured_expression(counts_path, ids: list[str], genes: list[str], norm: str | None) -> tuple[np.ndarray, dict]:
    """(n×G float32, info) measured expression of ``genes`` at spots ``ids`` (NaN = not measured)."""
    from mai_core.data.importer import DEFAULT_NORM, normalize_counts
    from mai_core.data.stfiles import need_file

    path = need_file(counts_path, "counts", "pass the section's counts (legacy ST table, 10x .h5 or .h5ad)")
    c = _counts(path, ids)
    norm = norm or DEFAULT_NORM
    row = {s: i for i, s in enumerate(c.spots)}
    have = np.array([i in row for i in ids], dtype=bool)
    if not have.any():
        raise MaiError("the counts match none of the predicted spots", [Problem(
            str(path), f"spot ids e.g. {', '.join(c.spots[:3])}; predicted e.g. {', '.join(ids[:3])}",
            "pass the counts of this section (the spot file's ids must name the counts rows)")])
    col = {g: j for j, g in enumerate(c.genes)}
    values = normalize_counts(c.values[[row[i] for i, h in zip(ids, have) if h]], norm)
    out = np.full((len(ids), len(genes)), np.nan, dtype=np.float32)
    gi = [j for j, g in enumerate(genes) if g in col]
    if not gi:
        raise MaiError("the counts share no gene with the run", [Problem(
            str(path), f"genes e.g. {', '.join(c.genes[:3])}; the run predicts e.g. {', '.join(genes[:3])}",
            "pass counts with the genes the run was trained on (check symbols vs Ensembl ids)")])
    out[np.ix_(np.flatnonzero(have), gi)] = values[:, [col[genes[j]] for j in gi]]
    return out, {"counts": str(path.resolve()), "norm": norm, "spots_measured": int(have.sum()),
                 "genes_measured": len(gi), "genes_not_measured": [g for g in genes if g not in col][:20]}


def read_labels(path, ids: list[str], xy: np.ndarray, array_xy: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """(labels per spot, '' when unlabelled; info) from an annotation table."""
    from mai_core.data.stfiles import first_line, need_file, separator

    path = need_file(path, "labels table", "pass a table with a spot id (or x, y) column and a 'label' column")
    try:
        df = pd.read_csv(path, sep=separator(first_line(path)), dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MaiError("cannot parse the labels table", [Problem(str(path), str(exc), "save it as TSV/CSV")]) from None
    df.columns = [str(c).strip() for c in df.columns]
    if "label" not in df.columns:
        raise MaiError("the labels table has no 'label' column", [Problem(str(path), f"columns {list(df.columns)[:8]}",
                                                                         "add a column named label")])
    labels = df["label"].fillna("").astype(str).str.strip().to_numpy()
    candidates = []
    first = df.columns[0]
    index = {s: i for i, s in enumerate(ids)}
    candidates.append(("spot id", [index.get(str(v).strip()) for v in df[first]]))
    if {"x", "y"} <= set(df.columns):
        x = pd.to_numeric(df["x"], errors="coerce").round().astype("Int64")
        y = pd.to_numeric(df["y"], errors="coerce").round().astype("Int64")
        candidates.append(("rounded array position", [index.get(f"{a}x{b}") for a, b in zip(x, y)]))
    if {"pixel_x", "pixel_y"} <= set(df.columns) and len(xy) > 1:
        from scipy.spatial import cKDTree

        pts = np.c_[pd.to_numeric(df["pixel_x"], errors="coerce"), pd.to_numeric(df["pixel_y"], errors="coerce")]
        tree = cKDTree(xy)
        spacing = float(np.median(tree.query(xy, k=2)[0][:, 1]))
        ok = np.isfinite(pts).all(1)
        hits = [None] * len(pts)
        if ok.any():
            d, j = tree.query(pts[ok])
            for k, (dd, jj) in zip(np.flatnonzero(ok), zip(d, j)):
                hits[k] = int(jj) if dd <= spacing / 2 else None
        candidates.append(("nearest spot centre", hits))
    how, hits = max(candidates, key=lambda c: sum(h is not None for h in c[1]))
    out = np.array([""] * len(ids), dtype=object)
    for lab, h in zip(labels, hits):
        if h is not None:
            out[h] = lab
    n = int(sum(h is not None for h in hits))
    if n == 0:
        raise MaiError("the labels match none of the spots", [Problem(
            str(path), f"{len(df)} labelled rows, ids e.g. {', '.join(df[first].astype(str)[:3])}",
            "pass the labels of this section")])
    return out.astype(str), {"labels": str(path.resolve()), "matched_by": how, "labelled_spots": n,
                             "categories": sorted(set(out[out != ""]))}


def load_programmes(spec, genes: list[str], run_path=None) -> tuple[dict[str, list[str]], str] | None:
    """{programme: genes} from a GMT file or grouping CSV (``spec``), else the run's grouping (>1 group)."""
    from mai_core.genes.clusters import parse_gmt
    from mai_core.genes.grouping import load_grouping

    if spec:
        p = Path(spec).expanduser()
        if p.suffix.lower() == ".gmt":
            sets, source = parse_gmt(p), str(p)
        else:
            sets, source = load_grouping(p).members(), str(p)
    elif run_path is not None and (Path(run_path) / "grouping.csv").is_file():
        sets, source = load_grouping(Path(run_path) / "grouping.csv").members(), "the run's grouping"
        if len(sets) < 2:
            return None
    else:
        return None
    known = set(genes)
    sets = {str(k): [g for g in v if g in known] for k, v in sets.items()}
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise MaiError("no gene programme shares a gene with the run", [Problem(
            str(spec), "every programme lists only genes the run does not predict", "pass programmes of these genes")])
    return sets, source


def programme_scores(X: np.ndarray, genes: list[str], sets: dict[str, list[str]]) -> pd.DataFrame:
    """Mean per-gene z-score (over spots) of each programme's genes: spots × programmes."""
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(0)
    z = np.divide(X - X.mean(0), sd, out=np.zeros_like(X), where=sd > 1e-12)
    col = {g: j for j, g in enumerate(genes)}
    return pd.DataFrame({name: z[:, [col[g] for g in members]].mean(1) for name, members in sets.items()})
