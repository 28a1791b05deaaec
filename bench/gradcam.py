"""Grad-CAM benchmark: per-gene latency, shared-forward speed-up, faithfulness on the demo's planted regions.

    python bench/gradcam.py [--run RUN_DIR] [--data DEMO_DIR] [--genes 32] [--repeats 3] [--device cpu]

Without ``--run`` it generates a small demo dataset (120 train / 40 test tiles, 60 genes) and trains the
CPU baseline on it (ridge on pretrained EfficientNet-Lite0 features, ~1 min). Then, on that same run:

1. latency: one gene on one image (fresh caches), and G genes on one image through the shared path
   (one forward, one backward to the target layer per gene) vs the plain library called once per gene
   (forward + full backward every time): ms per gene and the speed-up ratio;
2. faithfulness: for each planted module, maps of its (positively driven) genes on the test tiles where
   the module's region is localised: energy ratio, inside/outside ratio, pointing-game hit rate vs chance;
3. map similarity of genes sharing a name prefix vs other pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mai_core import explain as E  # noqa: E402
from mai_core.cli import main as cli  # noqa: E402
from mai_core.data.dataset import load_dataset  # noqa: E402


def _interleaved(fns: dict, repeats: int) -> dict:
    """Run the variants in turn ``repeats`` times (so load changes hit all alike); best and median per variant."""
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (min(v), float(np.median(v))) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run directory (default: train the ridge baseline on a generated demo)")
    ap.add_argument("--data", help="demo dataset folder (default: generate one)")
    ap.add_argument("--genes", type=int, default=32, help="genes in the multi-gene timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="gradcam,gradcam++,layercam,hirescam")
    args = ap.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="gradcam_bench_"))
    data = Path(args.data) if args.data else work / "demo"
    if not args.data:
        from mai_core.data.demo import generate_demo

        generate_demo(data, n_train=120, n_test=40, n_genes=60, seed=0)
    run = Path(args.run) if args.run else work / "ridge"
    if not args.run:
        t = time.perf_counter()
        assert cli(["train", "--data", str(data), "--out", str(run), "--model", "ridge", "--workers", "1",
                    "--quiet", "--seed", "0", "--device", args.device]) == 0
        print(f"trained ridge on EfficientNet-Lite0 features in {time.perf_counter() - t:.0f} s")
    from mai_core.runs import RunDir

    cfg = RunDir(run).read_config()
    print(f"run {run}: backbone {cfg['model']['backbone']} ({cfg['model'].get('weights_info', {}).get('source')}), "
          f"torch threads {torch.get_num_threads()}, device {args.device}")
    ds = load_dataset(data)
    ex = E.CamExplainer.from_run(run, device=args.device)
    genes = ex.genes[: args.genes]
    image = ds.images("test", [0])
    print(f"target layer {ex.layer_name}; {len(genes)} genes; image {ds.test_ids[0]}")

    # ---- latency -------------------------------------------------------------------------------
    ex.explain(image, genes[:1])  # warm-up (allocator, library import)
    ex.library_cams(image, genes[0])

    def one_gene():
        ex.clear_cache()
        ex.explain(image, genes[:1])

    def shared():
        ex.clear_cache()
        ex.explain(image, genes)

    def library():
        for g in genes:
            ex.library_cams(image, g)

    res = _interleaved({"one": one_gene, "shared": shared, "library": library}, args.repeats)
    (t_one, m_one), (t_shared, m_shared), (t_lib, m_lib) = res["one"], res["shared"], res["library"]
    ex.clear_cache()
    r = ex.explain(image, genes)
    diff = max(float(np.abs(r.cams[:, k] - ex.library_cams(image, g)).max()) for k, g in enumerate(genes[:4]))
    print(f"\nlatency, fresh caches, best (median) of {args.repeats} interleaved repeats")
    print(f"  one gene, one image (forward + 1 backward):  {1000 * t_one:8.1f} ms ({1000 * m_one:.1f})"
          f"   goal < 1000 ms")
    print(f"  shared path, {len(genes)} genes on one image:      {1000 * t_shared / len(genes):8.1f} ms/gene "
          f"({1000 * m_shared / len(genes):.1f}); {1000 * t_shared:.0f} ms for all")
    print(f"  library once per gene, {len(genes)} genes:         {1000 * t_lib / len(genes):8.1f} ms/gene "
          f"({1000 * m_lib / len(genes):.1f}); {1000 * t_lib:.0f} ms for all")
    print(f"  speed-up shared / library:                   {t_lib / t_shared:8.1f} x ({m_lib / m_shared:.1f} x median)"
          f"; max |difference| of maps {diff:.1e}")

    # ---- faithfulness ------------------------------------------------------------------------------
    truth = json.loads((data / "truth.json").read_text())
    imgs = ds.images("test")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    print("\nfaithfulness on planted regions (test tiles with region area 3-60 %; chance = random point's hit rate)")
    print(f"  {'module':22s} {'method':10s} {'pairs':>5s} {'energy':>7s} {'in/out':>7s} {'hit':>5s} {'chance':>6s}")
    for m in truth["modules"]:
        module = m["name"]
        mgenes = [g for g, mm in truth["gene_module"].items()
                  if mm == module and truth["gene_gain"][g] > 0 and g in ex.genes][:4]
        if not mgenes:
            continue
        masks = E.load_masks(data, ds.test_ids, module)
        area = masks.mean(axis=(1, 2))
        keep = np.flatnonzero((area > 0.03) & (area < 0.6))
        if not len(keep):
            continue
        for method in methods:
            res = ex.explain(imgs[keep], mgenes, method=method)
            f = E.faithfulness(res.cams, masks[keep])
            print(f"  {module:22s} {method:10s} {f['n']:5d} {f['energy_ratio']:7.2f} {f['inside_outside']:7.2f} "
                  f"{f['hit_rate']:5.2f} {f['chance_hit_rate']:6.2f}")

    # ---- prefix similarity -------------------------------------------------------------------------
    fams: dict[str, list[str]] = {}
    for g in ex.genes:
        fams.setdefault(E.gene_family(g), []).append(g)
    multi = [g for f, gs in sorted(fams.items(), key=lambda kv: -len(kv[1])) if len(gs) > 1 for g in gs[:4]][:16]
    res = ex.explain(imgs[:12], multi)
    sim = E.cam_similarity(res.cams, multi)
    s = E.prefix_similarity(sim)
    print(f"\nmap similarity over 12 test tiles, {len(multi)} genes in {len(s['groups'])} name families: "
          f"same prefix {s['within']:.3f} ({s['n_within_pairs']} pairs) vs different {s['between']:.3f} "
          f"({s['n_between_pairs']} pairs), difference {s['difference']:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
