"""``python -m mai_core evaluate``: metrics of a run or ensemble on a labelled set."""

from __future__ import annotations

import argparse

from mai_core.commands.predict import tta_views_arg

NAME = "evaluate"
OUTPUT = "metrics JSON"
HELP = "evaluate a run or ensemble on a labelled split (gene-wise PCC, top-50, sample-wise PCC, MSE)"
DESCRIPTION = (
    "Predicts the chosen split of DIR and prints metrics. --split train: every row of train.csv; "
    "test: test.csv with expression taken from its gene columns or from test_truth.csv; val: the run's "
    "own validation predictions (val_predictions.parquet, no inference)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run or ensemble directory")
    p.add_argument("--data", help="dataset folder (not needed for --split val)")
    p.add_argument("--split", choices=("train", "test", "val"), default="test")
    p.add_argument("--out", help="write the metrics (with per-gene PCC) as JSON here (an existing file is only "
                   "replaced when it holds earlier metrics; --force replaces any file)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", type=tta_views_arg, metavar="N",
                   help="test-time augmentation views: 1 = off .. 8 = all dihedral views (also on = 8, off = 1); "
                        "default: the run's setting")
    p.add_argument("--no-spatial-context", dest="spatial_context", action="store_false",
                   help="ignore the neighbouring spots (default, when the input has spot coordinates section/px/py: "
                        "the run's context head, or its neighbour-smoothing weight)")
    p.add_argument("--quiet", action="store_true")


def format_table(metrics: dict) -> str:
    rows = [(k, v) for k, v in metrics.items() if not isinstance(v, dict)]
    width = max(len(k) for k, _ in rows)
    lines = []
    for k, v in rows:
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append(f"{k.ljust(width)}  {text}")
    return "\n".join(lines)


def run(args) -> int:
    from mai_core.io import check_replaceable, mark_output, write_json
    from mai_core.runs.predict import evaluate_run

    if args.out:
        check_replaceable(args.out, None, OUTPUT, force=args.force)

    metrics = evaluate_run(args.run, args.data, split=args.split, device=args.device,
                           progress=not args.quiet, tta=args.tta, spatial=args.spatial_context)
    print(format_table(metrics))
    if args.out:
        write_json(args.out, metrics)
        mark_output(args.out, OUTPUT)
        print(f"wrote {args.out}")
    return 0
