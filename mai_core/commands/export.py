"""``python -m mai_core export``: a run's predictions on a dataset split as AnnData (.h5ad)."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "write a run's predictions on the val or test split as AnnData (.h5ad), with coordinates when known"
DESCRIPTION = (
    "val: the run's validation predictions (no model needed); test: the run predicts the test split. X = "
    "predicted, layers['measured'] = truth when known, obs = the dataset's metadata, obsm['spatial'] and "
    "uns['spatial'] per section for imported sections, var['val_pcc'] = each gene's validation PCC."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN", help="run or ensemble directory")
    p.add_argument("--split", choices=("val", "test"), default="val", help="which split (default val)")
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the one the run was trained on)")
    p.add_argument("--out", required=True, metavar="OUT.h5ad", help="output AnnData file (written atomically)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (test split)")
    p.add_argument("--no-thumbnails", action="store_true", help="do not embed section thumbnails")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from mai_core.spatial import export_split

    info = export_split(args.run, args.split, args.out, data=args.data, device=args.device,
                        progress=not args.quiet, thumbnails=not args.no_thumbnails)
    where = f", coordinates of {len(info['libraries'])} section(s)" if info["spatial"] else ""
    print(f"{info['out']}: {info['rows']} {info['split']} patches x {info['genes']} genes"
          f"{' with measured values' if info['measured'] else ''}{where}")
    return 0
