"""Perceptual distance between an image and its augmented version.

Two metrics, each with a labelled offline substitute:

* ``lpips``: LPIPS (Zhang et al. 2018), AlexNet variant, from the ``lpips`` package (which ships the
  linear-layer weights) plus torchvision's AlexNet ImageNet weights, used when pulled into the workspace
  cache (``python -m mai_core weights pull lpips-alex``), found in the torch hub cache
  (``<torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth``) or given explicitly.
  Substitute: ``lpips-style/efficientnet_lite0`` -- channel-unit-normalised activations of five
  EfficientNet-Lite0 stages, squared difference summed over channels, spatial mean, averaged over stages.
* ``dino``: 1 - cosine similarity of the self-supervised ViT-S/16 DINO embedding (timm
  ``vit_small_patch16_224.dino``), used when pulled (``weights pull dino``), in the Hugging Face cache on
  disk, or given explicitly. Substitute: ``cosine/efficientnet_lite0`` -- 1 - cosine of the pooled embedding.

Scoring itself downloads nothing (the Augmentation Lab offers the pull). The model actually used is
reported by ``PerceptualScorer.lpips_model`` / ``dino_model`` and in every score table. Identical images
have distance exactly 0.

Scoring an augmentation is geometry-aligned (:mod:`mai_core.augment.aligned`): the ``lpips`` and ``dino``
columns compare the augmented patch with the original moved by the same geometric transform (what the
augmentation does to stain and appearance; DINO on the global embeddings), the ``geometry`` column the
original with its moved self (LPIPS; how far the pixels moved), the ``hue`` column how far the colours turn
around the colour wheel (degrees, model-free).
"""

from __future__ import annotations

import json
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mai_core.augment.aligned import aligned_apply, aligned_distances, aligned_images, hue_rotation
from mai_core.augment.ops import AUGMENTATIONS, as_float_batch, get_spec, parse_aug_names
from mai_core.device import resolve_device
from mai_core.errors import MaiError, Problem

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
DINO_ARCH = "vit_small_patch16_224.dino"
DINO_REPO = "timm/vit_small_patch16_224.dino"
FALLBACK_BACKBONE = "efficientnet_lite0"
LPIPS_REAL = "lpips/alex"
DINO_REAL = f"dino/{DINO_ARCH}"
LPIPS_FALLBACK = f"lpips-style/{FALLBACK_BACKBONE}"
DINO_FALLBACK = f"cosine/{FALLBACK_BACKBONE}"
LPIPS_PULL, DINO_PULL = "python -m mai_core weights pull lpips-alex", "python -m mai_core weights pull dino"


def _pulled(name: str) -> Path | None:
    """The weights ``python -m mai_core weights pull NAME`` stored in the workspace cache, if any."""
    from mai_core.models.backbones import weights_cache_path

    p = weights_cache_path(name)
    return p if p.is_file() else None


def alexnet_weights_path() -> Path | None:
    """torchvision's AlexNet ImageNet weights: pulled into the workspace cache, else the torch hub cache."""
    p = _pulled("lpips-alex") or Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return p if p.is_file() else None


def dino_weights_path() -> Path | None:
    """The DINO ViT-S/16 weights: pulled into the workspace cache, else the Hugging Face cache (disk only)."""
    if (pulled := _pulled(DINO_ARCH)) is not None:
        return pulled
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            hit = try_to_load_from_cache(DINO_REPO, filename)
        except Exception:  # malformed cache folders must not break scoring
            hit = None
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def _read_weights(path: Path) -> dict:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def _unit(t: torch.Tensor, dim: int = 1, eps: float = 1e-10) -> torch.Tensor:
    return t / (t.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


class _LpipsAlex:
    """The LPIPS metric (AlexNet, v0.1 linear layers) with features computable once per image."""

    label = LPIPS_REAL

    def __init__(self, weights: Path, device: torch.device):
        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # pnet_rand: build AlexNet without torchvision's download; ImageNet weights are loaded below
            model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        sd = _read_weights(weights)
        feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        if not feats:
            raise MaiError(f"{weights} holds no AlexNet feature weights",
                           [Problem(str(weights), "no 'features.*' tensors", "use torchvision's alexnet-owt-7be5be79.pth")])
        for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
            for name, module in slice_.named_children():
                for pname, param in module.named_parameters(recurse=False):
                    key = f"{name}.{pname}"
                    if key not in feats:
                        raise MaiError(f"{weights} lacks AlexNet tensor features.{key}",
                                       [Problem(str(weights), f"missing features.{key}", "use torchvision's AlexNet weights")])
                    param.data.copy_(feats[key])
        self.model = model.eval().to(device)
        self._lpips = lpips

    @torch.no_grad()
    def features(self, x):
        m = self.model
        outs = m.net.forward(m.scaling_layer(x * 2.0 - 1.0))
        return [self._lpips.normalize_tensor(o) for o in outs]

    @torch.no_grad()
    def distance(self, fa, fb):
        m = self.model
        total = 0.0
        for k, (a, b) in enumerate(zip(fa, fb)):
            total = total + m.lins[k]((a - b) ** 2).mean(dim=(2, 3)).flatten()
        return total


class _DinoVit:
    """1 - cosine of the DINO ViT-S/16 class-token embedding."""

    label = DINO_REAL

    def __init__(self, weights: Path, device: torch.device):
        import timm

        model = timm.create_model(DINO_ARCH, pretrained=False, num_classes=0)
        sd = _read_weights(weights)
        missing, _ = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("head")]
        if missing:
            raise MaiError(f"{weights} does not fit {DINO_ARCH}",
                           [Problem(str(weights), f"missing tensors {missing[:3]}", f"use the {DINO_REPO} weights")])
        cfg = model.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1)
        self.model = model.eval().to(device)

    @torch.no_grad()
    def features(self, x):
        if x.shape[-2:] != (224, 224):
            x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        emb = self.model.forward_head(self.model.forward_features((x - self.mean) / self.std), pre_logits=True)
        return _unit(emb)

    @staticmethod
    def distance(fa, fb):
        # for unit vectors 1 - cos(a, b) == |a - b|^2 / 2, which is exactly 0 for equal embeddings
        return 0.5 * (fa - fb).pow(2).sum(dim=1)


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Inference-only speed-up: fold every BatchNorm that directly follows a convolution (same module,
    adjacent children) into the convolution's weights; a BatchNormAct's activation is kept. Modifies and
    returns ``model`` (which must be in eval mode and not be trained afterwards)."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (c_name, conv), (b_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.num_features != conv.out_channels or bn.running_mean is None:
                continue
            setattr(parent, c_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
                    if m is not None and not isinstance(m, nn.Identity)]
            setattr(parent, b_name, nn.Sequential(*rest) if rest else nn.Identity())
    return model


class _EfficientNetFeatures:
    """Both substitute metrics from one EfficientNet-Lite0 forward pass."""

    def __init__(self, device: torch.device):
        from mai_core.models.backbones import create_backbone

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a random-init warning is surfaced through ``note`` instead
            model, info = create_backbone(FALLBACK_BACKBONE, weights="auto", device=device)
        self.model = fold_batchnorm(model.eval())
        self.info = info
        self.mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)
        self.suffix = "" if info.pretrained else " (random init)"
        self.note = (f"{FALLBACK_BACKBONE} weights: {info.source}" + (f" ({info.path})" if info.path else "")
                     + (f"; {info.warning}" if info.warning else ""))

    @torch.no_grad()
    def features(self, x):
        final, inter = self.model.forward_intermediates((x - self.mean) / self.std)
        pooled = self.model.forward_head(final, pre_logits=True)
        return {"layers": [_unit(t) for t in inter], "pooled": _unit(pooled)}

    @staticmethod
    def lpips_distance(fa, fb):
        per_layer = [(a - b).pow(2).sum(dim=1).mean(dim=(1, 2)) for a, b in zip(fa["layers"], fb["layers"])]
        return torch.stack(per_layer, 0).mean(0)

    @staticmethod
    def cosine_distance(fa, fb):
        return 0.5 * (fa["pooled"] - fb["pooled"]).pow(2).sum(dim=1)


class PerceptualScorer:
    """Batched LPIPS and DINO distances (or their labelled substitutes), on GPU when present.

    ``lpips_weights`` / ``dino_weights``: explicit weight files (AlexNet torchvision state dict /
    ViT-S/16 DINO state dict); by default only files already in the local caches are used.
    ``use_pretrained_metrics=False`` forces the substitutes.
    """

    def __init__(self, device="auto", batch_size: int = 32, lpips_weights=None, dino_weights=None,
                 use_pretrained_metrics: bool = True):
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.notes: list[str] = []
        self._lpips = self._dino = self._fallback = None
        if use_pretrained_metrics:
            self._lpips = self._try(_LpipsAlex, lpips_weights, alexnet_weights_path,
                                    f"LPIPS: AlexNet ImageNet weights not on this machine (`{LPIPS_PULL}`)")
            self._dino = self._try(_DinoVit, dino_weights, dino_weights_path,
                                   f"DINO: {DINO_REPO} weights not on this machine (`{DINO_PULL}`)")
        else:
            self.notes.append("pretrained perceptual metrics disabled")
        if self._lpips is None or self._dino is None:
            self._fallback = _EfficientNetFeatures(self.device)
            self.notes.append(self._fallback.note)
        sfx = self._fallback.suffix if self._fallback else ""
        self.lpips_model = self._lpips.label if self._lpips else LPIPS_FALLBACK + sfx
        self.dino_model = self._dino.label if self._dino else DINO_FALLBACK + sfx

    def _try(self, cls, explicit, finder, missing_note):
        path = Path(explicit).expanduser() if explicit else finder()
        if explicit and not path.is_file():
            raise MaiError(f"weights file {path} not found", [Problem(str(path), "no such file", "check the path")])
        if path is None:
            self.notes.append(missing_note + "; using the substitute")
            return None
        try:
            return cls(path, self.device)
        except MaiError:
            if explicit:
                raise
            self.notes.append(f"{cls.label}: cannot use {path}; using the substitute")
        except Exception as exc:  # a corrupt cache file: fall back, and say why
            if explicit:
                raise MaiError(f"cannot load {path}", [Problem(str(path), f"{type(exc).__name__}: {exc}",
                                                               "check the weights file")]) from exc
            self.notes.append(f"{cls.label}: cannot use {path} ({type(exc).__name__}); using the substitute")
        return None

    @property
    def lpips_fallback(self) -> bool:
        return self._lpips is None

    @property
    def dino_fallback(self) -> bool:
        return self._dino is None

    @property
    def uses_fallback(self) -> bool:
        return self._lpips is None or self._dino is None

    def info(self) -> dict:
        return {"lpips_model": self.lpips_model, "dino_model": self.dino_model,
                "lpips_fallback": self.lpips_fallback, "dino_fallback": self.dino_fallback,
                "device": str(self.device), "notes": list(self.notes)}

    def features(self, x: torch.Tensor) -> dict:
        """Features of a float [0, 1] batch on the scorer's device (each model runs once)."""
        out = {}
        if self._fallback is not None:
            out["fallback"] = self._fallback.features(x)
        if self._lpips is not None:
            out["lpips"] = self._lpips.features(x)
        if self._dino is not None:
            out["dino"] = self._dino.features(x)
        return out

    def feature_distances(self, fa: dict, fb: dict) -> dict[str, torch.Tensor]:
        lp = (self._lpips.distance(fa["lpips"], fb["lpips"]) if self._lpips is not None
              else _EfficientNetFeatures.lpips_distance(fa["fallback"], fb["fallback"]))
        dn = (self._dino.distance(fa["dino"], fb["dino"]) if self._dino is not None
              else _EfficientNetFeatures.cosine_distance(fa["fallback"], fb["fallback"]))
        return {"lpips": lp.clamp(min=0.0), "dino": dn.clamp(min=0.0)}

    def to_batch(self, images) -> torch.Tensor:
        """uint8 N x H x W x 3 array / B x 3 x H x W tensor -> float [0, 1] on the scorer's device."""
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[-1] != 3:
                raise MaiError(f"expected images shaped N x H x W x 3, got {images.shape}",
                               [Problem("images", "wrong array layout", "pass uint8 RGB patches")])
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        return as_float_batch(images).to(self.device)

    @torch.no_grad()
    def distances(self, a, b) -> dict[str, np.ndarray]:
        """Per-pair distances between two equally long image batches (arrays or tensors)."""
        xa, xb = self.to_batch(a), self.to_batch(b)
        if xa.shape != xb.shape:
            raise MaiError("image batches differ in shape", [Problem("images", f"{tuple(xa.shape)} vs {tuple(xb.shape)}",
                                                                       "pass pairs of equally sized batches")])
        out = {"lpips": [], "dino": []}
        for s in range(0, xa.shape[0], self.batch_size):
            ca, cb = xa[s:s + self.batch_size], xb[s:s + self.batch_size]
            d = self.feature_distances(self.features(ca), self.features(cb))
            same = (ca == cb).flatten(1).all(1)
            for key in out:
                out[key].append(torch.where(same, torch.zeros_like(d[key]), d[key]).cpu())
        return {k: torch.cat(v).numpy().astype(np.float64) for k, v in out.items()}


def aug_seed(seed: int, aug: str) -> int:
    """The seed of one augmentation's random stream (independent of the other augmentations scored)."""
    return (int(seed) * 1_000_003 + zlib.crc32(aug.encode())) % (2**63 - 1)


@dataclass
class ScoreReport:
    """Result of :func:`score_augmentations`.

    ``summary``: one row per augmentation -- aug, lpips_mean, lpips_std, dino_mean, dino_std (appearance,
    geometry-aligned), geometry_mean, geometry_std, hue_mean, hue_std (degrees), lpips_model, dino_model, n, k, params (JSON of the
    parameters scored). ``pairs``: one row per (aug, image, rep).
    """

    summary: pd.DataFrame
    pairs: pd.DataFrame
    lpips_model: str
    dino_model: str
    lpips_fallback: bool
    dino_fallback: bool
    notes: list[str] = field(default_factory=list)

    @property
    def uses_fallback(self) -> bool:
        return self.lpips_fallback or self.dino_fallback


def resolve_params(augs: list[str], params: dict | None) -> dict[str, dict]:
    params = params or {}
    unknown = [a for a in params if a not in AUGMENTATIONS]
    if unknown:
        parse_aug_names(unknown)  # raises with the list of registered names
    return {a: get_spec(a).resolve(params.get(a)) for a in augs}


def augment_pair(images, aug: str, seed: int = 0, params: dict | None = None, device="cpu"):
    """``(augmented, moved)`` uint8 images (see :func:`mai_core.augment.aligned.aligned_images`), with the same
    random stream as :func:`score_augmentations` for the same seed."""
    g = torch.Generator().manual_seed(aug_seed(seed, aug))
    return aligned_images(images, aug, g, params, resolve_device(device))


def augment_images(images, aug: str, seed: int = 0, params: dict | None = None, device="cpu") -> np.ndarray:
    """Apply one augmentation (p = 1) to uint8 N x H x W x 3 images; returns uint8 images.
    Uses the same random stream as :func:`score_augmentations` for the same seed."""
    return augment_pair(images, aug, seed, params, device)[0]


@torch.no_grad()
def score_augmentations(images, augs=None, k: int = 4, seed: int = 0, scorer: PerceptualScorer | None = None,
                        device="auto", batch_size: int = 16, params: dict | None = None, ids=None,
                        progress: bool = False) -> ScoreReport:
    """Apply each augmentation ``k`` times (p = 1, fresh random parameters each time) to every image and
    measure the geometry-aligned appearance distance (both metrics) and the geometry distance (LPIPS).

    ``images``: uint8 N x H x W x 3. Features of the originals are computed once per batch and reused for
    every augmentation and repetition. Mixup partners are drawn from the same batch and scored against
    the first image of each pair (the original). Results are deterministic for a given seed and
    ``batch_size``. ``progress``: True for a console bar, or a callable ``(done, total)`` called after
    every scored batch (images × augmentations × k in all); an exception it raises stops the scoring.
    """
    names = parse_aug_names(augs)
    if not isinstance(k, int) or k < 1:
        raise MaiError(f"k must be a positive integer, got {k!r}", [Problem("k", "repetitions < 1", "use k >= 1")])
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise MaiError(f"expected a non-empty uint8 N x H x W x 3 image stack, got shape {images.shape}",
                       [Problem("images", "wrong shape or empty", "pass at least one RGB patch")])
    resolved = resolve_params(names, params)
    scorer = scorer or PerceptualScorer(device=device, batch_size=batch_size)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
    gens = {a: torch.Generator().manual_seed(aug_seed(seed, a)) for a in names}
    n = len(images)
    step = max(1, int(batch_size))
    bar = None
    total, done = n * len(names) * k, 0
    report = progress if callable(progress) else None
    if progress and report is None:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="scoring augmentations", unit="img", leave=False)
    rows = []
    for s in range(0, n, step):
        chunk = scorer.to_batch(images[s:s + step])
        f_orig = scorer.features(chunk)
        for a in names:
            for r in range(k):
                xa, moved, _ = aligned_apply([(a, resolved[a], 1.0)], chunk, gens[a])
                lp, dn, geo = aligned_distances(scorer, chunk, f_orig, xa, moved)
                hue = hue_rotation(xa, moved).cpu().numpy()
                for j in range(len(chunk)):
                    rows.append((a, ids[s + j], r, float(lp[j]), float(dn[j]), float(geo[j]), float(hue[j])))
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if report is not None:
                    report(done, total)
    if bar is not None:
        bar.close()
    pairs = pd.DataFrame(rows, columns=["aug", "image", "rep", "lpips", "dino", "geometry", "hue"])
    g = pairs.groupby("aug", sort=False)
    summary = pd.DataFrame({
        "aug": names,
        "lpips_mean": g["lpips"].mean().reindex(names).to_numpy(),
        "lpips_std": g["lpips"].std(ddof=0).reindex(names).to_numpy(),
        "dino_mean": g["dino"].mean().reindex(names).to_numpy(),
        "dino_std": g["dino"].std(ddof=0).reindex(names).to_numpy(),
        "geometry_mean": g["geometry"].mean().reindex(names).to_numpy(),
        "geometry_std": g["geometry"].std(ddof=0).reindex(names).to_numpy(),
        "hue_mean": g["hue"].mean().reindex(names).to_numpy(),
        "hue_std": g["hue"].std(ddof=0).reindex(names).to_numpy(),
        "lpips_model": scorer.lpips_model,
        "dino_model": scorer.dino_model,
        "n": n,
        "k": k,
        "params": [json.dumps(resolved[a], sort_keys=True) for a in names],
    })
    return ScoreReport(summary, pairs, scorer.lpips_model, scorer.dino_model, scorer.lpips_fallback,
                       scorer.dino_fallback, list(scorer.notes))


def sample_indices(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """``min(n, n_total)`` distinct sorted indices drawn with ``seed`` (the scoring sample)."""
    n = min(int(n), int(n_total))
    return np.sort(np.random.default_rng(seed).choice(int(n_total), size=n, replace=False))


def score_dataset(ds, n: int = 64, k: int = 4, augs=None, seed: int = 0, scorer: PerceptualScorer | None = None,
                  device="auto", batch_size: int = 16, params: dict | None = None,
                  progress: bool = False) -> ScoreReport:
    """:func:`score_augmentations` on ``n`` training images of a MAIDataset sampled with ``seed``."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise MaiError(f"n must be a positive integer, got {n!r}", [Problem("n", "sample size < 1", "use n >= 1")])
    names = parse_aug_names(augs)
    idx = sample_indices(ds.n_train, n, seed)
    images = ds.images("train", idx, progress=progress is True)
    ids = [ds.ids[i] for i in idx]
    return score_augmentations(images, names, k=k, seed=seed, scorer=scorer, device=device, batch_size=batch_size,
                               params=params, ids=ids, progress=progress)


def preview_pairs(images, augs, seed: int = 0, scorer: PerceptualScorer | None = None,
                  params: dict | None = None) -> dict[str, dict]:
    """For display: each augmentation applied once (p = 1) to uint8 images, with the geometry-aligned distances
    of the shown (uint8) augmented images. Returns ``{aug: {"images": uint8 N x H x W x 3, "lpips": (N,),
    "dino": (N,), "geometry": (N,), "hue": (N,) degrees}}``."""
    names = parse_aug_names(augs)
    resolved = resolve_params(names, params)
    scorer = scorer or PerceptualScorer()
    images = np.asarray(images)
    out = {}
    for a in names:
        shown, moved = augment_pair(images, a, seed=seed, params=resolved[a], device=scorer.device)
        d = scorer.distances(moved, shown)
        geo = scorer.distances(images, moved)["lpips"]
        hue = hue_rotation(scorer.to_batch(shown), scorer.to_batch(moved)).cpu().numpy().astype(np.float64)
        out[a] = {"images": shown, "lpips": d["lpips"], "dino": d["dino"], "geometry": geo, "hue": hue}
    return out
