"""``augment-score``: perceptual distance of each augmentation on a sample of training images."""

from __future__ import annotations

import argparse
import sys

from mai_core.commands._argtypes import non_negative_float, positive_int

NAME = "augment-score"
HELP = "score augmentations by LPIPS / DINO distance and optionally save a policy under thresholds"
DESCRIPTION = (
    "Apply each augmentation K times to N sampled training images and measure how far the augmented image "
    "is from the original: LPIPS (AlexNet) and DINO (ViT-S/16 embedding cosine) when their weights are in the "
    "local caches, otherwise labelled substitutes on EfficientNet-Lite0 features. Writes one CSV row per "
    "augmentation; with --save-policy, also writes a policy of the augmentations within the thresholds."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (contains train.csv)")
    p.add_argument("--out", required=True, help="output CSV (one row per augmentation)")
    p.add_argument("--n", type=positive_int, default=64, help="number of training images sampled (default 64)")
    p.add_argument("--k", type=positive_int, default=4, help="augmented versions per image (default 4)")
    p.add_argument("--augs", default="", help="comma-separated augmentations (default: all registered)")
    p.add_argument("--seed", type=int, default=0, help="seed for the image sample and augmentation parameters")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--pairs-out", default=None, help="optional CSV with every (augmentation, image, rep) distance")
    p.add_argument("--lpips-weights", default=None, help="AlexNet ImageNet weights file for LPIPS (default: torch hub cache)")
    p.add_argument("--dino-weights", default=None, help="ViT-S/16 DINO weights file (default: Hugging Face cache)")
    p.add_argument("--save-policy", metavar="NAME", default=None,
                   help="write a policy of the augmentations whose mean distances are within the thresholds")
    p.add_argument("--max-lpips", type=non_negative_float, default=None,
                   help="appearance LPIPS threshold for --save-policy (default: the metric's default, if it has one)")
    p.add_argument("--max-dino", type=non_negative_float, default=None,
                   help="appearance DINO threshold for --save-policy (default: the metric's default, if it has one)")
    p.add_argument("--max-hue", type=non_negative_float, default=None,
                   help="hue rotation threshold in degrees for --save-policy (default 3)")
    p.add_argument("--policy-dir", default=None, help="folder for the policy (default: workspace policies/)")


def run(args) -> int:
    from mai_core.errors import MaiError, Problem

    given = [v for v in (args.max_lpips, args.max_dino, args.max_hue) if v is not None]
    if args.save_policy is None and given:
        print("note: thresholds given without --save-policy: the CSV gets a 'kept' column, no policy is saved",
              file=sys.stderr)
    if args.save_policy is not None:
        from mai_core.augment.policy import BUILTIN_POLICIES, NAME_RE

        problems = []
        if not NAME_RE.match(args.save_policy):
            problems.append(Problem("--save-policy", f"invalid policy name {args.save_policy!r}",
                                    "use letters, digits, '_', '-' or '.'"))
        if args.save_policy in BUILTIN_POLICIES:
            problems.append(Problem("--save-policy", f"'{args.save_policy}' is a built-in policy", "choose another name"))
        if problems:
            raise MaiError("cannot save a policy with these arguments", problems)
    if not str(args.out).lower().endswith(".csv"):
        raise MaiError(f"--out must be a .csv file, got {args.out}", [Problem("--out", "not a .csv path", "e.g. --out scores.csv")])

    from mai_core.augment import parse_aug_names

    augs = parse_aug_names(args.augs)  # validate before the slow part

    from mai_core.augment import PerceptualScorer, kept_mask, save_policy, score_dataset, select_policy
    from mai_core.data.dataset import load_dataset
    from mai_core.io import write_csv

    ds = load_dataset(args.data)
    if args.n > ds.n_train:
        print(f"note: the dataset has {ds.n_train} training images; scoring all of them", file=sys.stderr)
    scorer = PerceptualScorer(device=args.device, batch_size=args.batch_size,
                              lpips_weights=args.lpips_weights, dino_weights=args.dino_weights)
    print(f"LPIPS column: {scorer.lpips_model}; DINO column: {scorer.dino_model} (device {scorer.device})",
          file=sys.stderr)
    if scorer.uses_fallback:
        print("warning: substitute metric in use (labelled in the lpips_model / dino_model columns)", file=sys.stderr)
    for note in scorer.notes:
        print(f"  note: {note}", file=sys.stderr)
    limits = {"max_lpips": args.max_lpips, "max_dino": args.max_dino, "max_hue": args.max_hue}
    if args.save_policy is not None:  # thresholds not given: the defaults for the metrics used
        from mai_core.augment import default_thresholds

        defaults = default_thresholds(scorer.lpips_model, scorer.dino_model)
        for key, value in defaults.items():
            if limits[key] is None:
                limits[key] = value
                if value is not None:
                    print(f"default threshold --{key.replace('_', '-')} {value:g}", file=sys.stderr)
        if limits["max_lpips"] is None and limits["max_dino"] is None:
            raise MaiError("no default LPIPS or DINO threshold for these metrics",
                           [Problem("--save-policy", f"defaults exist only for {', '.join(_calibrated())}; "
                                    f"scored with {scorer.lpips_model} / {scorer.dino_model}",
                                    "add --max-lpips T and/or --max-dino T (see the scores CSV for typical values)")])
    report = score_dataset(ds, n=args.n, k=args.k, augs=augs, seed=args.seed, scorer=scorer,
                           batch_size=args.batch_size, progress=True)
    summary = report.summary
    if any(v is not None for v in limits.values()):
        summary = summary.assign(kept=kept_mask(summary, **limits).to_numpy())
    write_csv(args.out, summary, float_format="%.6g")
    if args.pairs_out:
        write_csv(args.pairs_out, report.pairs, float_format="%.6g")
    cols = ["aug", "lpips_mean", "dino_mean", "geometry_mean", "hue_mean"] + (["kept"] if "kept" in summary.columns else [])
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {args.out}")
    if args.save_policy is not None:
        policy = select_policy(summary, limits["max_lpips"], limits["max_dino"], args.save_policy, limits["max_hue"])
        path = save_policy(policy, args.policy_dir)
        if not policy.items:
            print("warning: no augmentation is within the thresholds; the policy applies nothing", file=sys.stderr)
        print(f"saved policy {policy.name} ({len(policy.items)} augmentations) to {path}")
        print(f"  {policy.describe()}")
    return 0


def _calibrated() -> list[str]:
    from mai_core.augment import DEFAULT_THRESHOLDS

    return list(DEFAULT_THRESHOLDS)
