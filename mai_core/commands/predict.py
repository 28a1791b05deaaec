"""``python -m mai_core predict``: predict expression for every row of an ID,path CSV."""

from __future__ import annotations

import argparse

NAME = "predict"
OUTPUT = "predictions CSV"
HELP = "predict gene expression for the images listed in a CSV (ID, path) with a run or ensemble"
DESCRIPTION = (
    "Reads CSV (columns ID, path; paths relative to the CSV's folder), predicts with RUN_DIR (a training "
    "run or an ensemble) and writes SUBMISSION.csv: ID + one column per trained gene, in genes.txt order."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run or ensemble directory")
    p.add_argument("--csv", required=True, help="CSV with ID and path columns")
    p.add_argument("--out", required=True, help="submission CSV to write (an existing file is only replaced when "
                   "it is an earlier prediction; --force replaces any file)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--tta", type=tta_views_arg, metavar="N",
                   help="test-time augmentation views: 1 = off .. 8 = all dihedral views (also on = 8, off = 1); "
                        "default: the run's setting")
    p.add_argument("--no-spatial-context", dest="spatial_context", action="store_false",
                   help="ignore the neighbouring spots (default, when the input has spot coordinates section/px/py: "
                        "the run's context head, or its neighbour-smoothing weight)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def tta_views_arg(text: str) -> int:
    """argparse type of ``--tta``: on/off or a number of views 1..8."""
    from mai_core.models.tta import parse_views

    try:
        return parse_views(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> int:
    from mai_core.io import check_replaceable, mark_output
    from mai_core.runs.predict import predict_csv

    check_replaceable(args.out, None, OUTPUT, force=args.force)
    out = predict_csv(args.run, args.csv, args.out, device=args.device, progress=not args.quiet, tta=args.tta,
                      spatial=args.spatial_context)
    mark_output(args.out, OUTPUT)
    print(f"wrote {args.out}: {len(out)} rows x {out.shape[1] - 1} genes; {out.attrs.get('spatial', '')}")
    return 0
