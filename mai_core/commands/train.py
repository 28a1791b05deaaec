"""``python -m mai_core train``: train a model (fine-tune, frozen-feature heads or ridge) into a run dir."""

from __future__ import annotations

import argparse
import sys

NAME = "train"
OUTPUT = "training run"
HELP = "train an expression model on a dataset's train.csv and write a run directory"
DESCRIPTION = (
    "Train on DIR/train.csv with a seeded validation split and write RUN_DIR (config.yaml, genes.txt, "
    "grouping.csv, metrics.jsonl, status.json, checkpoints/, val_predictions.parquet, log.txt). "
    "Settings: recipe defaults (CPU or GPU) < --config YAML < flags. SIGTERM/Ctrl-C stops after the "
    "current step with a checkpoint; --resume continues. Multi-GPU: torchrun --nproc-per-node N -m mai_core train ..."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=False, help="dataset folder with train.csv (not needed with --resume)")
    p.add_argument("--out", required=True, help="run directory to write (new or empty, or a run that never "
                   "got past its start; --force starts over in any folder)")
    p.add_argument("--config", help="YAML file with settings (same layout as a run's config.yaml)")
    p.add_argument("--model", choices=("finetune", "frozen", "ridge"),
                   help="finetune: train the backbone (partially) and heads; frozen: heads on cached "
                        "embeddings (fast on CPU); ridge: ridge regression on embeddings (baseline)")
    p.add_argument("--backbone", help="backbone name (python -m mai_core backbones lists them)")
    p.add_argument("--weights", help="backbone weights: auto | pretrained | random | path to a weights file")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="head learning rate (backbone: lr x --backbone-lr-mult)")
    p.add_argument("--backbone-lr-mult", type=float)
    p.add_argument("--alpha", type=float, help="loss weight of MSE")
    p.add_argument("--beta", type=float, help="loss weight of 1 - Pearson (covariance gets 1 - alpha - beta)")
    p.add_argument("--pearson", choices=("sample", "gene", "both"), help="Pearson across genes, batch or both")
    p.add_argument("--grouping", help="grouping CSV (gene, group): one head per group")
    p.add_argument("--head", choices=("linear", "mlp"))
    p.add_argument("--pca", type=int, help="heads predict this many principal components per group (0: off)")
    p.add_argument("--aug-policy", help="augmentation policy name or 'none' (default he_safe: flips, rotations, mild shift-scale-rotate, brightness/contrast and HED stain jitter)")
    p.add_argument("--ema", type=float, help="EMA decay of weights, e.g. 0.99 (0: off)")
    p.add_argument("--tta", choices=("on", "off", "1", "2", "4", "8"),
                   help="dihedral test-time augmentation at validation/predict: a number of views, on = 8, off = 1 "
                        "(default 4)")
    p.add_argument("--no-spatial-context", dest="spatial_context", action="store_false",
                   help="no spatial context (default, when the dataset has spot coordinates: a head on own + "
                        "neighbour-mean embeddings when it wins on the validation spots, else neighbour smoothing "
                        "of predictions with a weight chosen there)")
    blocks = p.add_mutually_exclusive_group()
    blocks.add_argument("--train-blocks", type=int, help="train only the last N backbone stages (-1: all)")
    blocks.add_argument("--freeze-blocks", type=int, help="freeze the first N backbone stages")
    p.add_argument("--image-size", type=int, help="resize patches to this size inside the model")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--val-sections", help="comma-separated section names held out for validation")
    p.add_argument("--folds", type=int, help="K-fold split (use with --fold)")
    p.add_argument("--fold", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--workers", type=int, help="threads decoding images into the RAM cache")
    p.add_argument("--max-train-minutes", type=float, help="stop training after this many minutes, then finish")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--offline", action="store_true",
                   help="never download weights: --weights auto uses only what is on this machine "
                        "(also when HF_HUB_OFFLINE=1)")


def overrides_from_args(args) -> dict:
    """Only the flags the user gave, as a nested config dict."""
    o: dict = {"model": {}, "loss": {}, "optim": {}, "aug": {}, "split": {}, "grouping": {}, "runtime": {},
               "predict": {}, "frozen": {}}

    def put(section, key, value):
        if value is not None:
            o[section][key] = value

    put("model", "kind", args.model)
    put("model", "backbone", args.backbone)
    put("model", "weights", args.weights)
    put("model", "head", args.head)
    put("model", "pca_components", args.pca)
    put("model", "image_size", args.image_size)
    put("model", "train_blocks", args.train_blocks)
    put("model", "freeze_blocks", args.freeze_blocks)
    put("optim", "epochs", args.epochs)
    put("optim", "batch_size", args.batch_size)
    put("optim", "lr", args.lr)
    put("optim", "backbone_lr_mult", args.backbone_lr_mult)
    put("optim", "ema", args.ema)
    put("loss", "alpha", args.alpha)
    put("loss", "beta", args.beta)
    put("loss", "pearson", args.pearson)
    put("grouping", "path", args.grouping)
    put("aug", "policy", args.aug_policy)
    put("split", "val_fraction", args.val_fraction)
    put("split", "val_sections", args.val_sections)
    put("split", "folds", args.folds)
    put("split", "fold", args.fold)
    put("runtime", "device", args.device)
    put("runtime", "workers", args.workers)
    put("runtime", "max_train_minutes", args.max_train_minutes)
    if getattr(args, "offline", False):
        o["runtime"]["offline"] = True
    if args.compile:
        o["runtime"]["compile"] = True
    if args.tta is not None:
        o["predict"]["tta"] = {"on": True, "off": False}.get(args.tta) if not args.tta.isdigit() else int(args.tta)
    if args.model == "frozen":  # frozen heads keep their own (longer) schedule; explicit flags apply to it
        o["frozen"] = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
                       if v is not None}
    if not getattr(args, "spatial_context", True):
        o["spatial"] = {"context": "off", "smoothing": "off"}
    if args.seed is not None:
        o["seed"] = args.seed
    if args.train_blocks is not None:
        o["model"]["freeze_blocks"] = None
    return {k: v for k, v in o.items() if v != {}}


def run(args) -> int:
    from pathlib import Path

    from mai_core.errors import MaiError, Problem
    from mai_core.runs import RunDir, read_config
    from mai_core.training import resolve_config, train

    overrides = overrides_from_args(args)
    out = Path(args.out)
    if args.resume:
        stored = read_config(out)
        if args.data:
            overrides["data"] = str(Path(args.data).resolve())
        cfg = resolve_config(overrides, args.config, base={k: v for k, v in stored.items()
                                                           if k not in ("kind",)} | {"kind": "run"})
    else:
        if args.data:
            overrides["data"] = str(Path(args.data).resolve())
        cfg = resolve_config(overrides, args.config)
        if not cfg.get("data"):
            raise MaiError("no dataset given", [Problem("--data", "missing", "pass the dataset folder with --data "
                                                                           "(or set data: in the --config file)")])
    try:
        train(cfg, out, resume=args.resume, progress=not args.quiet, force=args.force)
    except MaiError:
        raise
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the run is marked failed and the traceback is in log.txt
        print(f"error: training failed: {type(exc).__name__}: {exc}\n(traceback in {RunDir(out).log_path})",
              file=sys.stderr)
        return 1
    return 0
