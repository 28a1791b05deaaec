"""The seeded train/validation split of a dataset's training rows."""

from __future__ import annotations

import numpy as np

from mai_core.errors import MaiError, Problem


def make_split(ds, split_cfg: dict, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, validation indices, description) — seeded and reproducible."""
    n = ds.n_train
    sections = split_cfg.get("val_sections")
    if sections:
        if isinstance(sections, str):
            sections = [s.strip() for s in sections.split(",") if s.strip()]
        if "section" not in ds.train.columns:
            raise MaiError("--val-sections needs a 'section' column in train.csv",
                           [Problem(str(ds.root / "train.csv"), "no 'section' column",
                                    "import sections with import-slide (it adds one), or use --val-fraction")])
        sec = ds.train["section"].astype(str).to_numpy()
        known = sorted(set(sec))
        unknown = [s for s in sections if s not in known]
        if unknown:
            raise MaiError(f"validation section(s) {unknown} not in the data",
                           [Problem("--val-sections", f"known sections: {known}", "pick from the known sections")])
        val = np.flatnonzero(np.isin(sec, sections))
        train = np.flatnonzero(~np.isin(sec, sections))
        desc = f"sections {','.join(sections)} held out"
    elif split_cfg.get("folds"):
        k, i = int(split_cfg["folds"]), int(split_cfg["fold"])
        perm = np.random.default_rng(seed).permutation(n)
        chunks = np.array_split(perm, k)
        val = np.sort(chunks[i])
        train = np.sort(np.concatenate([c for j, c in enumerate(chunks) if j != i]))
        desc = f"fold {i} of {k}"
    else:
        f = float(split_cfg.get("val_fraction", 0.2))
        n_val = 0 if f <= 0 else max(2, int(round(f * n)))
        perm = np.random.default_rng(seed).permutation(n)
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        desc = f"random {f:.0%} validation"
    if len(train) < 2:
        raise MaiError(f"only {len(train)} training sample(s) left after the validation split",
                       hint="use a smaller --val-fraction or more data")
    return train, val, desc
