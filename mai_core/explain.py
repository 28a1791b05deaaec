"""Per-gene Grad-CAM: which part of a tile drives the predicted expression of a gene.

The model is a regression network (image → G expression values); the CAM target of gene ``g`` is
its predicted expression ``output[:, g]`` (:class:`GeneTarget`). Class-activation methods come from
``pytorch_grad_cam`` (:data:`METHODS`); the target layer is chosen per backbone family
(:func:`resolve_target_layers`) or given by dotted name, with token layers (ViT, XCiT, Swin)
reshaped to B×C×H×W maps.

Many genes for the same images share one forward pass (:class:`CamExplainer`): the activations of the
target layer are kept and every gene only back-propagates from its output to that layer, then the
library's own CAM formula turns (activations, gradients) into a map. The result equals one library
call per gene (tested) at a fraction of the cost. Maps are cached per (run, image, gene, method,
layer) in memory (LRU) and optionally on disk; caches keep the small layer-resolution maps, so they
are exact and tiny.

Analysis helpers: :func:`cam_similarity` (gene × gene correlation of maps over images) with
:func:`prefix_similarity` (do genes sharing a name prefix attend to the same regions?),
:func:`faithfulness` (energy inside planted masks, pointing game), and :func:`overlay` for display.
:func:`write_gradcam` is the whole ``python -m mai_core gradcam`` command.

torch, timm, pandas and pytorch_grad_cam are imported inside functions so that importing this module
is cheap (the CLI imports it to list methods).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mai_core.errors import MaiError, Problem

CAM_SIZE = 224


# ----------------------------------------------------------------------------------------------
# Methods and targets
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CamMethod:
    """One class-activation method usable with a regression target."""

    name: str
    label: str
    library_class: str  # class name in pytorch_grad_cam
    uses_gradients: bool
    gene_specific: bool  # False: the map does not depend on the gene (EigenCAM)
    description: str

    def cam_class(self):
        import pytorch_grad_cam

        return getattr(pytorch_grad_cam, self.library_class)


METHODS: dict[str, CamMethod] = {m.name: m for m in (
    CamMethod("gradcam", "Grad-CAM", "GradCAM", True, True,
              "channels weighted by the spatial mean of d(expression)/d(activation)"),
    CamMethod("gradcam++", "Grad-CAM++", "GradCAMPlusPlus", True, True,
              "second-order weighting of positive gradients; sharper for several separate regions"),
    CamMethod("xgradcam", "XGrad-CAM", "XGradCAM", True, True,
              "gradients weighted by normalised activations (axiom-based Grad-CAM)"),
    CamMethod("layercam", "LayerCAM", "LayerCAM", True, True,
              "positive gradients times activations, per location (finer detail)"),
    CamMethod("hirescam", "HiResCAM", "HiResCAM", True, True,
              "gradients times activations summed over channels (faithful to the model's computation)"),
    CamMethod("elementwise", "Grad-CAM element-wise", "GradCAMElementWise", True, True,
              "positive part of gradient × activation, summed over channels"),
    CamMethod("eigengradcam", "EigenGrad-CAM", "EigenGradCAM", True, True,
              "first principal component of gradient × activation (sign of the component is arbitrary)"),
    CamMethod("eigencam", "EigenCAM", "EigenCAM", False, False,
              "first principal component of the activations: the same map for every gene"),
    CamMethod("scorecam", "Score-CAM", "ScoreCAM", False, True,
              "channels weighted by the expression of the image masked by each channel "
              "(one forward pass per channel: slow, but shared by all genes)"),
)}


class GeneTarget:
    """pytorch_grad_cam target: the predicted expression of gene ``index``."""

    def __init__(self, index: int):
        self.index = int(index)

    def __call__(self, model_output):
        if model_output.ndim == 1:
            return model_output[self.index]
        return model_output[:, self.index]

    def __repr__(self) -> str:
        return f"GeneTarget({self.index})"


def check_method(method: str) -> CamMethod:
    if method in METHODS:
        return METHODS[method]
    close = difflib.get_close_matches(method.lower(), list(METHODS), n=3, cutoff=0.5)
    raise MaiError(f"unknown CAM method {method!r}",
                   [Problem("--method", f"{method!r} is not one of {', '.join(METHODS)}",
                            f"did you mean {', '.join(close)}?" if close else "pick one of the listed methods")])


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
        from mai_core import backbones as registry

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


def _probe_shapes(model, modules, device, size: int = CAM_SIZE) -> list[tuple]:
    import torch

    shapes: list = [None] * len(modules)
    handles = []
    for i, m in enumerate(modules):
        def hook(_m, _inp, out, i=i):
            shapes[i] = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    return shapes


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
            order: list = []
            handles = [m.register_forward_hook(lambda m, i, o: order.append((m, o)))
                       for _, m in model.named_modules() if not list(m.children())]
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 3, CAM_SIZE, CAM_SIZE, device=device))
            finally:
                for h in handles:
                    h.remove()
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


# ----------------------------------------------------------------------------------------------
# Image helpers
# ----------------------------------------------------------------------------------------------


def to_input(images, device="cpu"):
    """uint8 N×H×W×3 / H×W×3 arrays or float tensors → float B×3×H×W in [0, 1] on ``device``."""
    import torch

    if torch.is_tensor(images):
        x = images
        if x.ndim == 3:
            x = x[None]
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return x.to(device=device, dtype=torch.float32)
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise MaiError(f"images must be N×H×W×3 RGB arrays, got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    x = x.float() / 255.0 if arr.dtype == np.uint8 else x.float()
    return x.to(device)


def image_key(image) -> str:
    """Content hash of one image (uint8 H×W×3 or float C×H×W), the cache key of its maps."""
    import torch

    if torch.is_tensor(image):
        image = image.detach().cpu().numpy()
    a = np.ascontiguousarray(image)
    h = hashlib.sha1(a.tobytes())
    h.update(f"{a.shape}{a.dtype}".encode())
    return h.hexdigest()[:20]


def _finalize(raw_layers: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Per-layer raw maps (M×h×w, already ≥ 0) → final M×H×W in [0, 1], as pytorch_grad_cam does."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    per_layer = [scale_cam_image(r, size)[:, None] for r in raw_layers]
    stacked = np.maximum(np.concatenate(per_layer, axis=1), 0)
    return scale_cam_image(np.mean(stacked, axis=1))


# ----------------------------------------------------------------------------------------------
# The explainer
# ----------------------------------------------------------------------------------------------


@dataclass
class CamResult:
    """CAMs of N images × G genes: ``cams`` float32 N×G×H×W in [0, 1]; ``predicted`` N×G model outputs."""

    cams: np.ndarray
    predicted: np.ndarray
    genes: list[str]
    method: str
    layer: str


class CamExplainer:
    """Grad-CAM family maps for many genes of one model, sharing forward passes and caching results.

    ``model`` maps float B×3×H×W in [0, 1] to B×G predictions in ``genes`` order (e.g.
    ``load_predictor(run).model``). ``run_key`` identifies the weights for the disk cache (set by
    :meth:`from_run`); without it only the in-memory cache is used.
    """

    def __init__(self, model, genes: Sequence[str], layer: str | None = None, device="cpu",
                 backbone_name: str | None = None, run_key: str | None = None, cache_size: int = 4096, disk_cache: str | os.PathLike | None = None,
                 gene_chunk: int = 32, image_batch: int = 8, score_batch: int = 32):
        import torch

        self.device = torch.device(_pick_device(device))
        self.model = model.to(self.device).eval()
        self.genes = list(genes)
        self._gene_index = {g: i for i, g in enumerate(self.genes)}
        self.layers = resolve_target_layers(self.model, layer, self.device, backbone_name)
        self.run_key = run_key
        self.cache_size = int(cache_size)
        self.disk_cache = Path(disk_cache) if (disk_cache and run_key) else None
        self.gene_chunk = max(1, int(gene_chunk))
        self.image_batch = max(1, int(image_batch))
        self.score_batch = max(1, int(score_batch))
        self._cache: OrderedDict = OrderedDict()  # (image, gene index, method) -> tuple of raw layer maps
        self._pred_cache: OrderedDict = OrderedDict()  # image -> float32 G
        self._cam_objects: dict = {}
        self._lock = threading.RLock()  # one computation at a time (pages share an explainer across sessions)
        self.stats = {"computed": 0, "memory_hits": 0, "disk_hits": 0, "forwards": 0, "backwards": 0}
        self.predictor = None

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run, layer: str | None = None, device="auto", disk_cache=None, **kwargs) -> "CamExplainer":
        """Explainer of a run or ensemble directory (via ``runs.load_predictor``)."""
        from mai_core.runs import RunDir, load_predictor

        rd = run if isinstance(run, RunDir) else RunDir(run)
        predictor = load_predictor(rd.path, device=_pick_device(device))
        model = getattr(predictor, "model", None)
        if model is None:
            raise MaiError(f"run {rd.path} has no torch model to explain",
                           hint="Grad-CAM needs a trained network (not a feature-regression baseline)")
        cfg = predictor.config or {}
        name = None if cfg.get("kind") == "ensemble" else (cfg.get("model") or {}).get("backbone")
        exp = cls(model, predictor.genes, layer=layer, device=device, backbone_name=name,
                  run_key=run_key(rd.path), disk_cache=disk_cache, **kwargs)
        exp.predictor = predictor
        return exp

    # -- public API ------------------------------------------------------------------------------
    @property
    def layer_name(self) -> str:
        return self.layers.label

    def gene_indices(self, genes: Sequence[str | int]) -> list[int]:
        out, problems = [], []
        for g in genes:
            if isinstance(g, (int, np.integer)):
                if not 0 <= int(g) < len(self.genes):
                    problems.append(Problem("genes", f"index {g} out of range 0..{len(self.genes) - 1}"))
                    continue
                out.append(int(g))
            elif g in self._gene_index:
                out.append(self._gene_index[g])
            else:
                problems.append(_unknown(g, self.genes, "gene", "the run's genes.txt"))
        if problems:
            raise MaiError(f"{len(problems)} gene(s) are not predicted by this model", problems)
        return out

    def explain(self, images, genes: Sequence[str | int], method: str = "gradcam",
                progress: bool = False) -> CamResult:
        """CAMs for every (image, gene): one forward per image batch, one short backward per gene."""
        with self._lock:
            return self._explain(images, genes, method, progress)

    def _explain(self, images, genes, method, progress) -> CamResult:
        spec = check_method(method)
        idx = self.gene_indices(genes)
        x = to_input(images, "cpu")
        keys = [image_key(x[i]) for i in range(x.shape[0])]
        size = (int(x.shape[-1]), int(x.shape[-2]))
        raw: dict[tuple, tuple] = {}
        todo: list[int] = []  # images with at least one missing gene
        for i, k in enumerate(keys):
            missing = False
            for g in idx:
                hit = self._lookup((k, g, spec.name))
                if hit is None:
                    missing = True
                else:
                    raw[(i, g)] = hit
            if missing or k not in self._pred_cache:
                todo.append(i)
        batches = [todo[s:s + self.image_batch] for s in range(0, len(todo), self.image_batch)]
        it = batches
        if progress and batches:
            from tqdm import tqdm

            it = tqdm(batches, desc=f"{spec.label} maps", unit="batch", leave=False)
        for batch in it:
            need = sorted({g for i in batch for g in idx if (i, g) not in raw})
            maps, preds = self._compute(x[batch], need, spec)
            for j, i in enumerate(batch):
                self._remember_pred(keys[i], preds[j])
                for col, g in enumerate(need):
                    entry = tuple(m[j, col] for m in maps)
                    raw[(i, g)] = entry
                    self._store((keys[i], g, spec.name), entry)
        n, G = x.shape[0], len(idx)
        cams = np.empty((n, G, size[1], size[0]), dtype=np.float32)
        for i in range(n):
            layers = [np.stack([raw[(i, g)][li] for g in idx]) for li in range(len(self.layers.modules))]
            cams[i] = _finalize(layers, size)
        predicted = np.stack([self._pred_cache[k][idx] for k in keys]) if n else np.zeros((0, G), np.float32)
        return CamResult(cams, predicted.astype(np.float32), [self.genes[g] for g in idx], spec.name,
                         self.layer_name)

    def predict(self, images) -> np.ndarray:
        """Model outputs (N×G, all genes) for images, reusing the outputs of CAM forward passes."""
        import torch

        x = to_input(images, "cpu")
        keys = [image_key(x[i]) for i in range(x.shape[0])]
        todo = [i for i, k in enumerate(keys) if k not in self._pred_cache]
        if todo:
            with torch.no_grad():
                out = self.model(x[todo].to(self.device)).float().cpu().numpy()
            for j, i in enumerate(todo):
                self._remember_pred(keys[i], out[j])
        return np.stack([self._pred_cache[k] for k in keys])

    def library_cams(self, images, gene: str | int, method: str = "gradcam") -> np.ndarray:
        """The plain per-gene library call (N×H×W): the reference the shared path must reproduce."""
        spec = check_method(method)
        g = self.gene_indices([gene])[0]
        x = to_input(images, self.device)
        with self._lock:
            cam = spec.cam_class()(model=self.model, target_layers=self.layers.modules,
                                   reshape_transform=self.layers.reshape)
            if spec.name == "scorecam":
                cam.batch_size = self.score_batch
            try:
                return cam(input_tensor=x, targets=[GeneTarget(g)] * x.shape[0])
            finally:
                cam.activations_and_grads.release()
                self.model.zero_grad(set_to_none=True)  # the library's backward filled parameter grads

    def clear_cache(self) -> None:
        """Forget every cached map and prediction (in memory; the disk cache stays)."""
        with self._lock:
            self._cache.clear()
            self._pred_cache.clear()

    # -- computation -----------------------------------------------------------------------------
    def _cam_object(self, spec: CamMethod):
        """A library CAM instance used only for its map formula (its hooks are removed at once)."""
        obj = self._cam_objects.get(spec.name)
        if obj is None:
            obj = spec.cam_class()(model=self.model, target_layers=self.layers.modules,
                                   reshape_transform=self.layers.reshape)
            obj.activations_and_grads.release()
            self._cam_objects[spec.name] = obj
        return obj

    def _reshape(self, t):
        return t if self.layers.reshape is None else self.layers.reshape(t)

    def _compute(self, x, genes: list[int], spec: CamMethod):
        """Raw per-layer maps (list over layers of B×len(genes)×h×w) and predictions (B×G_all).

        One forward for the batch; gradient methods then run one backward per gene from the output to
        the target layer only (parameters are not differentiated).
        """
        import torch

        x = x.to(self.device)
        need_grad = spec.uses_gradients
        acts: list = [None] * len(self.layers.modules)
        handles = []
        for li, m in enumerate(self.layers.modules):
            def hook(_m, _inp, out, li=li):
                if not need_grad:
                    acts[li] = out
                    return None
                # The target layer's output becomes a leaf: the layers before it build no autograd graph
                # and each gene's backward stops here. "* 1.0" keeps later in-place ops legal.
                leaf = out.detach().requires_grad_(True)
                acts[li] = leaf
                return leaf * 1.0
            handles.append(m.register_forward_hook(hook))
        frozen = [p for p in self.model.parameters() if p.requires_grad] if need_grad else []
        try:
            for p in frozen:
                p.requires_grad_(False)
            with torch.enable_grad() if need_grad else torch.no_grad():
                out = self.model(x)
        finally:
            for p in frozen:
                p.requires_grad_(True)
            for h in handles:
                h.remove()
        self.stats["forwards"] += 1
        if not torch.is_tensor(out) or out.ndim != 2:
            raise MaiError(f"the model returns {type(out).__name__} {getattr(out, 'shape', '')}, "
                           "expected a B×G tensor of gene predictions")
        preds = out.detach().float().cpu().numpy()
        act_np = [self._reshape(a.detach()).float().cpu().numpy() for a in acts]
        B = x.shape[0]
        maps = [np.empty((B, len(genes)) + a.shape[2:], dtype=np.float32) for a in act_np]
        if spec.name == "eigencam":
            obj = self._cam_object(spec)
            for li, a in enumerate(act_np):
                m = np.maximum(obj.get_cam_image(x, self.layers.modules[li], None, a, None, False), 0)
                maps[li][:] = m[:, None]
        elif spec.name == "scorecam":
            weights = self._score_weights(x, act_np, genes)  # list over layers of B×g×C
            for li, a in enumerate(act_np):
                maps[li][:] = np.maximum(np.einsum("bgc,bchw->bghw", weights[li], a), 0)
        else:
            obj = self._cam_object(spec)
            for s in range(0, len(genes), self.gene_chunk):
                chunk = genes[s:s + self.gene_chunk]
                grads = self._gene_grads(out, acts, chunk)  # list over layers of K×B×C×h×w
                for li, a in enumerate(act_np):
                    k = len(chunk)
                    gr = grads[li].reshape((k * B,) + grads[li].shape[2:])
                    rep = np.broadcast_to(a[None], (k,) + a.shape).reshape((k * B,) + a.shape[1:])
                    m = obj.get_cam_image(x, self.layers.modules[li], None, rep, gr, False)
                    m = np.maximum(m, 0).reshape((k, B) + m.shape[1:])
                    maps[li][:, s:s + k] = m.transpose(1, 0, 2, 3)
        del out, acts
        self.stats["computed"] += B * len(genes)
        return maps, preds

    def _gene_grads(self, out, acts, genes: list[int]) -> list[np.ndarray]:
        """d out[:, g] / d activation for each gene (list over layers of K×B×C×h×w, reshaped)."""
        import torch

        per_layer: list[list] = [[] for _ in acts]
        for g in genes:
            grads = torch.autograd.grad(out[:, g].sum(), acts, retain_graph=True, allow_unused=True)
            self.stats["backwards"] += 1
            for li, (a, gr) in enumerate(zip(acts, grads)):
                gr = torch.zeros_like(a) if gr is None else gr
                per_layer[li].append(self._reshape(gr).float().cpu().numpy())
        return [np.stack(p) for p in per_layer]

    def _score_weights(self, x, act_np: list[np.ndarray], genes: list[int]) -> list[np.ndarray]:
        """Score-CAM channel weights for every gene at once (softmax over channels of masked scores)."""
        import torch

        out_w = []
        with torch.no_grad():
            for a in act_np:
                at = torch.from_numpy(a).to(self.device)
                up = torch.nn.functional.interpolate(at, size=x.shape[-2:], mode="bilinear", align_corners=True)
                flat = up.flatten(2)
                lo, hi = flat.min(-1)[0][..., None, None], flat.max(-1)[0][..., None, None]
                up = (up - lo) / (hi - lo + 1e-8)
                B, C = up.shape[:2]
                w = np.empty((B, len(genes), C), dtype=np.float32)
                for b in range(B):
                    scores = []
                    for s in range(0, C, self.score_batch):
                        masked = x[b][None] * up[b, s:s + self.score_batch, None]
                        scores.append(self.model(masked)[:, genes].float())
                        self.stats["forwards"] += 1
                    sc = torch.cat(scores)  # C×g
                    w[b] = torch.softmax(sc.T, dim=-1).cpu().numpy()
                out_w.append(w)
        return out_w

    # -- caches ----------------------------------------------------------------------------------
    def _layer_tag(self) -> str:
        return hashlib.sha1("|".join(self.layers.names).encode()).hexdigest()[:10]

    def _disk_path(self, key: tuple) -> Path:
        image, g, method = key
        return self.disk_cache / self.run_key / self._layer_tag() / method / image[:2] / f"{image}_{g}.npz"

    def _lookup(self, key: tuple):
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.stats["memory_hits"] += 1
            return hit
        if self.disk_cache is not None:
            p = self._disk_path(key)
            if p.is_file():
                try:
                    with np.load(p) as z:
                        entry = tuple(z[f"l{i}"] for i in range(len(self.layers.modules)))
                except (OSError, ValueError, KeyError):
                    return None
                self.stats["disk_hits"] += 1
                self._store(key, entry, write=False)
                return entry
        return None

    def _store(self, key: tuple, entry: tuple, write: bool = True) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if write and self.disk_cache is not None:
            from mai_core.io import atomic_path

            p = self._disk_path(key)
            with atomic_path(p, suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **{f"l{i}": m for i, m in enumerate(entry)})

    def _remember_pred(self, key: str, pred: np.ndarray) -> None:
        self._pred_cache[key] = np.asarray(pred, dtype=np.float32)
        self._pred_cache.move_to_end(key)
        while len(self._pred_cache) > self.cache_size:
            self._pred_cache.popitem(last=False)


def _pick_device(device) -> str:
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def run_key(path) -> str:
    """Identity of a run's weights: its resolved path plus checkpoint sizes and times."""
    p = Path(path).expanduser().resolve()
    h = hashlib.sha1(str(p).encode())
    for ck in sorted((p / "checkpoints").glob("*.safetensors")) if (p / "checkpoints").is_dir() else []:
        st = ck.stat()
        h.update(f"{ck.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for name in ("config.yaml", "genes.txt"):
        if (p / name).is_file():
            h.update((p / name).read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Gene selection and names
# ----------------------------------------------------------------------------------------------


def _unknown(name: str, available: Sequence[str], what: str, source: str) -> Problem:
    lower = {a.lower(): a for a in available}
    close = difflib.get_close_matches(name, list(available), n=4, cutoff=0.6)
    if name.lower() in lower and lower[name.lower()] not in close:
        close.insert(0, lower[name.lower()])
    return Problem(f"{what} {name!r}", f"not in {source}",
                   f"did you mean {', '.join(close)}?" if close else f"pick a {what} listed in {source}")


def gene_prefix(name: str) -> str:
    """Name family of a gene, by the same rule as prefix clustering (LINC01770 → LINC, AL357054.4 → AL),
    upper-cased; a name without such a prefix (GAPDH) is its own family."""
    from mai_core.genes import gene_prefix as _prefix

    found = _prefix(name)
    return found.upper() if found else name


def gene_families(genes: Sequence[str]) -> list[str]:
    """Name families (see :func:`gene_prefix`) of these genes, largest first (ties by name)."""
    from collections import Counter

    counts = Counter(gene_prefix(g) for g in genes)
    return sorted(counts, key=lambda f: (-counts[f], f))


def select_genes(available: Sequence[str], genes: Sequence[str] | None = None, prefix: str | None = None,
                 group: str | None = None, grouping=None, limit: int | None = None) -> list[str]:
    """Genes chosen by explicit names, a name prefix or a group of a Grouping; MaiError on no match."""
    available = list(available)
    known = set(available)
    chosen: list[str] = []
    if genes:
        problems = [_unknown(g, available, "gene", "the run's genes") for g in genes if g not in known]
        if problems:
            raise MaiError(f"{len(problems)} requested gene(s) are not predicted by the run", problems)
        chosen.extend(genes)
    if prefix:
        hits = [g for g in available if g.upper().startswith(prefix.upper())]
        if not hits:
            fams = sorted({gene_prefix(g) for g in available})
            close = difflib.get_close_matches(prefix.upper(), fams, n=5, cutoff=0.5)
            raise MaiError(f"no gene of the run starts with {prefix!r}",
                           [Problem("--prefix", f"{prefix!r} matches none of {len(available)} genes",
                                    f"did you mean {', '.join(close)}?" if close else
                                    "name families present: " + ", ".join(fams[:20]))])
        chosen.extend(hits)
    if group is not None:
        if grouping is None:
            raise MaiError("a gene group was requested but the run has no grouping")
        members = grouping.members()
        if str(group) not in members:
            raise MaiError(f"group {group!r} not in the run's grouping",
                           [Problem("group", f"{group!r} unknown", "groups: " + ", ".join(list(members)[:20]))])
        chosen.extend(g for g in members[str(group)] if g in known)
    chosen = list(dict.fromkeys(chosen))
    if not chosen:
        raise MaiError("no genes selected", hint="pass --genes G1,G2 or --prefix PREFIX")
    return chosen[:limit] if limit else chosen


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


def _block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return a
    h, w = a.shape[-2] // factor * factor, a.shape[-1] // factor * factor
    a = a[..., :h, :w]
    return a.reshape(a.shape[:-2] + (h // factor, factor, w // factor, factor)).mean(axis=(-3, -1))


def cam_similarity(cams: np.ndarray, genes: Sequence[str] | None = None, factor: int = 4) -> pd.DataFrame:
    """G×G similarity of genes' maps: Pearson correlation per image, averaged over images.

    ``cams`` N×G×H×W (maps are block-averaged by ``factor`` first). Pairs involving a constant map on
    an image skip that image; a pair with no usable image is NaN. The diagonal is 1.
    """
    import pandas as pd

    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim == 3:
        cams = cams[None]
    n, G = cams.shape[:2]
    small = _block_mean(cams, factor).reshape(n, G, -1).astype(np.float64)
    total = np.zeros((G, G))
    count = np.zeros((G, G))
    for i in range(n):
        z = small[i] - small[i].mean(axis=1, keepdims=True)
        norm = np.linalg.norm(z, axis=1)
        ok = norm > 1e-12
        z[ok] /= norm[ok, None]
        c = z @ z.T
        valid = ok[:, None] & ok[None, :]
        total[valid] += c[valid]
        count[valid] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.fill_diagonal(sim, 1.0)
    names = list(genes) if genes is not None else [str(i) for i in range(G)]
    return pd.DataFrame(np.clip(sim, -1, 1), index=names, columns=names)


def prefix_similarity(sim: pd.DataFrame, prefix: Callable[[str], str] = gene_prefix) -> dict:
    """Mean map similarity of gene pairs sharing a name prefix vs pairs that do not.

    Returns within, between, difference (within − between), pair counts and the prefix groups.
    """
    genes = list(sim.index)
    fam = [prefix(g) for g in genes]
    vals = sim.to_numpy()
    iu = np.triu_indices(len(genes), k=1)
    same = np.array([fam[i] == fam[j] for i, j in zip(*iu)], dtype=bool)
    pair_vals = vals[iu]
    finite = np.isfinite(pair_vals)
    w = pair_vals[same & finite]
    b = pair_vals[~same & finite]
    within = float(w.mean()) if w.size else float("nan")
    between = float(b.mean()) if b.size else float("nan")
    groups: dict[str, list[str]] = {}
    for g, f in zip(genes, fam):
        groups.setdefault(f, []).append(g)
    return {"within": within, "between": between, "difference": within - between,
            "n_within_pairs": int(w.size), "n_between_pairs": int(b.size),
            "groups": {k: v for k, v in groups.items() if len(v) > 1}}


def faithfulness(cams: np.ndarray, masks: np.ndarray, tolerance: int = 8) -> dict:
    """How well maps point at known regions.

    ``cams`` and ``masks`` are N×H×W (or any matching leading shape; masks broadcast over genes when
    given N×H×W for N×G×H×W maps). Per pair:

    - ``energy_ratio`` = (share of the map's total inside the mask) / (mask's share of the area);
      > 1 means the map concentrates on the region;
    - ``inside_outside`` = mean map value inside / mean outside;
    - ``hit`` = the map's maximum lies within ``tolerance`` pixels of the mask (pointing game);
      ``chance`` = fraction of pixels within ``tolerance`` of the mask (hit rate of a random point).

    Pairs with an empty or full mask or an all-zero map are skipped (``n`` used of ``n_pairs``).
    Returns means over pairs (``inside_outside``: median, robust to near-zero outside means) plus
    ``per_pair`` (a DataFrame).
    """
    import pandas as pd
    from scipy import ndimage

    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if masks.shape != cams.shape:
        if cams.ndim == 4 and masks.ndim == 3 and masks.shape[0] == cams.shape[0]:
            masks = np.broadcast_to(masks[:, None], cams.shape)
        else:
            raise ValueError(f"masks {masks.shape} do not match maps {cams.shape}")
    c = cams.reshape((-1,) + cams.shape[-2:])
    m = masks.reshape((-1,) + masks.shape[-2:])
    rows = []
    dist_cache: dict[str, np.ndarray] = {}
    for k in range(c.shape[0]):
        cam, mask = c[k], m[k]
        area = mask.mean()
        total = cam.sum()
        if area == 0 or area == 1 or total <= 0:
            rows.append({"pair": k, "used": False})
            continue
        inside = cam[mask].sum() / total
        mean_in, mean_out = cam[mask].mean(), cam[~mask].mean()
        key = hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()
        dist = dist_cache.get(key)
        if dist is None:
            dist = dist_cache.setdefault(key, ndimage.distance_transform_edt(~mask))
        near = dist <= tolerance
        peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
        rows.append({"pair": k, "used": True, "area": float(area), "energy_inside": float(inside),
                     "energy_ratio": float(inside / area),
                     "inside_outside": float(mean_in / mean_out) if mean_out > 0 else float("inf"),
                     "hit": bool(near[peak]), "chance": float(near.mean())})
    df = pd.DataFrame(rows)
    used = df[df["used"]] if len(df) else df
    if not len(used):
        return {"n": 0, "n_pairs": int(len(df)), "energy_ratio": float("nan"), "energy_ratio_median": float("nan"),
                "inside_outside": float("nan"), "hit_rate": float("nan"), "chance_hit_rate": float("nan"),
                "mask_area": float("nan"), "per_pair": df}
    io_vals = used["inside_outside"].replace(np.inf, np.nan)
    return {"n": int(len(used)), "n_pairs": int(len(df)), "energy_ratio": float(used["energy_ratio"].mean()),
            "energy_ratio_median": float(used["energy_ratio"].median()),
            "inside_outside": float(io_vals.median()),
            "hit_rate": float(used["hit"].mean()), "chance_hit_rate": float(used["chance"].mean()),
            "mask_area": float(used["area"].mean()), "per_pair": df}


def load_masks(data_root, ids: Sequence[str], region: str) -> np.ndarray:
    """Planted region masks of the demo dataset (``masks/<ID>.npz``): bool N×224×224 for ``region``."""
    root = Path(data_root)
    out = []
    for i in ids:
        p = root / "masks" / f"{i}.npz"
        if not p.is_file():
            raise MaiError(f"no region mask for {i!r}", [Problem(str(p), "not found",
                           "faithfulness needs a dataset with known regions (the generated demo)")])
        with np.load(p) as z:
            if region not in z.files:
                raise MaiError(f"mask file {p} has no region {region!r}", hint=f"regions: {', '.join(z.files)}")
            out.append(z[region].astype(bool))
    return np.stack(out)


def gene_modules(data_root) -> dict[str, str | None]:
    """gene → planted module name (None for genes in no module) from a demo dataset's truth.json."""
    p = Path(data_root) / "truth.json"
    if not p.is_file():
        raise MaiError(f"{p} not found", hint="planted modules are known only for the generated demo dataset")
    return dict(json.loads(p.read_text()).get("gene_module", {}))


# ----------------------------------------------------------------------------------------------
# Display
# ----------------------------------------------------------------------------------------------

COLORMAPS = ("jet", "inferno", "viridis", "magma", "turbo")


def _cmap(name: str):
    import matplotlib

    if name not in matplotlib.colormaps:
        raise MaiError(f"unknown colour map {name!r}", hint=f"use one of {', '.join(COLORMAPS)}")
    return matplotlib.colormaps[name]


def heatmap(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A [0, 1] map → uint8 H×W×3 colours."""
    rgb = _cmap(cmap)(np.clip(np.asarray(cam, dtype=np.float32), 0, 1))[..., :3]
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Map blended over the image: uint8 H×W×3; ``alpha`` = opacity of the map (0 = image only)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise MaiError(f"opacity must be between 0 and 1, got {alpha}")
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != img.shape[:2]:
        import cv2

        cam = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = heatmap(cam, cmap).astype(np.float32)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def colorbar(cmap: str = "jet", width: int = 224, height: int = 12) -> np.ndarray:
    """A horizontal colour bar (uint8 height×width×3), low on the left."""
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    return heatmap(ramp, cmap)


def save_png(path, rgb: np.ndarray) -> None:
    from PIL import Image

    from mai_core.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"


def resolve_ids(ds, ids: Sequence[str], split: str | None) -> list[tuple[str, str]]:
    """(id, split) pairs; ``split=None`` looks in train then test. MaiError with close IDs otherwise."""
    if split not in (None, "train", "test"):
        raise MaiError(f"unknown split {split!r}", [Problem("--split", f"{split!r}", "use train or test")])
    pools = {"train": set(ds.ids), "test": set(ds.test_ids)}
    out, problems = [], []
    for i in ids:
        found = None
        for s in ([split] if split else ["train", "test"]):
            if i in pools[s]:
                found = s
                break
        if found is None:
            space = list(pools[split]) if split else list(pools["train"] | pools["test"])
            problems.append(_unknown(i, space, "image ID", f"the {split or 'train/test'} split of {ds.root}"))
        else:
            out.append((i, found))
    if problems:
        raise MaiError(f"{len(problems)} image ID(s) not found", problems)
    if not out:
        raise MaiError("no image IDs given", hint="pass --ids ID1,ID2")
    return out


def write_gradcam(run, data, ids: Sequence[str], genes: Sequence[str] | None = None, prefix: str | None = None,
                  method: str = "gradcam", layer: str | None = None, split: str | None = None, out=None,
                  alpha: float = 0.5, cmap: str = "jet", device="auto", disk_cache=None,
                  progress: bool = False) -> pd.DataFrame:
    """Overlay PNGs, raw maps (.npy) and ``index.csv`` for (ids × genes) into ``out`` (atomically).

    Returns the index: id, split, gene, method, layer, predicted, true, png, npy (paths relative to out).
    """
    import pandas as pd

    from mai_core.dataset import load_dataset
    from mai_core.io import atomic_dir, write_csv
    from mai_core.runs import RunDir

    check_method(method)
    _cmap(cmap)
    if not 0.0 <= float(alpha) <= 1.0:
        raise MaiError(f"--alpha must be between 0 and 1, got {alpha}")
    rd = RunDir(run)
    if not rd.path.is_dir():
        from mai_core.workspace import runs_dir

        named = runs_dir() / str(run)
        if named.is_dir():
            rd = RunDir(named)
        else:
            raise MaiError(f"run {run!r} not found", [Problem("--run", f"{run} is not a folder",
                                                                 "pass a run directory or a run name under workspace/runs")])
    if out is None:
        raise MaiError("no output folder", hint="pass --out DIR")
    run_genes = rd.read_genes()
    ds = load_dataset(data)
    problems: list[Problem] = []
    chosen, pairs = [], []
    try:
        chosen = select_genes(run_genes, genes=genes, prefix=prefix)
    except MaiError as exc:
        problems += exc.problems or [Problem("genes", exc.message, exc.hint)]
    try:
        pairs = resolve_ids(ds, ids, split)
    except MaiError as exc:
        problems += exc.problems or [Problem("--ids", exc.message, exc.hint)]
    if problems:
        raise MaiError(f"{len(problems)} unknown gene(s)/image ID(s)", problems)
    explainer = CamExplainer.from_run(rd, layer=layer, device=device, disk_cache=disk_cache)
    images = np.stack([ds.image(i, s) for i, s in pairs])
    result = explainer.explain(images, chosen, method=method, progress=progress)
    true_lookup: dict[tuple[str, str], float] = {}
    for i, s in pairs:
        frame = ds.train if s == "train" else ds.test
        if frame is None:
            continue
        row = frame.index[frame["ID"] == i]
        for g in chosen:
            if g in frame.columns and len(row):
                true_lookup[(i, g)] = float(frame.at[row[0], g])
    rows = []
    with atomic_dir(out, lambda p: (p / "index.csv").is_file(), "Grad-CAM output") as tmp:
        (tmp / "overlays").mkdir()
        (tmp / "maps").mkdir()
        for n, (i, s) in enumerate(pairs):
            for k, g in enumerate(chosen):
                stem = f"{_safe(i)}__{_safe(g)}__{_safe(method)}"
                png, npy = f"overlays/{stem}.png", f"maps/{stem}.npy"
                save_png(tmp / png, overlay(images[n], result.cams[n, k], alpha, cmap))
                np.save(tmp / npy, result.cams[n, k].astype(np.float32))
                rows.append({"id": i, "split": s, "gene": g, "method": method, "layer": result.layer,
                             "predicted": float(result.predicted[n, k]),
                             "true": true_lookup.get((i, g), float("nan")), "png": png, "npy": npy})
        index = pd.DataFrame(rows)
        write_csv(tmp / "index.csv", index)
    return index
