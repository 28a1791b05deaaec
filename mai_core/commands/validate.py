"""python -m mai_core validate --data DIR"""

from __future__ import annotations

NAME = "validate"
HELP = "check a dataset folder (MAI CSV format) and report every problem"
DESCRIPTION = (
    "Checks train.csv/test.csv and every image: missing or unreadable images, wrong size or mode, "
    "non-numeric/NaN/inf gene values, duplicate IDs or gene names, paths escaping the folder, test "
    "columns inconsistent with train. Exits 0 when the dataset is clean, 2 otherwise."
)


def add_arguments(p) -> None:
    p.add_argument("--data", required=True, help="dataset folder containing train.csv")
    p.add_argument("--quick", action="store_true", help="skip decoding images (only check they exist)")


def run(args) -> int:
    from mai_core.data.dataset import collect_problems
    from mai_core.errors import MaiError
    from mai_core.io import shown_path

    problems, train, test = collect_problems(args.data, check_images=not args.quick)
    if problems:
        raise MaiError(f"dataset {shown_path(args.data)}: {len(problems)} problem(s) found", problems, hint=limit_hint(problems))
    n_genes = len([c for c in train.columns if c not in ("ID", "path")])
    print(f"ok: {args.data}: {len(train)} train samples, {0 if test is None else len(test)} test samples, "
          f"{n_genes} columns after ID/path")
    return 0


def limit_hint(problems) -> str:
    return "fix the problems above and run validate again" if len(problems) <= 50 else \
        f"showing the first 50 of {len(problems)} problems"
