"""``python -m mai_core gradcam``: per-gene CAM overlays and raw maps for chosen images."""

from __future__ import annotations

import argparse

NAME = "gradcam"
OUTPUT = "Grad-CAM output"
HELP = "per-gene Grad-CAM: overlay PNGs, raw maps (.npy) and an index CSV for chosen images and genes"
DESCRIPTION = (
    "Explain a run's (or ensemble's) predicted expression of each chosen gene on each chosen image: "
    "writes OUT/overlays/<id>__<gene>__<method>.png, OUT/maps/<id>__<gene>__<method>.npy (float32 "
    "224x224 in [0, 1]) and OUT/index.csv (id, split, gene, method, layer, predicted, true, png, npy). "
    "All genes of an image share one forward pass. The output folder is replaced atomically."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mai_core.explain import COLORMAPS, METHODS

    p.add_argument("--run", required=True, help="run or ensemble directory (or a run name under workspace/runs)")
    p.add_argument("--data", required=True, help="dataset folder the images come from")
    p.add_argument("--ids", required=True, help="comma-separated image IDs")
    sel = p.add_argument_group("genes (at least one)")
    sel.add_argument("--genes", help="comma-separated gene names")
    sel.add_argument("--prefix", help="every gene whose name starts with this (e.g. LINC)")
    p.add_argument("--method", default="gradcam", choices=list(METHODS),
                   help="CAM method (default gradcam); eigencam is the same for every gene")
    p.add_argument("--layer", help="target layer by dotted name, e.g. blocks.11.norm1 (default: per backbone)")
    p.add_argument("--split", choices=("train", "test"), help="where to look for the IDs (default: train, then test)")
    p.add_argument("--out", required=True, help="output folder (an earlier Grad-CAM output there is replaced)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the heat map over the image (0..1)")
    p.add_argument("--cmap", default="jet", choices=list(COLORMAPS), help="colour map")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--cache", help="folder for a disk cache of maps (reused across calls)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def run(args) -> int:
    from mai_core.errors import MaiError, Problem
    from mai_core.explain import write_gradcam

    genes, ids = _split_list(args.genes), _split_list(args.ids)
    if not genes and not args.prefix:
        raise MaiError("no genes chosen", [Problem("--genes/--prefix", "neither given",
                                                   "pass --genes G1,G2 or --prefix LINC")])
    if not ids:
        raise MaiError("no image IDs given", [Problem("--ids", "empty", "pass --ids ID1,ID2")])
    index = write_gradcam(args.run, args.data, ids, genes=genes or None, prefix=args.prefix, method=args.method,
                          layer=args.layer, split=args.split, out=args.out, alpha=args.alpha, cmap=args.cmap,
                          device=args.device, disk_cache=args.cache, progress=not args.quiet,
                          force=args.force)
    print(f"wrote {args.out}: {len(index)} maps ({index['id'].nunique()} images x {index['gene'].nunique()} genes, "
          f"{args.method} at {index['layer'].iat[0]})")
    return 0
