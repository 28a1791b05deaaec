"""``python -m mai_core ensemble``: combine trained runs into an ensemble directory."""

from __future__ import annotations

import argparse

NAME = "ensemble"
OUTPUT = "ensemble directory"
HELP = "average several runs (equal or validation-PCC weights) into an ensemble directory"
DESCRIPTION = (
    "Members must predict the same genes. The ensemble directory (config.yaml kind: ensemble, genes.txt, "
    "status.json, val_predictions.parquet on the members' common validation IDs) is accepted by predict, "
    "evaluate and the app like a run directory."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, help="run directories")
    p.add_argument("--out", required=True, help="ensemble directory to write")
    p.add_argument("--weights", choices=("mean", "val"), default="mean",
                   help="mean: equal weights; val: proportional to each run's validation gene PCC")


def run(args) -> int:
    from mai_core.runs.ensemble import build_ensemble
    from mai_core.runs import read_config, read_status

    ens = build_ensemble(args.runs, args.out, weights=args.weights, force=args.force)
    cfg = read_config(ens)
    for m in cfg["members"]:
        pcc = m["val_gene_pcc"]
        print(f"  {m['path']}: weight {m['weight']:.3f}, val gene PCC {'-' if pcc is None else f'{pcc:.4f}'}")
    from mai_core.runs.contexthead import ensemble_context_note

    print("  " + ensemble_context_note(ens.path))
    pcc = read_status(ens).get("best_val_gene_pcc")
    print(f"wrote {ens.path}" + (f" (val gene PCC of the fine-tuned heads {pcc:.4f} on {cfg['val_common_ids']} "
                                 "common IDs)" if pcc is not None else ""))
    return 0
