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


# The map the Gene Clusters page shows first; set-up precomputes it for the demo (warm_umap).
UMAP_DEFAULTS = {"n_pcs": 50, "n_neighbors": 15, "min_dist": 0.1, "seed": 0}
UMAP_STAGES = ("reducing gene profiles (PCA)", "loading UMAP (first use compiles its kernels)",
               "finding nearest neighbours and laying out the map")


def _umap_params(n_pcs, n_neighbors, min_dist, seed) -> dict:
    if not (isinstance(n_neighbors, (int, np.integer)) and n_neighbors >= 2):
        raise MaiError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}")
    if not 0.0 <= float(min_dist) <= 1.0:
        raise MaiError(f"min_dist must be between 0 and 1, got {min_dist!r}")
    return {"n_pcs": int(n_pcs), "n_neighbors": int(n_neighbors), "min_dist": float(min_dist),
            "seed": int(seed), "version": 1}


def cached_umap(fingerprint: str, n_genes: int, n_pcs: int = 50, n_neighbors: int = 15, min_dist: float = 0.1,
                seed: int = 0) -> np.ndarray | None:
    """The stored embedding for these data and parameters, or None when it has not been computed yet."""
    path = umap_cache_path(fingerprint, _umap_params(n_pcs, n_neighbors, min_dist, seed))
    if not path.is_file():
        return None
    try:
        emb = np.load(path)
    except (OSError, ValueError):
        return None  # unreadable cache entry: recomputed (and overwritten) by umap_embedding
    return emb if emb.ndim == 2 and emb.shape == (int(n_genes), 2) else None


def umap_embedding(X, n_pcs: int = 50, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0,
                   fingerprint: str | None = None, cache: bool = True,
                   profiles: GeneProfiles | None = None, progress=None) -> np.ndarray:
    """2-D UMAP embedding of genes (genes x 2, float32): standardised profiles -> PCA -> UMAP.

    Seeded and therefore deterministic. With ``cache`` the result is stored under
    ``cache_dir()/umap/<hash of fingerprint + parameters>.npy`` (written atomically) and later calls
    with the same data and parameters load it. ``fingerprint`` defaults to a hash of ``X``.
    ``progress(done, total, what)`` is called as each of the :data:`UMAP_STAGES` starts and at the end.
    """
    params = _umap_params(n_pcs, n_neighbors, min_dist, seed)
    report = progress if callable(progress) else (lambda done, total, what: None)
    total = len(UMAP_STAGES)
    path = None
    if cache:
        key = fingerprint or data_key(X)
        n_rows = profiles.coords.shape[0] if profiles is not None else np.shape(X)[1]
        emb = cached_umap(key, n_rows, **{k: params[k] for k in UMAP_DEFAULTS})
        if emb is not None:
            report(total, total, "done")
            return emb
        path = umap_cache_path(key, params)
    if profiles is None:
        report(0, total, UMAP_STAGES[0])
        profiles = gene_profiles(X, n_pcs=n_pcs, seed=seed)
    coords = profiles.coords
    n = coords.shape[0]
    if n < 4:
        emb = np.zeros((n, 2), np.float32)
        emb[:, 0] = np.arange(n)
    else:
        import warnings

        report(1, total, UMAP_STAGES[1])
        import umap

        report(2, total, UMAP_STAGES[2])
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
    report(total, total, "done")
    return emb


def warm_umap(data_dir) -> Path:
    """Compute and store the default gene map of a dataset (what the Gene Clusters page shows first).

    Used at set-up for the demo, so the page's first visit reads it instead of computing it.
    """
    from mai_core.data.dataset import load_dataset

    ds = load_dataset(data_dir, check_images=False)
    umap_embedding(ds.X, fingerprint=ds.fingerprint, **UMAP_DEFAULTS)
    return umap_cache_path(ds.fingerprint, _umap_params(**UMAP_DEFAULTS))


