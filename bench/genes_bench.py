"""Gene-structure speed and payload figures on a contest-size matrix (6,992 samples x 3,467 genes).

    .venv/bin/python bench/genes_bench.py [--samples 6992] [--genes 3467] [--skip-umap]

The matrix is synthesised here (rendering 7,000 demo tiles would dominate the run): log1p of
Poisson counts whose log rates follow 12 independent modules of 40-150 genes plus gene-specific
noise, with a spread of base expression levels and some all-zero genes. Every speed figure is a ratio
against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def synth(n: int, g: int, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    n_mod = 12
    sizes = rng.integers(40, 150, n_mod)
    module = np.full(g, -1)
    start = 0
    for m, s in enumerate(sizes):
        module[start:start + s] = m
        start += s
    rng.shuffle(module)
    factors = rng.normal(size=(n, n_mod)).astype(np.float32)
    base = rng.uniform(-3, 3, g).astype(np.float32)
    gain = rng.uniform(0.3, 1.0, g).astype(np.float32)
    log_rate = np.broadcast_to(base, (n, g)).copy()
    has = module >= 0
    log_rate[:, has] += factors[:, module[has]] * gain[has]
    log_rate += rng.normal(0, 0.3, (n, g)).astype(np.float32)
    X = np.log1p(rng.poisson(np.exp(log_rate)).astype(np.float32))
    X[:, :5] = 0.0  # a few genes never detected
    genes = [f"G{i:05d}" for i in range(g)]
    return np.ascontiguousarray(X, dtype=np.float32), genes, module


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6992)
    ap.add_argument("--genes", type=int, default=3467)
    ap.add_argument("--skip-umap", action="store_true")
    args = ap.parse_args()
    os.environ["MAI_WORKSPACE"] = tempfile.mkdtemp(prefix="genes_bench_ws_")

    import plotly.graph_objects as go

    from mai_core import genes as G

    t0 = time.perf_counter()
    X, genes, module = synth(args.samples, args.genes)
    print(f"matrix {X.shape[0]:,} x {X.shape[1]:,} float32 ({X.nbytes / 2**20:.0f} MiB), "
          f"synthesised in {time.perf_counter() - t0:.1f} s; cores: {os.cpu_count()}")

    # correlation -----------------------------------------------------------------------------
    t_ours, C = timed(lambda: G.correlation(X, constant="zero"), repeat=3)

    def baseline():
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.corrcoef(X.astype(np.float64), rowvar=False)

    t_base, R = timed(baseline, repeat=1)
    ok = np.isfinite(R)
    err = float(np.abs(C[ok] - R[ok]).max())
    del R
    print(f"\nPearson correlation: {t_ours:.2f} s (float32 SYRK, best of 3) vs np.corrcoef float64 "
          f"{t_base:.2f} s -> {t_base / t_ours:.1f}x faster; max |diff| {err:.1e}; goal < 1 s: "
          f"{'met' if t_ours < 1 else 'NOT met'}")
    t_sp, _ = timed(lambda: G.correlation(X, method="spearman", constant="zero"))
    print(f"Spearman correlation (rank + same): {t_sp:.2f} s")

    # page overview + heatmap payload ---------------------------------------------------------------
    t_link, link = timed(lambda: G.correlation_linkage(C))
    t_fit, _ = timed(lambda: G.scale_free_fit(C))
    t_ov, ov = timed(lambda: G.correlation_overview(X, genes, max_cells=200))
    print(f"average-linkage ordering {t_link:.2f} s; scale-free fit over beta 1..20 {t_fit:.2f} s "
          f"(chosen beta {ov.beta}); whole correlation page computation {t_ov:.2f} s")

    block = go.Figure(go.Heatmap(z=np.round(ov.block, 3), x=ov.block_labels, y=ov.block_labels,
                                 colorscale="RdBu_r", zmin=-1, zmax=1))
    t_js, js = timed(lambda: block.to_json())
    order = ov.order
    full = go.Figure(go.Heatmap(z=np.round(C[np.ix_(order, order)], 3), x=[genes[i] for i in order],
                                y=[genes[i] for i in order], colorscale="RdBu_r", zmin=-1, zmax=1))
    t_fjs, full_js = timed(lambda: full.to_json())
    print(f"heatmap payload: {len(js) / 2**20:.2f} MiB block-averaged {ov.block.shape[0]}x{ov.block.shape[1]} "
          f"(serialised in {t_js * 1000:.0f} ms) vs {len(full_js) / 2**20:.1f} MiB at full resolution "
          f"({t_fjs:.1f} s) -> {len(full_js) / len(js):.0f}x smaller; goal <= 5 MB: "
          f"{'met' if len(js) <= 5e6 else 'NOT met'}")
    del full, full_js

    # k-means -----------------------------------------------------------------------------------
    t_pca, prof = timed(lambda: G.gene_profiles(X, n_pcs=50, seed=0))
    t_km, gr = timed(lambda: G.kmeans_genes(None, genes, k=12, seed=0, profiles=prof), repeat=2)

    def km_full():
        from sklearn.cluster import KMeans

        Z, _ = G.standardize(X)
        return KMeans(n_clusters=12, n_init=4, random_state=0).fit_predict(np.ascontiguousarray(Z.T))

    t_kfull, full_labels = timed(km_full)
    inm = module >= 0  # ARI vs the planted modules, over module genes
    ari_pca = G.adjusted_rand(np.asarray(gr.groups)[inm], module[inm])
    ari_full = G.adjusted_rand(full_labels[inm], module[inm])
    print(f"\nk-means K=12 (n_init 4) on 50 PCA components: {t_km:.2f} s (+ {t_pca:.2f} s PCA, computed once "
          f"per dataset) vs on the full {X.shape[0]:,}-dim profiles {t_kfull:.2f} s -> "
          f"{t_kfull / t_km:.1f}x faster ({t_kfull / (t_km + t_pca):.1f}x including PCA); ARI vs planted "
          f"modules {ari_pca:.3f} (PCA) / {ari_full:.3f} (full); goal < 2 s: {'met' if t_km < 2 else 'NOT met'}")
    t_scan, _ = timed(lambda: G.kmeans_scan(prof, range(2, 21)))
    print(f"k-means scan K=2..20 with silhouette: {t_scan:.2f} s")

    # UMAP ----------------------------------------------------------------------------------------
    if not args.skip_umap:
        t_first, emb = timed(lambda: G.umap_embedding(X, fingerprint="bench", profiles=prof))
        t_cached, emb2 = timed(lambda: G.umap_embedding(X, fingerprint="bench", profiles=prof), repeat=3)
        assert np.array_equal(emb, emb2)
        print(f"\nUMAP of {len(genes):,} genes: first call {t_first:.1f} s (includes numba compilation) vs "
              f"cached call {t_cached * 1000:.1f} ms (disk cache) -> {t_first / t_cached:,.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
