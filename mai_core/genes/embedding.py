"""UMAP map of genes (seeded), cached on disk by data fingerprint and parameters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mai_core.errors import MaiError
from mai_core.genes.clusters import GeneProfiles, gene_profiles


# --------------------------------------------------------------------------------------------
# UMAP embedding of genes (cached on disk)
# --------------------------------------------------------------------------------------------

def _umap_key(data_key: str, params: dict) -> str:
    h = hashlib.sha1(data_key.encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:20]


def data_key(X) -> str:
    """Content hash of an expression matrix (used when no dataset fingerprint is given)."""
    X = np.ascontiguousarray(X)
    h = hashlib.sha1(f"{X.shape}{X.dtype}".encode())
    h.update(memoryview(X).cast("B"))
    return h.hexdigest()[:16]


def umap_cache_path(fingerprint: str, params: dict) -> Path:
    from mai_core.workspace import cache_dir

    return cache_dir() / "umap" / f"{_umap_key(fingerprint, params)}.npy"


def umap_embedding(X, n_pcs: int = 50, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0,
                   fingerprint: str | None = None, cache: bool = True,
                   profiles: GeneProfiles | None = None) -> np.ndarray:
    """2-D UMAP embedding of genes (genes x 2, float32): standardised profiles -> PCA -> UMAP.

    Seeded and therefore deterministic. With ``cache`` the result is stored under
    ``cache_dir()/umap/<hash of fingerprint + parameters>.npy`` (written atomically) and later calls
    with the same data and parameters load it. ``fingerprint`` defaults to a hash of ``X``.
    """
    if not (isinstance(n_neighbors, (int, np.integer)) and n_neighbors >= 2):
        raise MaiError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}")
    if not 0.0 <= float(min_dist) <= 1.0:
        raise MaiError(f"min_dist must be between 0 and 1, got {min_dist!r}")
    params = {"n_pcs": int(n_pcs), "n_neighbors": int(n_neighbors), "min_dist": float(min_dist),
              "seed": int(seed), "version": 1}
    path = None
    if cache:
        key = fingerprint or data_key(X)
        path = umap_cache_path(key, params)
        if path.is_file():
            try:
                emb = np.load(path)
                if emb.ndim == 2 and emb.shape[1] == 2 and (profiles is None or len(emb) == profiles.coords.shape[0]):
                    return emb
            except (OSError, ValueError):
                pass  # unreadable cache entry: recompute and overwrite
    if profiles is None:
        profiles = gene_profiles(X, n_pcs=n_pcs, seed=seed)
    coords = profiles.coords
    n = coords.shape[0]
    if n < 4:
        emb = np.zeros((n, 2), np.float32)
        emb[:, 0] = np.arange(n)
    else:
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" etc.
            reducer = umap.UMAP(n_components=2, n_neighbors=min(int(n_neighbors), n - 1),
                                min_dist=float(min_dist), random_state=int(seed), init="spectral",
                                n_jobs=1)
            emb = reducer.fit_transform(coords).astype(np.float32)
    if path is not None:
        from mai_core.io import atomic_path

        with atomic_path(path, suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, emb)
    return emb


