"""Loading weights into a backbone: reading state dicts, building the architecture (timm, or a pathology
encoder's published arguments), converting published checkpoints, and checking every tensor's shape.

Nothing here looks for files or touches the network (see ``weights`` and ``store``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mai_core.errors import MaiError, Problem
from mai_core.models.backbones import pathology
from mai_core.models.backbones.registry import (BACKBONES, IMAGENET_MEAN, IMAGENET_STD, RANDOM_INIT_SEED,
                                                BackboneSpec, log)


def _pretrained_cfg(timm_name: str) -> dict:
    from timm.models import get_pretrained_cfg

    arch = timm_name.partition(".")[0]
    cfg = get_pretrained_cfg(timm_name) or get_pretrained_cfg(arch)
    if cfg is None:
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg.__dict__)


def _norm_stats(cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(float(v) for v in (cfg.get("mean") or IMAGENET_MEAN))
    std = tuple(float(v) for v in (cfg.get("std") or IMAGENET_STD))
    return mean, std


def read_state_dict(path: str | os.PathLike) -> dict:
    """Load a state dict from .safetensors or .pth/.pt/.bin (``torch.load(weights_only=True)``).

    Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) and ``module.``
    prefixes from DataParallel are unwrapped.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise MaiError(f"weights file not found: {p}",
                       [Problem(str(p), "no such file", "check the path passed as weights=")])
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except MaiError:
        raise
    except Exception as exc:
        raise MaiError(f"cannot read weights file {p}",
                       [Problem(str(p), f"{type(exc).__name__}: {exc}",
                                "pass a .safetensors file or a .pth/.pt state dict saved with torch.save "
                                "(plain tensors only; pickled objects are refused)")]) from exc
    for wrapper in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MaiError(f"{p} does not contain a state dict of tensors",
                       [Problem(str(p), "expected a mapping of parameter names to tensors",
                                "save weights with torch.save(model.state_dict(), path) or safetensors")])
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def _new_model(timm_name: str, pretrained: bool = False, **kwargs):
    """A timm model, or a registered pathology encoder built with its published arguments (never from the
    hub: their weights come through the registry's own resolution)."""
    import timm

    spec = BACKBONES.get(timm_name)
    if spec is None or not spec.builder:
        return timm.create_model(timm_name, pretrained=pretrained, **kwargs)
    if pretrained:
        raise MaiError(f"{timm_name} weights are resolved by the registry, not by timm",
                       hint=f"python -m mai_core weights pull {timm_name}")
    if spec.builder == "conch":
        return pathology.build_conch_vision(**kwargs)
    arch, args = pathology.timm_arguments(spec.name)
    args.update(kwargs)
    model = timm.create_model(arch, pretrained=False, **args)
    if spec.pool == "cls+mean" and not args.get("num_classes", 1000):
        pathology.cls_mean_pool(model)
    return model


def spec_norm(spec: BackboneSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation a backbone's pretrained weights expect."""
    if spec.mean is not None and spec.std is not None:
        return tuple(spec.mean), tuple(spec.std)
    return _norm_stats(_pretrained_cfg(spec.timm_name))


def convert_state_dict(spec: BackboneSpec, sd: dict) -> dict:
    """A published checkpoint in the tensor names the registry builds (identity for timm's own files)."""
    if spec.convert:
        sd = pathology.CONVERTERS[spec.convert](sd)
    return sd


def _classifier_keys(model) -> set[str]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return set()
    heads = head if isinstance(head, (tuple, list)) else (head,)
    prefixes = [n for n, m in model.named_modules() if any(m is h for h in heads) and n]
    return {k for k in model.state_dict() if any(k.startswith(p + ".") for p in prefixes)}


def _shape(t) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def load_weights_into(timm_name: str, state_dict: dict, where: str, keep_classifier: bool = False,
                      check_only: bool = False, **timm_kwargs):
    """Build ``timm_name`` and load ``state_dict`` into it, checking every backbone tensor.

    Keys are matched by name when the file uses timm's names, otherwise positionally (same order; the
    file must have exactly the model's tensors, with or without the classifier). Every shape is
    checked; any mismatch raises MaiError naming the tensors. The classifier is dropped
    (``num_classes=0``) unless ``keep_classifier``. ``timm_kwargs`` go to ``timm.create_model``.
    ``check_only``: build the architecture on the meta device (no memory) and only check; returns None.
    """
    if check_only:
        import torch

        with torch.device("meta"):
            model = _new_model(timm_name, **timm_kwargs)
    else:
        model = _seeded_model(timm_name, **timm_kwargs)
    cls_keys = _classifier_keys(model)
    target = model.state_dict()
    body = [k for k in target if k not in cls_keys]
    problems: list[Problem] = []

    # BN batch counters are bookkeeping, not weights: some exports leave them out
    required = [k for k in body if not k.endswith("num_batches_tracked")]
    if set(required) <= set(state_dict):
        mode = "by name"
        mapping = {k: state_dict[k] for k in body if k in state_dict}
        mapping.update({k: state_dict[k] for k in cls_keys if k in state_dict})
    elif len(state_dict) == len(target):
        mode = "by position"
        mapping = dict(zip(target.keys(), state_dict.values()))
        file_keys = dict(zip(target.keys(), state_dict.keys()))
    elif len(state_dict) == len(body):
        mode = "by position"
        mapping = dict(zip(body, state_dict.values()))
        file_keys = dict(zip(body, state_dict.keys()))
    else:
        missing = [k for k in body if k not in state_dict][:5]
        raise MaiError(
            f"weights in {where} do not fit {timm_name}",
            [Problem(where, f"the file has {len(state_dict)} tensors, the model has {len(target)} "
                            f"({len(body)} without the classifier) and key names differ "
                            f"(e.g. model expects {missing})",
                     f"use weights saved from timm's {timm_name}, or pick the backbone they belong to")],
        )

    # the classifier may have another number of classes: resize it when kept, ignore it otherwise
    cls_in = {k: v for k, v in mapping.items() if k in cls_keys}
    if cls_in and keep_classifier:
        w = [v for k, v in cls_in.items() if k.endswith("weight") and v.ndim == 2]
        if w and _shape(w[0])[0] != _shape(target[[k for k in cls_in if k.endswith("weight")][0]])[0]:
            model.reset_classifier(_shape(w[0])[0])
            target = model.state_dict()
    pe = mapping.get("pos_embed")
    if pe is not None and "pos_embed" in target and _shape(pe) != _shape(target["pos_embed"]) \
            and _shape(pe)[-1] == _shape(target["pos_embed"])[-1]:  # same width, other grid: resample
        mapping["pos_embed"] = pathology.resample_pos_embed({"pos_embed": pe}, model)["pos_embed"]
    for k, v in mapping.items():
        if k in cls_keys and not keep_classifier:
            continue
        if k not in target:
            continue
        if _shape(v) != _shape(target[k]):
            src = file_keys.get(k, k) if mode == "by position" else k
            problems.append(Problem(f"{where} [{src}]", f"shape {_shape(v)} but {timm_name}.{k} has {_shape(target[k])}",
                                    "the file belongs to another architecture or variant"))
    if problems:
        raise MaiError(f"weights in {where} do not match {timm_name} ({len(problems)} shape mismatches, "
                       f"matched {mode})", problems,
                       hint="pass weights saved from this exact architecture, or choose the matching backbone")
    if check_only:
        return None

    load = {k: v for k, v in mapping.items() if k in target and (keep_classifier or k not in cls_keys)}
    result = model.load_state_dict(load, strict=False)
    not_loaded = [k for k in result.missing_keys if k not in cls_keys and not k.endswith("num_batches_tracked")]
    if not_loaded:  # cannot happen after the checks above, kept as a guard against silent partial loads
        raise MaiError(f"weights in {where} left {len(not_loaded)} tensors of {timm_name} unset",
                       [Problem(where, f"missing {not_loaded[:5]}", "use a complete state dict")])
    if not keep_classifier:
        model.reset_classifier(0)
    log.info("loaded %d tensors into %s from %s (%s)", len(load), timm_name, where, mode)
    return model


def _seeded_model(timm_name: str, **kwargs):
    """A freshly initialised model; the init is seeded and leaves the global RNG untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return _new_model(timm_name, **kwargs)


def _random_model(timm_name: str, keep_classifier: bool, **timm_kwargs):
    if not keep_classifier:
        timm_kwargs["num_classes"] = 0
    return _seeded_model(timm_name, **timm_kwargs)
