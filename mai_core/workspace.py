"""Where derived artefacts live: one layout shared by the CLI, background jobs and pages.

    $MAI_WORKSPACE (default ./workspace)
      demo/                 the embedded demo dataset (generated on first use, deterministic)
      runs/<run_name>/      training runs and ensembles (layout: mai_core.runs)
      groupings/<name>.csv  gene groupings (mai_core.grouping)
      policies/<name>.yaml  augmentation policies (mai_core.augment)
      cache/                feature caches, UMAP embeddings, ... keyed by content fingerprints
      jobs/                 background job queue (mai_core.jobs)
      slides/<name>/        slide predictions: prediction.h5ad (+ status.json, log.txt of background jobs)
"""

from __future__ import annotations

import os
from pathlib import Path


def workspace_dir() -> Path:
    root = Path(os.environ.get("MAI_WORKSPACE", "workspace")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str) -> Path:
    p = workspace_dir() / name
    p.mkdir(parents=True, exist_ok=True)
    return p


def runs_dir() -> Path:
    return _sub("runs")


def groupings_dir() -> Path:
    return _sub("groupings")


def policies_dir() -> Path:
    return _sub("policies")


def cache_dir() -> Path:
    return _sub("cache")


def jobs_dir() -> Path:
    return _sub("jobs")


def demo_dir() -> Path:
    return workspace_dir() / "demo"
