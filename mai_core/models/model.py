"""The expression model: backbone (from mai_core.models.backbones) + one head per gene group.

``GeneModel(x)`` takes float images in [0, 1] (or uint8) B×3×H×W, normalises them with the backbone's
mean/std, and returns *standardised* expression B×G in genes.txt order (training space).
``OriginalUnits(model)`` wraps it to return expression in the dataset's own units (for prediction and
Grad-CAM). Heads can predict a PCA-reduced target per group (k components mapped back to the group's
genes through a fixed basis), which denoises noisy genes on small data.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ("linear", "mlp")


def backbone_and_info(name: str, weights: str = "auto", device="cpu", drop_path: float = 0.0,
                    quiet: bool = False):
    """Backbone (timm model, num_classes=0) + weights info dict via the shared registry.

    Returns (module, info) where info has at least source, path, warning, mean, std.
    """
    from mai_core.models import backbones

    kwargs = {}
    if drop_path:
        kwargs["drop_path_rate"] = float(drop_path)
    try:
        model, info = backbones.create_backbone(name, weights=weights, device=device, **kwargs)
    except TypeError:
        # registries that do not pass extra timm arguments: build without stochastic depth
        model, info = backbones.create_backbone(name, weights=weights, device=device)
    info_d = _info_dict(info)
    if info_d.get("warning") and not quiet:
        print(f"WARNING: {info_d['warning']}", file=sys.stderr)
    return model, info_d


def _info_dict(info) -> dict:
    if isinstance(info, dict):
        d = dict(info)
    else:
        d = {k: getattr(info, k) for k in ("source", "path", "warning", "mean", "std") if hasattr(info, k)}
        for extra in ("name", "timm_name", "num_features", "input_size"):
            if hasattr(info, extra):
                d[extra] = getattr(info, extra)
    d["mean"] = [float(v) for v in (d.get("mean") or (0.485, 0.456, 0.406))]
    d["std"] = [float(v) for v in (d.get("std") or (0.229, 0.224, 0.225))]
    d["path"] = None if d.get("path") is None else str(d["path"])
    d["source"] = str(d.get("source", "unknown"))
    d["warning"] = d.get("warning") or None
    for k, v in list(d.items()):
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


def _num_features(backbone: nn.Module) -> int:
    n = getattr(backbone, "num_features", None)
    if n:
        return int(n)
    with torch.no_grad():
        return int(backbone(torch.zeros(1, 3, 64, 64)).shape[1])


class GroupHead(nn.Module):
    """Head for one gene group: linear or MLP; optional PCA basis (k comps → n genes)."""

    def __init__(self, in_features: int, n_genes: int, kind: str = "linear", hidden: int = 512,
                 dropout: float = 0.0, pca_k: int = 0):
        super().__init__()
        self.n_genes = n_genes
        self.pca_k = int(pca_k) if pca_k and 0 < pca_k < n_genes else 0
        n_out = self.pca_k or n_genes
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if kind == "linear":
            self.net = nn.Linear(in_features, n_out)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, n_out))
        else:
            raise ValueError(f"unknown head kind {kind!r}")
        if self.pca_k:
            self.register_buffer("basis", torch.zeros(self.pca_k, n_genes))
            self.register_buffer("offset", torch.zeros(n_genes))
        last = self.net if isinstance(self.net, nn.Linear) else self.net[-1]
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = self.net(self.drop(f))
        if self.pca_k:
            z = z @ self.basis.to(z.dtype) + self.offset.to(z.dtype)
        return z

    def last_linear(self) -> nn.Linear:
        return self.net if isinstance(self.net, nn.Linear) else self.net[-1]


class GeneModel(nn.Module):
    """Backbone + per-group heads; outputs standardised expression in gene order."""

    def __init__(self, backbone: nn.Module, n_genes: int, groups: list[list[int]] | None = None,
                 head: str = "linear", hidden: int = 512, dropout: float = 0.0, pca_k: int = 0,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), image_size: int = 224,
                 num_features: int | None = None):
        super().__init__()
        if head not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {head!r}")
        self.backbone = backbone
        self.n_genes = int(n_genes)
        self.image_size = int(image_size)
        groups = [list(range(n_genes))] if not groups else [list(g) for g in groups]
        covered = sorted(i for g in groups for i in g)
        if covered != list(range(n_genes)):
            raise ValueError("gene groups must cover every gene exactly once")
        self.groups = groups
        nf = num_features or _num_features(backbone)
        self.num_features = nf
        self.heads = nn.ModuleList(
            GroupHead(nf, len(g), head, hidden, dropout, min(pca_k, len(g) - 1) if pca_k else 0) for g in groups)
        order = torch.tensor([i for g in groups for i in g], dtype=torch.long)
        self.register_buffer("inverse_order", torch.argsort(order), persistent=False)
        self.register_buffer("in_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("in_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("y_mean", torch.zeros(n_genes))
        self.register_buffer("y_std", torch.ones(n_genes))

    # -- pieces --------------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images → normalised float at the model's resolution."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.image_size)
        return (x - self.in_mean.to(x.dtype)) / self.in_std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(x))

    def head_forward(self, f: torch.Tensor) -> torch.Tensor:
        outs = [h(f) for h in self.heads]
        z = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if len(outs) > 1:
            z = z.index_select(1, self.inverse_order)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_forward(self.features(x))

    def to_original(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self.y_std + self.y_mean

    # -- set-up --------------------------------------------------------------------------------
    def set_target_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.y_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.y_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def fit_pca(self, z_train: np.ndarray) -> None:
        """Set each PCA head's basis from standardised training targets (n × G)."""
        for head, cols in zip(self.heads, self.groups):
            if not head.pca_k:
                continue
            y = np.asarray(z_train[:, cols], dtype=np.float64)
            mu = y.mean(0)
            _, _, vt = np.linalg.svd(y - mu, full_matrices=False)
            k = min(head.pca_k, vt.shape[0])
            basis = np.zeros((head.pca_k, len(cols)))
            basis[:k] = vt[:k]
            head.basis.copy_(torch.as_tensor(basis, dtype=torch.float32))
            head.offset.copy_(torch.as_tensor(mu, dtype=torch.float32))


class ModelFeatures(nn.Module):
    """A GeneModel's own input preparation and backbone: images → pooled features (for the feature cache)."""

    def __init__(self, model: GeneModel):
        super().__init__()
        self.model = model

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class EnsembleFeatures(nn.Module):
    """An ensemble's members' pooled features side by side: images → [f_1 | f_2 | …] (for context heads)."""

    def __init__(self, ensemble: MeanEnsemble):
        super().__init__()
        self.ensemble = ensemble

    @property
    def num_features(self) -> int:
        return int(sum(m.num_features for m in self.ensemble.members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.features(x) for m in self.ensemble.members], dim=1)


class OriginalUnits(nn.Module):
    """Wrap a GeneModel (or an ensemble of them) so that forward returns original-unit expression."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    @property
    def backbone(self):
        return getattr(self.inner, "backbone", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.to_original(self.inner(x))


class MeanEnsemble(nn.Module):
    """Weighted mean of several models' original-unit outputs (all share the gene order)."""

    def __init__(self, models: list[nn.Module], weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(models)
        w = torch.tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    @property
    def backbone(self):
        return self.members[0].backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for w, m in zip(self.weights, self.members):
            y = m.to_original(m(x)) * w
            out = y if out is None else out + y
        return out


# -- partial fine-tuning ---------------------------------------------------------------------------
_BLOCK_CONTAINERS = ("blocks", "stages", "layers", "features")


def backbone_units(backbone: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[int]]:
    """Ordered parameter-holding units of a backbone and the positions of its stage/block units.

    Stages are the children of a ``blocks``/``stages``/``layers`` container or ``layerN`` children
    (ResNets); the stem comes before them and the final conv/norm after.
    """
    units: list[tuple[str, nn.Module]] = []
    block_pos: list[int] = []
    for name, child in backbone.named_children():
        if name in _BLOCK_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            for sub_name, sub in child.named_children():
                if any(True for _ in sub.parameters()):
                    block_pos.append(len(units))
                    units.append((f"{name}.{sub_name}", sub))
            continue
        if not any(True for _ in child.parameters()):
            continue
        if name.startswith("layer") and name[5:].isdigit():
            block_pos.append(len(units))
        units.append((name, child))
    # top-level parameters not inside a child (e.g. ViT cls_token / pos_embed) count as stem
    return units, block_pos


def set_trainable_blocks(backbone: nn.Module, train_blocks: int) -> dict:
    """Freeze all but the last ``train_blocks`` stages (and what follows them); -1 trains everything.

    Frozen parts keep their BatchNorm statistics (see :func:`frozen_bn_eval`). Returns a summary.
    """
    units, block_pos = backbone_units(backbone)
    n_params = sum(p.numel() for p in backbone.parameters())
    if train_blocks is None or train_blocks < 0:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return {"trainable_units": [n for n, _ in units], "trainable_params": n_params, "total_params": n_params}
    for p in backbone.parameters():
        p.requires_grad_(False)
    if not block_pos:
        block_pos = list(range(len(units)))
    if train_blocks == 0:
        start = len(units) if not units else block_pos[-1] + 1
    else:
        start = block_pos[max(0, len(block_pos) - train_blocks)]
    trainable = units[start:]
    for _, m in trainable:
        for p in m.parameters():
            p.requires_grad_(True)
    return {"trainable_units": [n for n, _ in trainable],
            "trainable_params": sum(p.numel() for p in backbone.parameters() if p.requires_grad),
            "total_params": n_params}


def frozen_bn_eval(module: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen into eval mode (keep running stats)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()


def apply_drop_path(backbone, rate: float) -> int:
    """Give residual blocks stochastic depth (linearly increasing to ``rate``); returns #blocks changed."""
    if not rate:
        return 0
    from torch import nn

    try:
        from timm.layers import DropPath
    except ImportError:  # pragma: no cover
        return 0
    mods = [m for m in backbone.modules() if isinstance(getattr(m, "drop_path", None), nn.Module)]
    n = len(mods)
    for i, m in enumerate(mods):
        r = rate * i / max(1, n - 1)
        if isinstance(m.drop_path, nn.Identity) and r > 0:
            m.drop_path = DropPath(r)
    return n


def build_model(spec: dict, n_genes: int, groups: list[list[int]] | None, weights: str = "auto",
                device="cpu", quiet: bool = False) -> tuple[GeneModel, dict]:
    """Build a GeneModel from a resolved ``model`` config section.

    ``spec`` keys: backbone, head, hidden, dropout, pca_components, image_size, drop_path.
    """
    backbone, info = backbone_and_info(spec["backbone"], weights=weights, device="cpu",
                                     drop_path=float(spec.get("drop_path", 0.0) or 0.0), quiet=quiet)
    model = GeneModel(backbone, n_genes, groups, head=spec.get("head", "linear"),
                      hidden=int(spec.get("hidden", 512)), dropout=float(spec.get("dropout", 0.0)),
                      pca_k=int(spec.get("pca_components", 0) or 0), mean=info["mean"], std=info["std"],
                      image_size=int(spec.get("image_size", 224)))
    return model.to(device), info


def load_state(model: nn.Module, path) -> None:
    """Load a safetensors state dict into a model (strict)."""
    from safetensors.torch import load_file

    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inverse_order")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")


def save_state(model: nn.Module, path) -> None:
    """Save a model's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    from mai_core.io import atomic_path

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp))


def cosine_lr(step: int, total: int, warmup: int, min_ratio: float = 0.01) -> float:
    """Multiplier for linear warm-up then cosine decay to ``min_ratio``."""
    if total <= 0:
        return 1.0
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    t = min(max(t, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
