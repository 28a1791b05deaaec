"""``python -m mai_core demo``: generate the synthetic demo dataset (offline, deterministic)."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "generate the synthetic H&E demo dataset with planted gene modules"
DESCRIPTION = (
    "Generate an MAI-format dataset of synthetic H&E-like tiles whose gene expression is planted from "
    "known tissue regions (tumour, immune, stroma, lumen, nuclear density). Writes train.csv, test.csv, "
    "images/, masks/, modules.gmt, activities.csv, test_truth.csv and truth.json. Same seed, same output."
)


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: new, empty or an earlier demo dataset (replaced atomically)")
    p.add_argument("--n-train", type=_count, metavar="N", default=600, help="training tiles (default 600)")
    p.add_argument("--n-test", type=_count, metavar="N", default=200, help="test tiles (default 200)")
    p.add_argument("--n-genes", type=_count, metavar="N", default=500, help="genes (default 500; at least 20)")
    p.add_argument("--seed", type=_count, metavar="S", default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=_count, metavar="N", default=1,
                   help="processes rendering tiles (default 1; output is the same for any value)")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing when OUT already holds a demo dataset from this generator version")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    import time
    from pathlib import Path

    from mai_core.data.demo import generate_demo, is_current_demo, summarize

    out = Path(args.out).expanduser()
    if args.if_missing and is_current_demo(out):
        print(f"demo dataset already present in {out}; nothing to do")
        return 0
    started = time.perf_counter()
    generate_demo(out, n_train=args.n_train, n_test=args.n_test, n_genes=args.n_genes, seed=args.seed,
                  progress=not args.quiet, workers=args.workers)
    print(summarize(out))
    print(f"  generated in {time.perf_counter() - started:.1f} s")
    return 0
