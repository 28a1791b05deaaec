"""``python -m mai_core import``: any spatial section (legacy ST, 10x Visium, HEST-1k, AnnData) → MAI dataset."""

from __future__ import annotations

import argparse

from mai_core.commands._argtypes import non_negative_float, positive_int

NAME = "import"
HELP = "import a spatial section of any format (legacy ST, 10x Visium outs/, HEST-1k, .h5ad) into an MAI dataset"
DESCRIPTION = (
    "Read a section, check that its counts match its spots (--min-match), cut a 224x224 patch around every "
    "spot under tissue from the full-resolution image (whole-slide files are read by regions), record the "
    "image's resolution (metadata, --mpp, or the spot grid) and write/append DIR/images/<section>/ and "
    "DIR/train.csv. --format auto recognises a Space Ranger outs/ folder, a HEST-1k download (st/, wsis/, "
    "metadata/) and an .h5ad; legacy ST needs --image, --spots and --counts."
)
FORMATS = ("auto", "st", "visium", "hest", "h5ad")
_NORMS = ("log1p_cp10k", "log1p", "raw", "cp10k")


def add_target_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``import`` and ``import-slide``: where to, normalisation, genes, checks, resolution."""
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
    p.add_argument("--min-match", type=non_negative_float, default=0.5, metavar="F",
                   help="refuse counts that match fewer than this fraction of the spots under tissue "
                        "(default 0.5; counts from another section match few spots)")
    p.add_argument("--mpp", type=non_negative_float, default=None, metavar="UM",
                   help="µm per pixel of the image (default: slide metadata, else estimated from the spot grid)")
    p.add_argument("--patch-mpp", type=non_negative_float, default=None, metavar="UM",
                   help="resample patches to this resolution (224 px = 224 x UM µm); default: the image's own")
    p.add_argument("--jpeg", action="store_true", help="save patches as JPEG (quality 95) instead of PNG")
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="largest JPEG/PNG (width x height) to decode; default 1e9 pixels (whole-slide files are "
                        "read by regions and need no limit)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="Space Ranger outs/ folder, HEST-1k folder or st/<ID>.h5ad, or an .h5ad (not for --format st)")
    p.add_argument("--format", choices=FORMATS, default="auto", help="input format (default: recognised from SOURCE)")
    p.add_argument("--section", metavar="NAME", help="section name (ID prefix); default: the HEST id, else required")
    p.add_argument("--image", metavar="IMAGE", help="full-resolution H&E (st, h5ad; Visium when not next to outs/)")
    p.add_argument("--spots", metavar="SPOTS.tsv", help="legacy ST: spot table x y pixel_x pixel_y selected")
    p.add_argument("--counts", metavar="COUNTS.tsv.gz", help="legacy ST: spot x gene raw counts")
    p.add_argument("--sample", metavar="ID", help="HEST: the sample id when the folder holds several")
    p.add_argument("--platform", choices=("st", "visium"), default=None,
                   help="h5ad: spot geometry used to estimate the resolution (default: guessed from obs)")
    add_target_options(p)


def detect_format(args) -> str:
    from pathlib import Path

    from mai_core.data.hest import hest_root
    from mai_core.data.visium import visium_outs
    from mai_core.errors import MaiError, Problem

    if args.format != "auto":
        return args.format
    if args.source is None:
        if args.spots or args.counts:
            return "st"
        raise MaiError("nothing to import", [Problem("SOURCE", "missing", "pass a Visium outs/ folder, a HEST folder, "
                                                                          "an .h5ad, or --image/--spots/--counts")])
    src = Path(args.source).expanduser()
    if not src.exists():
        raise MaiError("source not found", [Problem(str(src), "no such file or folder", "check the path")])
    if visium_outs(src):
        return "visium"
    if hest_root(src):
        return "hest"
    if src.is_file() and src.suffix == ".h5ad":
        return "h5ad"
    raise MaiError("unknown input format", [Problem(
        str(src), "not a Space Ranger outs/ folder, a HEST-1k folder or an .h5ad",
        "pass --format, or legacy ST files with --image/--spots/--counts")])


def _stager(fmt: str, args, max_pixels: int):
    from mai_core.data import sections
    from mai_core.errors import MaiError, Problem

    common = dict(min_counts=args.min_counts, min_match=args.min_match, mpp=args.mpp, max_pixels=max_pixels)
    if fmt in ("st", "visium", "h5ad") and not args.section:
        raise MaiError("--section is required", [Problem("--section", "missing", "name the section, e.g. S1")])
    if fmt == "st":
        missing = [f for f in ("image", "spots", "counts") if not getattr(args, f)]
        if missing:
            raise MaiError("legacy ST import needs three files", [Problem(
                ", ".join(f"--{m}" for m in missing), "missing", "pass --image, --spots and --counts")])
        return args.section, lambda: sections.stage_st(args.image, args.spots, args.counts, args.section,
                                                       progress=not args.quiet, **common)
    if fmt == "visium":
        from mai_core.data.visium import stage_visium

        return args.section, lambda: stage_visium(args.source, args.section, image=args.image, **common)
    if fmt == "hest":
        from mai_core.data.hest import hest_files, stage_hest

        name = args.section or hest_files(args.source, args.sample)["id"]
        return name, lambda: stage_hest(args.source, name, sample=args.sample, **common)
    from mai_core.data.anndata_io import stage_h5ad

    return args.section, lambda: stage_h5ad(args.source, args.section, image=args.image, platform=args.platform,
                                            **common)


def run(args) -> int:
    from mai_core.data.importer import format_summary, import_sections
    from mai_core.data.slideimage import DEFAULT_MAX_PIXELS

    fmt = detect_format(args)
    stager = _stager(fmt, args, args.max_pixels or DEFAULT_MAX_PIXELS)
    info = import_sections([stager], args.out, norm=args.norm, genes=args.genes, top_genes=args.top_genes,
                           all_genes=args.all_genes, image_format="jpeg" if args.jpeg else "png",
                           progress=not args.quiet, patch_mpp=args.patch_mpp)
    print(f"format: {fmt}")
    print(format_summary(info))
    return 0
