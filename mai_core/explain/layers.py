"""Target layers for CAMs: chosen per backbone family or given by dotted name; token layers (ViT, XCiT,
Swin) are reshaped to B×C×H×W maps.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Callable


from mai_core.errors import MaiError, Problem
from mai_core.explain.methods import CAM_SIZE


# ----------------------------------------------------------------------------------------------
# Target layers
# ----------------------------------------------------------------------------------------------

# timm model class -> dotted names (relative to the backbone) tried in order. "-1" indexes the last child.
FAMILY_LAYERS: dict[str, tuple[str, ...]] = {
    "EfficientNet": ("bn2", "conv_head"),
    "MobileNetV3": ("blocks.-1",),
    "ResNet": ("layer4",),
    "ResNetV2": ("stages.-1",),
    "ConvNeXt": ("stages.-1",),
    "DenseNet": ("features",),
    "RegNet": ("final_conv", "s4"),
    "VisionTransformer": ("blocks.-1.norm1",),
    "VisionTransformerDistilled": ("blocks.-1.norm1",),
    "Eva": ("blocks.-1.norm1",),
    "Xcit": ("blocks.-1",),
    "MaxxVit": ("stages.-1",),
    "SwinTransformer": ("layers.-1",),
    "SwinTransformerV2": ("layers.-1",),
}


@dataclass
class LayerSpec:
    """Resolved target layers of a model (one per backbone; ensembles have several)."""

    names: list[str]
    modules: list
    family: str
    shapes: list[tuple] = field(default_factory=list)  # output shape of each layer for one image
    reshape: Callable | None = None  # token/NHWC → B×C×H×W, or None when the maps are already NCHW

    @property
    def label(self) -> str:
        return self.names[0] if len(self.names) == 1 else f"{self.names[0]} (+{len(self.names) - 1} members)"


def _get_submodule(root, dotted: str):
    """Module at a dotted path; integer parts index sequences (negative allowed). None when absent."""
    mod = root
    for part in dotted.split("."):
        if not part:
            return None
        if re.fullmatch(r"-?\d+", part):
            try:
                children = list(mod.children())
                mod = mod[int(part)] if hasattr(mod, "__getitem__") else children[int(part)]
            except (IndexError, TypeError, KeyError):
                return None
        else:
            mod = getattr(mod, part, None)
            if mod is None or not hasattr(mod, "register_forward_hook"):
                return None
    return mod


def _canonical_name(root, module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    return "?"


def _timm_backbones(model) -> list[tuple[str, object]]:
    """(name, module) of every timm model inside ``model`` (outermost ones only)."""
    found = []
    for name, mod in model.named_modules():
        cls = type(mod)
        if not cls.__module__.startswith("timm.models"):
            continue
        if not (hasattr(mod, "pretrained_cfg") or hasattr(mod, "default_cfg") or cls.__name__ in FAMILY_LAYERS):
            continue
        if any(name.startswith(prev + ".") or prev == "" for prev, _ in found):
            continue
        found.append((name, mod))
    return found


def _registry_layer(backbone, backbone_name: str | None):
    """Target layer the shared backbone registry recommends for ``backbone_name`` (None when it has none)."""
    if not backbone_name:
        return None
    try:
        from mai_core.models import backbones as registry

        layer, _ = registry.gradcam_target(backbone, backbone_name)
    except Exception:  # registry unavailable or no hint for this name: use the family table
        return None
    return layer if hasattr(layer, "register_forward_hook") else None


_CANDIDATE = re.compile(r"^(layer\d|stages\.\d+|blocks\.\d+|blocks\.\d+\.norm1|conv_head|bn2|features|"
                        r"layers\.\d+|final_conv|s\d|norm|cls_attn_blocks\.\d+\.norm1)$")


def layer_candidates(model, limit: int = 40) -> list[str]:
    """Dotted names (relative to the backbone) worth offering as target layers, deepest last."""
    backbones = _timm_backbones(model)
    root = backbones[0][1] if backbones else model
    names = [n for n, _ in root.named_modules() if n]
    keep = [n for n in names if _CANDIDATE.match(n)]
    return keep[-limit:] if keep else names[-limit:]


def tokens_to_maps(t, grid: tuple[int, int] | None = None):
    """Token layouts → B×C×H×W. B×N×C tokens (dropping leading class/register tokens) or B×H×W×C maps."""
    if t.ndim == 4:
        if t.shape[1] == t.shape[2] and t.shape[2] != t.shape[3]:
            return t.permute(0, 3, 1, 2)
        return t
    if t.ndim != 3:
        return t
    n = t.shape[1]
    if grid is not None and 0 <= n - grid[0] * grid[1] <= 8:
        h, w = grid
    else:
        side = math.isqrt(n)
        while side > 0 and n - side * side > 8:
            side -= 1
        h = w = side
    prefix = n - h * w
    x = t[:, prefix:, :]
    return x.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


class TokenReshape:
    """Reshape transform for pytorch_grad_cam: tokens or channel-last maps → B×C×H×W."""

    def __init__(self, grid: tuple[int, int] | None = None):
        self.grid = grid

    def __call__(self, t):
        return tokens_to_maps(t, self.grid)

    def __repr__(self) -> str:
        return f"TokenReshape(grid={self.grid})"


def _traced_forward(model, modules, device, size: int = CAM_SIZE) -> list[tuple]:
    """Run a blank image through ``model``; ``(module, output)`` for each of ``modules``, in execution order."""
    import torch

    order: list = []
    handles = [m.register_forward_hook(lambda m, _inp, out: order.append((m, out))) for m in modules]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    return order


def _probe_shapes(model, modules, device, size: int = CAM_SIZE) -> list:
    """Output shape of each of ``modules`` (the type name when a module does not output a tensor)."""
    import torch

    seen = {id(m): (tuple(o.shape) if torch.is_tensor(o) else type(o).__name__)
            for m, o in _traced_forward(model, modules, device, size)}
    return [seen.get(id(m)) for m in modules]


def _is_spatial(shape) -> bool:
    if not isinstance(shape, tuple):
        return False
    if len(shape) == 4:
        return (shape[2] >= 2 and shape[3] >= 2) or (shape[1] >= 2 and shape[2] >= 2)
    if len(shape) == 3:
        n = shape[1]
        side = math.isqrt(n)
        while side > 1 and n - side * side > 8:
            side -= 1
        return side >= 2 and n - side * side <= 8
    return False


def resolve_target_layers(model, layer: str | None = None, device=None,
                          backbone_name: str | None = None) -> LayerSpec:
    """Target layer(s) of ``model`` for CAMs.

    ``layer=None`` picks per backbone family (EfficientNet ``bn2``, ResNet ``layer4``, ConvNeXt/CoAtNet
    ``stages[-1]``, ViT ``blocks[-1].norm1``, XCiT ``blocks[-1]``, Swin ``layers[-1]``; with
    ``backbone_name`` the shared registry's hint wins), one layer per backbone for ensembles. A dotted
    ``layer`` is looked up on the whole model first, then inside every backbone. Raises MaiError listing
    candidates for a bad name or a layer whose output is not a spatial map.
    """
    import torch

    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    backbones = _timm_backbones(model)
    family = type(backbones[0][1]).__name__ if backbones else type(model).__name__
    names: list[str] = []
    modules: list = []
    if layer:
        direct = _get_submodule(model, layer)
        if direct is not None:
            names, modules = [_canonical_name(model, direct)], [direct]
        else:
            for bname, bb in backbones:
                sub = _get_submodule(bb, layer)
                if sub is not None:
                    names.append(_canonical_name(model, sub))
                    modules.append(sub)
        if not modules:
            cands = layer_candidates(model)
            close = difflib.get_close_matches(layer, [n for n, _ in model.named_modules()], n=5, cutoff=0.6)
            raise MaiError(f"target layer {layer!r} not found in the {family} model",
                           [Problem("--layer", f"no module named {layer!r}",
                                    f"did you mean {', '.join(close)}?" if close else
                                    "use a dotted module name (integer parts index blocks, -1 = last)")],
                           hint="candidates: " + ", ".join(cands))
    else:
        for bname, bb in backbones:
            sub = _registry_layer(bb, backbone_name) if len(backbones) == 1 else None
            for h in FAMILY_LAYERS.get(type(bb).__name__, ()):
                if sub is not None:
                    break
                sub = _get_submodule(bb, h)
            if sub is not None:
                names.append(_canonical_name(model, sub))
                modules.append(sub)
        if len(modules) != len(backbones) or not modules:
            # Unknown family: the last module (in execution order) whose output is a spatial map.
            leaves = [m for _, m in model.named_modules() if not list(m.children())]
            order = _traced_forward(model, leaves, device)
            spatial = [m for m, o in order if torch.is_tensor(o) and _is_spatial(tuple(o.shape))]
            if not spatial:
                raise MaiError(f"cannot find a spatial layer for CAMs in the {family} model",
                               hint="pass --layer with a module whose output is a feature map; candidates: "
                               + ", ".join(layer_candidates(model)))
            names, modules = [_canonical_name(model, spatial[-1])], [spatial[-1]]
    shapes = _probe_shapes(model, modules, device)
    bad = [(n, s) for n, s in zip(names, shapes) if not _is_spatial(s)]
    if bad:
        n, s = bad[0]
        raise MaiError(f"layer {n!r} does not output a spatial feature map (output {s})",
                       [Problem("--layer", f"{n} gives {s}", "choose a convolutional stage or a token block")],
                       hint="candidates: " + ", ".join(layer_candidates(model)))
    needs_reshape = any(len(s) == 3 or (s[1] == s[2] and s[2] != s[3]) for s in shapes)
    grid = None
    for _, bb in backbones:
        g = getattr(getattr(bb, "patch_embed", None), "grid_size", None)
        if g is not None:
            grid = (int(g[0]), int(g[1]))
            break
    return LayerSpec(names, modules, family, shapes, TokenReshape(grid) if needs_reshape else None)


