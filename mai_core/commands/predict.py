"""``python -m mai_core predict``: predict expression for every row of an ID,path CSV."""

from __future__ import annotations

import argparse

NAME = "predict"
HELP = "predict gene expression for the images listed in a CSV (ID, path) with a run or ensemble"
DESCRIPTION = (
    "Reads CSV (columns ID, path; paths relative to the CSV's folder), predicts with RUN_DIR (a training "
    "run or an ensemble) and writes SUBMISSION.csv: ID + one column per trained gene, in genes.txt order."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run or ensemble directory")
    p.add_argument("--csv", required=True, help="CSV with ID and path columns")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--tta", choices=("on", "off"), help="override the run's test-time augmentation setting")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from mai_core.runs.predict import predict_csv

    tta = None if args.tta is None else args.tta == "on"
    out = predict_csv(args.run, args.csv, args.out, device=args.device, progress=not args.quiet, tta=tta)
    print(f"wrote {args.out}: {len(out)} rows x {out.shape[1] - 1} genes")
    return 0
