"""``python -m mai_core predict-slide``: a trained run over a whole slide or spatial section → AnnData."""

from __future__ import annotations

import argparse

from mai_core.commands._argtypes import non_negative_float, positive_int

NAME = "predict-slide"
HELP = "predict expression over a whole slide or spatial section; write an AnnData (.h5ad) map"
DESCRIPTION = (
    "Stream tiles off the slide (OpenSlide formats, TIFF, JPEG, PNG; read by regions) through the run's "
    "predictor at the resolution the run was trained at, at the spots of --spots or on a grid over the "
    "tissue, and write an .h5ad with predictions (X), spot ids and pixel positions (obs, obsm['spatial']), "
    "a thumbnail (uns['spatial'], for scanpy.pl.spatial / squidpy), each gene's validation PCC (var), "
    "measured expression (--counts), pathologist labels (--labels) and gene-programme scores."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN", help="run or ensemble directory")
    p.add_argument("--image", required=True, metavar="SLIDE", help="whole-slide image or full-resolution H&E")
    p.add_argument("--spots", metavar="SPOTS",
                   help="positions: legacy-ST spot table, Visium tissue_positions.csv, or CSV id,px,py; "
                        "default: a grid over the tissue")
    p.add_argument("--grid-um", type=non_negative_float, metavar="UM",
                   help="grid step in µm without --spots (default: the run's spot pitch, else the tile size)")
    p.add_argument("--mpp", type=non_negative_float, metavar="UM",
                   help="µm per pixel of the slide (default: its metadata, else the spot grid)")
    p.add_argument("--run-mpp", type=non_negative_float, metavar="UM",
                   help="µm per pixel the run was trained at, for runs that do not record it")
    p.add_argument("--tta", type=positive_int, metavar="N", help="dihedral views to average (1 = off; default: the run's)")
    p.add_argument("--counts", metavar="COUNTS", help="measured counts of the section (ST table, 10x .h5, .h5ad)")
    p.add_argument("--labels", metavar="LABELS.tsv",
                   help="pathologist annotation (spot id or x/y or pixel_x/pixel_y, and label); default: "
                        "<section>_labels.tsv next to the spot file when present")
    p.add_argument("--programmes", metavar="GMT|CSV",
                   help="gene programmes to score (GMT or grouping CSV); default: the run's grouping")
    p.add_argument("--out", metavar="OUT.h5ad",
                   help="output AnnData file, written atomically (default: the workspace's "
                        "slides/<run>-<image>-<time>/prediction.h5ad, where the Slide viewer lists it)")
    p.add_argument("--library", metavar="NAME", help="library id in uns['spatial'] (default: the image's name)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="tiles per batch (default: the run's)")
    p.add_argument("--workers", type=positive_int, default=2, metavar="N", help="tile-reading threads (default 2)")
    p.add_argument("--max-pixels", type=positive_int, metavar="N",
                   help="largest JPEG/PNG to decode (default 1e9 pixels; whole-slide files need no limit)")
    p.add_argument("--no-spatial-context", dest="spatial_context", action="store_false",
                   help="ignore the neighbouring spots/tiles (default: the run's context head, or its "
                        "neighbour-smoothing weight, over the spot or tile grid)")
    p.add_argument("--status-dir", metavar="DIR", help=argparse.SUPPRESS)  # background jobs: progress to DIR/status.json
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from mai_core.spatial import PREDICTION_FILE, format_result, job_name, predict_slide, slides_dir

    if args.out is None:
        args.out = str(slides_dir() / job_name(args.run, args.image) / PREDICTION_FILE)
    tta = None if args.tta is None else (args.tta if args.tta > 1 else False)
    info = predict_slide(args.run, args.image, args.out, spots=args.spots, grid_um=args.grid_um, mpp=args.mpp,
                         run_mpp=args.run_mpp, tta=tta, device=args.device, batch_size=args.batch_size,
                         counts=args.counts, labels=args.labels, programmes=args.programmes, library=args.library,
                         max_pixels=args.max_pixels, workers=args.workers, progress=not args.quiet,
                         status_dir=args.status_dir, spatial=args.spatial_context)
    print(format_result(info))
    return 0
