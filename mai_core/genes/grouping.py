"""Gene grouping artefact: genes -> group id, with the method and parameters that made it.

On disk a CSV with columns ``gene, group, method, params`` (``params`` is JSON, same on every row).
Produced by ``python -m mai_core genes`` / the Gene Clusters page; consumed by training for
cluster-wise heads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mai_core.errors import MaiError, Problem
from mai_core.io import write_csv


@dataclass
class Grouping:
    genes: list[str]
    groups: list[str]  # group label per gene (string ids, e.g. "0", "LINC", "HALLMARK_HYPOXIA")
    method: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.genes) != len(self.groups):
            raise ValueError("genes and groups differ in length")
        self.groups = [str(g) for g in self.groups]

    @property
    def group_names(self) -> list[str]:
        """Group labels in order of first appearance."""
        return list(dict.fromkeys(self.groups))

    def members(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {g: [] for g in self.group_names}
        for gene, grp in zip(self.genes, self.groups):
            out[grp].append(gene)
        return out

    def indices_for(self, genes: list[str]) -> dict[str, list[int]]:
        """Column indices (into ``genes``) of each group; genes absent from the grouping go to 'ungrouped'."""
        lookup = dict(zip(self.genes, self.groups))
        out: dict[str, list[int]] = {}
        for i, g in enumerate(genes):
            out.setdefault(lookup.get(g, "ungrouped"), []).append(i)
        return out

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"gene": self.genes, "group": self.groups, "method": self.method,
                             "params": json.dumps(self.params, sort_keys=True)})

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        write_csv(path, self.to_frame())
        return path


def load_grouping(path: str | os.PathLike) -> Grouping:
    path = Path(path)
    if not path.is_file():
        raise MaiError(f"grouping file {path} not found",
                       hint="create one with `python -m mai_core genes --data DIR --method kmeans --out FILE`")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas/OS raise many types; the message names the file, never its text
        raise MaiError(f"grouping file {path} is not a readable CSV ({type(exc).__name__})",
                       hint="a grouping is a CSV with columns gene, group[, method, params]") from None
    missing = [c for c in ("gene", "group") if c not in df.columns]
    if missing:
        raise MaiError(f"grouping file {path} lacks column(s) {missing}",
                       [Problem(str(path), f"{len(df.columns)} column(s), none named {' or '.join(missing)}",
                                "expected gene, group[, method, params]")])
    dups = df["gene"][df["gene"].duplicated()].tolist()
    if dups:
        raise MaiError(f"grouping file {path} lists genes more than once: {dups[:5]}",
                       hint="each gene must belong to exactly one group")
    method = df["method"].iat[0] if "method" in df.columns and len(df) else "custom"
    params = {}
    if "params" in df.columns and len(df) and df["params"].iat[0]:
        try:
            params = json.loads(df["params"].iat[0])
        except json.JSONDecodeError:
            params = {}
    return Grouping(df["gene"].tolist(), df["group"].tolist(), method, params)
