"""``python -m mai_core import-slide``: cut spot patches from an H&E section and write/append MAI format."""

from __future__ import annotations

import argparse

from mai_core.commands._argtypes import non_negative_float, positive_int

NAME = "import-slide"
HELP = "import a spatial-transcriptomics section (H&E image + spots + counts) into an MAI dataset folder"
DESCRIPTION = (
    "Cut a 224x224 patch centred on every spot under tissue, normalise its counts and write/append "
    "DIR/images/<section>/<spot>.png and DIR/train.csv (ID = <section>_<spot>). Several sections in one "
    "folder share the union of their genes (missing = 0); re-importing a section replaces its rows. "
    "Normalisation and gene selection apply to the whole folder and are remembered between imports."
)

_NORMS = ("log1p_cp10k", "log1p", "raw", "cp10k")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, metavar="H&E.jpg", help="full-resolution H&E image of the section")
    p.add_argument("--spots", required=True, metavar="SPOTS.tsv",
                   help="spot table with x, y, pixel_x, pixel_y[, selected] (tab- or comma-separated)")
    p.add_argument("--counts", required=True, metavar="COUNTS.tsv.gz",
                   help="spot x gene raw counts; first column the spot id '<x>x<y>'")
    p.add_argument("--section", required=True, metavar="NAME", help="section name (ID prefix, image sub-folder)")
    p.add_argument("--out", required=True, metavar="DIR", help="MAI dataset folder to create or append to")
    p.add_argument("--norm", choices=_NORMS, default=None,
                   help="log1p_cp10k = log1p(counts / spot total * 1e4) (default for a new folder), cp10k, "
                        "log1p(counts), raw; default: the folder's current setting")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--genes", metavar="FILE",
                     help="keep exactly these genes (one per line, in this order); genes no section measured "
                          "are kept as all-zero columns and reported")
    sel.add_argument("--top-genes", type=positive_int, metavar="N",
                     help="keep the N most variable genes after normalisation, over all sections in DIR")
    sel.add_argument("--all-genes", action="store_true", help="keep every gene (clears an earlier selection)")
    p.add_argument("--min-counts", type=non_negative_float, default=1, metavar="N",
                   help="skip spots with fewer total counts (default 1: drops empty spots)")
    p.add_argument("--jpeg", action="store_true", help="save patches as JPEG (quality 95) instead of PNG")
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="largest image (width x height) to decode; default 1e9 pixels")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from mai_core.data.importer import format_summary, import_slide
    from mai_core.data.slideimage import DEFAULT_MAX_PIXELS

    info = import_slide(
        args.image, args.spots, args.counts, args.section, args.out, norm=args.norm, genes=args.genes,
        top_genes=args.top_genes, all_genes=args.all_genes, min_counts=args.min_counts,
        image_format="jpeg" if args.jpeg else "png", max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        progress=not args.quiet,
    )
    print(format_summary(info))
    return 0
