"""Training configuration: the base settings, the CPU and GPU recipes, and how they are resolved.

Precedence: recipe defaults (per device type) < a YAML file < explicit overrides (command-line flags).
:func:`resolve_config` validates the result and returns a new dict; nothing here touches a run directory.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from mai_core.device import device_type as _device_type
from mai_core.errors import MaiError, Problem

MODEL_KINDS = ("finetune", "frozen", "ridge")

BASE_CONFIG: dict = {
    "kind": "run",
    "data": None,
    "seed": 0,
    "model": {
        "kind": "finetune",            # finetune | frozen | ridge
        "backbone": "efficientnet_lite0",
        "weights": "auto",             # auto | pretrained | random | path to a weights file
        "head": "linear",              # linear | mlp
        "hidden": 512,
        "dropout": 0.1,
        "drop_path": 0.1,              # stochastic depth in the backbone's residual blocks
        "pca_components": 0,           # >0: heads predict this many principal components per group
        "image_size": 224,
        "train_blocks": -1,            # -1: whole backbone; N: only the last N stages (+ final conv)
        "freeze_blocks": None,         # alternative: freeze the first N stages (overrides train_blocks)
    },
    # measured on HER2ST (bench/her2st_accuracy.py): mixing in the covariance term (0.2) beats MSE + Pearson
    "loss": {"alpha": 0.4, "beta": 0.4, "pearson": "both",
             # pathway weighting: genes of the GMT's sets (or of the listed ones) weighted up; co-loss on
             # the gene-gene correlation within each set (mai_core.training.objective)
             "pathway_gmt": None, "pathway_sets": None, "pathway_weight": 1.0, "coexp_weight": 0.0},
    "optim": {
        "epochs": 8,
        "batch_size": 32,
        "lr": 1e-3,                    # heads; the backbone gets lr * backbone_lr_mult
        "backbone_lr_mult": 1.0,
        "weight_decay": 1e-4,
        "warmup_epochs": 1.0,
        "min_lr_ratio": 0.01,
        "ema": 0.0,                    # EMA decay of weights (0: off)
        "grad_clip": 1.0,
    },
    # measured on HER2ST leave-one-section-out (bench/her2st_accuracy.py --strategies he_safe, two seeds): the
    # dihedral flips plus mild shift-scale-rotate, brightness/contrast and HED stain jitter beat the flips alone
    "aug": {"policy": "he_safe"},
    "split": {"val_fraction": 0.2, "folds": 0, "fold": 0, "val_sections": None},
    "grouping": {"path": None},
    # 4 dihedral views: on the unseen HER2ST section C5 the default run gained +0.016 top-50 PCC from 1 to 4 views
    # and nothing more from 8 (-0.002), at half the prediction time (bench/her2st_accuracy.py --tta-sweep)
    "predict": {"tta": 4, "batch_size": 64},
    # spatial context, chosen on the validation spots when the dataset has spot coordinates
    # (mai_core.training.spatialfit): context: "auto" fits a head on own + neighbour-mean embeddings and keeps it
    # when it beats the fine-tuned head, "on" keeps it always, "off"; smoothing (used without a context head): "auto" chooses the
    # weight of neighbour smoothing of predictions, "off", or a fixed weight in [0, 1]
    "spatial": {"context": "auto", "smoothing": "auto"},
    "frozen": {"views": 8, "epochs": 60, "batch_size": 64, "lr": 1e-3},
    "ridge": {"pca": 256, "alphas": None},
    "runtime": {
        "device": "auto",
        "amp": "auto",                 # auto (bf16 on CUDA; on CPU float32 measured as fast or faster) | bf16 | off
        "channels_last": "auto",       # auto (on: measured faster on CUDA and CPU) | true | false
        "threads": None,               # CPU threads: None = torch's count capped at the usable cores
        "compile": False,
        "workers": 2,
        "max_train_minutes": None,
        "offline": False,              # True: never download weights (weights: auto stays on this machine)
        "val_every": 1,
    },
}

# Default recipes; the CPU one is checked against the ridge baseline by bench/her2st_accuracy.py.
# CPU: measured on HER2ST C2-C4 -> C5 (bench/her2st_accuracy.py): one learning rate (1e-3) for backbone and
# heads beat a 10x lower backbone rate (top-50 gene PCC 0.455 vs 0.421, all genes 0.263 vs 0.245).
CPU_RECIPE: dict = {
    "model": {"backbone": "efficientnet_lite0", "kind": "finetune", "train_blocks": -1},
    "optim": {"epochs": 8, "batch_size": 32, "lr": 1e-3, "backbone_lr_mult": 1.0, "ema": 0.0},
}
GPU_RECIPE: dict = {
    "model": {"backbone": "efficientnet_lite0", "kind": "finetune", "train_blocks": -1},
    "optim": {"epochs": 30, "batch_size": 64, "lr": 1e-3, "backbone_lr_mult": 0.1, "ema": 0.99},
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _unknown_keys(base: dict, over: dict, prefix: str = "") -> list[str]:
    bad = []
    for k, v in (over or {}).items():
        if k not in base:
            bad.append(prefix + str(k))
        elif isinstance(v, dict) and isinstance(base[k], dict):
            bad += _unknown_keys(base[k], v, prefix + f"{k}.")
    return bad


def default_config(device_type: str = "cpu") -> dict:
    """Defaults for a device type ('cpu' or 'cuda'): BASE_CONFIG + the device's recipe."""
    return deep_merge(BASE_CONFIG, GPU_RECIPE if device_type == "cuda" else CPU_RECIPE)


def read_config_file(path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MaiError(f"config file {path} not found", hint="pass an existing YAML file to --config")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        # where, never what: the file may be anything readable, so its text is not repeated
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise MaiError(f"config file {path} is not valid YAML",
                       [Problem(str(path), f"{getattr(exc, 'problem', None) or 'not YAML text'}{at}",
                                "fix the YAML syntax")]) from None
    if not isinstance(cfg, dict):
        raise MaiError(f"config file {path} must hold a mapping of settings")
    if cfg and not set(cfg) & (set(BASE_CONFIG) | {"out"}):
        raise MaiError(f"config file {path} holds no training settings",
                       [Problem(str(path), f"none of its {len(cfg)} top-level key(s) is a setting",
                                "use the layout of a run's config.yaml (model:, optim:, loss:, ...)")])
    return cfg


def resolve_config(overrides: dict | None = None, config_file=None, device_type: str | None = None,
                   base: dict | None = None) -> dict:
    """defaults (per device) < config file < overrides; validates and returns a new dict."""
    file_cfg = read_config_file(config_file) if config_file else {}
    if device_type is None:
        dev = (overrides or {}).get("runtime", {}).get("device") or file_cfg.get("runtime", {}).get("device") or "auto"
        device_type = _device_type(dev)
    cfg = base if base is not None else default_config(device_type)
    problems = [Problem(str(config_file), f"unknown setting '{k}'", "check the spelling against the resolved "
                        "config.yaml of any run") for k in _unknown_keys(BASE_CONFIG, file_cfg)]
    for k in ("out", "kind"):
        file_cfg.pop(k, None)
    cfg = deep_merge(cfg, file_cfg)
    cfg = deep_merge(cfg, overrides or {})
    user_tta = "tta" in (file_cfg.get("predict") or {}) or "tta" in ((overrides or {}).get("predict") or {})
    if cfg["model"]["kind"] == "ridge" and not user_tta and base is None:
        cfg["predict"]["tta"] = False  # HEST protocol: plain embeddings of the untransformed patch
    problems += validate_config(cfg)
    if problems:
        raise MaiError("invalid training configuration", problems)
    return cfg


def validate_config(cfg: dict) -> list[Problem]:
    from mai_core.models.losses import PEARSON_MODES, validate_weights

    p: list[Problem] = []
    m, o, s = cfg["model"], cfg["optim"], cfg["split"]

    def num(where, v, lo=None, hi=None, integer=False, allow_none=False):
        if v is None and allow_none:
            return
        try:
            f = float(v)
        except (TypeError, ValueError):
            p.append(Problem(where, f"{v!r} is not a number", "give a number"))
            return
        if integer and f != int(f):
            p.append(Problem(where, f"{v!r} is not a whole number", "give an integer"))
        if (lo is not None and f < lo) or (hi is not None and f > hi) or not math.isfinite(f):
            rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            p.append(Problem(where, f"{v!r} is outside {rng}", f"use a value in {rng}"))

    if m["kind"] not in MODEL_KINDS:
        p.append(Problem("model.kind", f"unknown model kind {m['kind']!r}", f"use one of {', '.join(MODEL_KINDS)}"))
    if m["head"] not in ("linear", "mlp"):
        p.append(Problem("model.head", f"unknown head {m['head']!r}", "use linear or mlp"))
    num("model.hidden", m["hidden"], 1, integer=True)
    num("model.dropout", m["dropout"], 0, 0.95)
    num("model.drop_path", m["drop_path"], 0, 0.9)
    num("model.pca_components", m["pca_components"], 0, integer=True)
    num("model.image_size", m["image_size"], 32, 1024, integer=True)
    num("model.train_blocks", m["train_blocks"], -1, integer=True)
    num("model.freeze_blocks", m["freeze_blocks"], 0, integer=True, allow_none=True)
    num("optim.epochs", o["epochs"], 1, integer=True)
    num("optim.batch_size", o["batch_size"], 2, integer=True)
    num("optim.lr", o["lr"], 1e-8, 10)
    num("optim.backbone_lr_mult", o["backbone_lr_mult"], 0, 10)
    num("optim.weight_decay", o["weight_decay"], 0, 1)
    num("optim.warmup_epochs", o["warmup_epochs"], 0)
    num("optim.min_lr_ratio", o["min_lr_ratio"], 0, 1)
    num("optim.ema", o["ema"], 0, 0.99999)
    num("optim.grad_clip", o["grad_clip"], 0)
    num("split.val_fraction", s["val_fraction"], 0, 0.9)
    num("split.folds", s["folds"], 0, integer=True)
    num("split.fold", s["fold"], 0, integer=True)
    if s.get("folds") and int(s["folds"]) > 0:
        if int(s["folds"]) < 2:
            p.append(Problem("split.folds", f"{s['folds']} folds", "use at least 2 folds (or 0 for a plain split)"))
        elif not 0 <= int(s["fold"]) < int(s["folds"]):
            p.append(Problem("split.fold", f"fold {s['fold']} does not exist with {s['folds']} folds",
                             f"use a fold between 0 and {int(s['folds']) - 1}"))
    num("frozen.views", cfg["frozen"]["views"], 1, 8, integer=True)
    num("frozen.epochs", cfg["frozen"]["epochs"], 1, integer=True)
    num("frozen.batch_size", cfg["frozen"]["batch_size"], 2, integer=True)
    num("frozen.lr", cfg["frozen"]["lr"], 1e-8, 10)
    num("ridge.pca", cfg["ridge"]["pca"], 0, integer=True)
    num("runtime.workers", cfg["runtime"]["workers"], 0, 64, integer=True)
    num("runtime.threads", cfg["runtime"].get("threads"), 1, 1024, integer=True, allow_none=True)
    if cfg["runtime"]["channels_last"] not in ("auto", True, False):
        p.append(Problem("runtime.channels_last", f"{cfg['runtime']['channels_last']!r}", "use auto, true or false"))
    num("runtime.max_train_minutes", cfg["runtime"]["max_train_minutes"], 0, allow_none=True)
    if cfg["runtime"]["amp"] not in ("auto", "bf16", "off"):
        p.append(Problem("runtime.amp", f"{cfg['runtime']['amp']!r}", "use auto, bf16 or off"))
    smoothing = (cfg.get("spatial") or {}).get("smoothing", "auto")
    if smoothing is True:
        p.append(Problem("spatial.smoothing", "on", "use auto, off or a weight between 0 and 1"))
    elif smoothing is not False and str(smoothing).lower() not in ("auto", "off"):
        num("spatial.smoothing", smoothing, 0, 1)
    context = (cfg.get("spatial") or {}).get("context", "auto")
    if not isinstance(context, bool) and str(context).lower() not in ("auto", "on", "off"):
        p.append(Problem("spatial.context", f"{context!r}", "use auto, on or off"))
    if cfg["loss"].get("pearson") not in PEARSON_MODES:
        p.append(Problem("loss.pearson", f"{cfg['loss'].get('pearson')!r}", f"use one of {', '.join(PEARSON_MODES)}"))
    num("loss.pathway_weight", cfg["loss"].get("pathway_weight", 1.0), 0, 100)
    num("loss.coexp_weight", cfg["loss"].get("coexp_weight", 0.0), 0, 100)
    gmt = cfg["loss"].get("pathway_gmt")
    if gmt and not Path(str(gmt)).expanduser().is_file():
        p.append(Problem("loss.pathway_gmt", f"gene-set file {gmt} not found", "pass an existing GMT file"))
    try:
        validate_weights(cfg["loss"]["alpha"], cfg["loss"]["beta"])
    except MaiError as exc:
        p += exc.problems
    return p
