"""What the expression numbers of a dataset are: its unit, and the truth of a split where one exists.

The unit comes from, in order: a ``units.json`` declared in the dataset folder (``{"expression":
"log1p(TPM)", "description": "..."}``), the normalisation recorded by ``import-slide`` in
``slides/manifest.json``, the demo generator's ``truth.json``, else "unit not declared" (honest, with
how to declare it). Pages put the short label on axes, table headers and captions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# labels of the normalisations `import-slide --norm` writes (mai_core.data.importer.NORMS)
NORM_UNITS = {
    "log1p_cp10k": ("log1p(counts per 10k)",
                    "natural log of 1 + counts divided by the spot's total and multiplied by 10,000"),
    "cp10k": ("counts per 10k", "counts divided by the spot's total and multiplied by 10,000"),
    "log1p": ("log1p(counts)", "natural log of 1 + raw counts"),
    "raw": ("counts", "raw UMI counts"),
}
DEMO_UNIT = ("log1p(size-normalised counts)",
             "synthetic: natural log of 1 + counts divided by a per-tile sequencing-depth factor")
UNDECLARED = ("expression (unit not declared)",
              "the dataset does not say; add units.json to the dataset folder, e.g. "
              '{"expression": "log1p(counts per 10k)"}')


@dataclass(frozen=True)
class ExpressionUnit:
    """``label``: short, for axes and headers; ``description``: one sentence; ``source``: where it was read."""

    label: str
    description: str
    source: str

    @property
    def declared(self) -> bool:
        return self.source != "undeclared"

    def axis(self, what: str = "expression") -> str:
        """An axis title such as ``expression, log1p(counts per 10k)``."""
        return f"{what}, {self.label}" if self.declared else f"{what} (unit not declared)"


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def expression_unit(root) -> ExpressionUnit:
    """The unit of the expression values in dataset folder ``root`` (never raises)."""
    root = Path(root)
    declared = _read_json(root / "units.json")
    if declared and isinstance(declared.get("expression"), str) and declared["expression"].strip():
        return ExpressionUnit(declared["expression"].strip()[:80],
                              str(declared.get("description") or "declared in units.json")[:300], "units.json")
    manifest = _read_json(root / "slides" / "manifest.json")
    if manifest is not None:
        norm = manifest.get("norm", "log1p_cp10k")
        if norm in NORM_UNITS:
            label, text = NORM_UNITS[norm]
            return ExpressionUnit(label, text, "import-slide")
    truth = _read_json(root / "truth.json")
    if truth is not None and truth.get("generator") == "mai_core.demo":
        return ExpressionUnit(*DEMO_UNIT, "demo")
    return ExpressionUnit(*UNDECLARED, "undeclared")


def split_truth(ds, split: str):
    """Known expression of a split as a frame indexed by ID with the dataset's gene columns, or None.

    ``train`` always has it; ``test`` has it when test.csv carries the gene columns or the folder holds
    a ``test_truth.csv`` (ID + genes, as the demo writes). A truth file missing genes or IDs gives None.
    """
    import pandas as pd

    if split == "train":
        return pd.DataFrame(ds.X, index=pd.Index(ds.ids, name="ID"), columns=ds.genes)
    if split != "test" or ds.test is None or not ds.n_test:
        return None
    if all(g in ds.test.columns for g in ds.genes):
        frame = ds.test.set_index("ID")[ds.genes]
    else:
        path = Path(ds.root) / "test_truth.csv"
        if not path.is_file():
            return None
        try:
            frame = pd.read_csv(path, dtype={"ID": str}).set_index("ID")
        except (OSError, ValueError, KeyError):
            return None
        if any(g not in frame.columns for g in ds.genes):
            return None
        frame = frame[ds.genes]
    frame.index = frame.index.astype(str)
    if not set(ds.test_ids) <= set(frame.index):
        return None
    return frame.loc[ds.test_ids].astype(np.float32)
