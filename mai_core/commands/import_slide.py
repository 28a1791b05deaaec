"""``python -m mai_core import-slide``: cut spot patches from an H&E section and write/append MAI format."""

from __future__ import annotations

import argparse

from mai_core.commands.import_data import add_target_options

NAME = "import-slide"
HELP = "import a spatial-transcriptomics section (H&E image + spots + counts) into an MAI dataset folder"
DESCRIPTION = (
    "Cut a 224x224 patch centred on every spot under tissue, normalise its counts and write/append "
    "DIR/images/<section>/<spot>.png and DIR/train.csv (ID = <section>_<spot>). Several sections in one "
    "folder share the union of their genes (missing = 0); re-importing a section replaces its rows. "
    "Normalisation and gene selection apply to the whole folder and are remembered between imports. "
    "The image's resolution (metadata, --mpp, or estimated from the spot grid) is recorded per section. "
    "For Visium, HEST-1k and AnnData sections use `import`."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, metavar="H&E.jpg", help="full-resolution H&E image of the section")
    p.add_argument("--spots", required=True, metavar="SPOTS.tsv",
                   help="spot table with x, y, pixel_x, pixel_y[, selected] (tab- or comma-separated)")
    p.add_argument("--counts", required=True, metavar="COUNTS.tsv.gz",
                   help="spot x gene raw counts; first column the spot id '<x>x<y>'")
    p.add_argument("--section", required=True, metavar="NAME", help="section name (ID prefix, image sub-folder)")
    add_target_options(p)


def run(args) -> int:
    from mai_core.data.importer import format_summary, import_slide
    from mai_core.data.slideimage import DEFAULT_MAX_PIXELS

    info = import_slide(
        args.image, args.spots, args.counts, args.section, args.out, norm=args.norm, genes=args.genes,
        top_genes=args.top_genes, all_genes=args.all_genes, min_counts=args.min_counts,
        image_format="jpeg" if args.jpeg else "png", max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        progress=not args.quiet, min_match=args.min_match, mpp=args.mpp, patch_mpp=args.patch_mpp,
    )
    print(format_summary(info))
    return 0
