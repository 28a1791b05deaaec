"""``python -m mai_core genes``: cluster a dataset's genes and write the grouping CSV."""

from __future__ import annotations

import argparse
import sys

NAME = "genes"
HELP = "cluster genes (k-means / name prefix / gene sets / co-expression modules) into a grouping CSV"
DESCRIPTION = (
    "Group the genes of a dataset and write a grouping file (gene, group, method, params) for "
    "cluster-wise training heads. Methods: kmeans (k-means on standardised expression profiles, "
    "--k clusters), prefix (leading letters of the gene name, e.g. RPL13 -> RPL; prefixes with fewer "
    "than --min-size genes pooled into 'other'), geneset (membership in a GMT file, --gmt; a gene in "
    "several sets goes to the smallest), wgcna (soft-threshold co-expression modules on the most "
    "variable genes, at most --k modules)."
)
METHODS = ("kmeans", "prefix", "geneset", "wgcna")
_DEFAULT_MIN_SIZE = {"kmeans": 1, "prefix": 5, "geneset": 1, "wgcna": 10}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (contains train.csv)")
    p.add_argument("--method", required=True, metavar="METHOD",
                   help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--k", type=int, default=None,
                   help="number of clusters for kmeans (default 5) / most modules for wgcna (default 8)")
    p.add_argument("--gmt", default=None, help="gene-set file (GMT) for --method geneset")
    p.add_argument("--min-size", type=int, default=None,
                   help="smallest group kept; smaller groups go to 'other'/'unassigned' "
                        "(defaults: prefix 5, wgcna 10, otherwise 1)")
    p.add_argument("--pattern", default=None,
                   help="prefix rule for --method prefix: a regular expression whose first group is the "
                        r"prefix (default ^([A-Za-z]+)[0-9.\-])")
    p.add_argument("--seed", type=int, default=0, help="random seed (kmeans)")
    p.add_argument("--top-n", type=int, default=1000, help="wgcna: number of most variable genes used")
    p.add_argument("--out", required=True, help="grouping CSV to write (atomically)")


def _fail(message: str, where: str, what: str, fix: str):
    from mai_core.errors import MaiError, Problem

    return MaiError(message, [Problem(where, what, fix)])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mai_core import genes as G
    from mai_core.data.dataset import load_dataset
    from mai_core.device import cap_native_pools

    cap_native_pools()  # as many BLAS/OpenMP threads as there are idle cores
    method = str(args.method).strip().lower()
    if method not in METHODS:
        raise _fail(f"unknown gene clustering method '{args.method}'", "--method", f"got '{args.method}'",
                    f"use one of: {', '.join(METHODS)}")
    if method == "geneset" and not args.gmt:
        raise _fail("--method geneset needs a gene-set file", "--gmt", "missing",
                    "pass --gmt FILE (GMT format: set name, description, genes, tab-separated)")
    if args.gmt and method != "geneset":
        print(f"note: --gmt is ignored by --method {method}", file=sys.stderr)
    if args.k is not None and method not in ("kmeans", "wgcna"):
        print(f"note: --k is ignored by --method {method}", file=sys.stderr)
    if args.pattern is not None and method != "prefix":
        print(f"note: --pattern is ignored by --method {method}", file=sys.stderr)
    min_size = _DEFAULT_MIN_SIZE[method] if args.min_size is None else args.min_size
    if min_size < 1:
        raise _fail("invalid --min-size", "--min-size", f"got {min_size}", "use an integer >= 1")
    if args.top_n < 2:
        raise _fail("invalid --top-n", "--top-n", f"got {args.top_n}", "use an integer >= 2")
    out = Path(args.out)
    if out.is_dir():
        raise _fail("--out is a folder", "--out", f"{out} is a directory", "give a file name such as groupings/kmeans5.csv")
    sets = G.parse_gmt(args.gmt) if method == "geneset" else None  # check the GMT before loading data

    ds = load_dataset(args.data, check_images=False)
    genes = ds.genes
    if method == "kmeans":
        k = 5 if args.k is None else args.k
        G.check_k(k, len(genes))
        grouping = G.kmeans_genes(ds.X, genes, k=k, seed=args.seed)
        if min_size > 1:
            grouping = _pool_small(grouping, min_size, G.UNASSIGNED)
    elif method == "prefix":
        grouping = G.prefix_groups(genes, pattern=args.pattern or G.DEFAULT_PREFIX_PATTERN, min_size=min_size)
    elif method == "geneset":
        grouping = G.geneset_groups(genes, sets, min_size=min_size, source=args.gmt)
    else:
        n_modules = 8 if args.k is None else args.k
        if n_modules < 1:
            raise _fail("invalid --k", "--k", f"got {n_modules}", "use an integer >= 1")
        grouping = G.tom_modules(ds.X, genes, top_n=args.top_n, n_modules=n_modules, min_size=min_size)
    grouping.params["data"] = str(Path(args.data).resolve())
    grouping.save(out)
    sizes = G.group_sizes(grouping)
    print(f"{len(genes)} genes -> {len(sizes)} groups ({grouping.method}); wrote {out}")
    width = max(5, *(len(str(g)) for g in sizes["group"]))
    for row in sizes.itertuples(index=False):
        print(f"  {str(row.group):<{width}}  {row.genes:>6}  {row.examples}")
    return 0


def _pool_small(grouping, min_size: int, label: str):
    from mai_core.genes.grouping import Grouping

    members = grouping.members()
    groups = [g if len(members[g]) >= min_size else label for g in grouping.groups]
    return Grouping(grouping.genes, groups, grouping.method, {**grouping.params, "min_size": min_size})
