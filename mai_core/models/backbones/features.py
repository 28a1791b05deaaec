"""``FeatureExtractor`` (a backbone with its input normalisation) and THE feature cache:
``extract_features`` runs batched inference once per (backbone, weights, images) and keeps the result in
``workspace/cache/features/``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from mai_core.device import resolve_device
from mai_core.models.fastpath import prefers_channels_last, prefetched, tune_cpu
from mai_core.models.tta import dihedral_views
from mai_core.errors import MaiError, Problem
from mai_core.models.backbones.layers import tokens_to_map
from mai_core.models.backbones.registry import BackboneSpec, DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, get_spec, log
from mai_core.models.backbones.weights import WeightsInfo, _safe_name, create_backbone, plan_weights



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
                     model=None, n: int | None = None, weights_tag: str | None = None) -> np.ndarray:
    """Pooled backbone features (float32 N×D) for uint8 N×H×W×3 ``images`` or an ``MAIDataset`` split.

    With a ``cache_key`` (automatic for datasets: fingerprint + split + indices) features are stored in
    ``workspace/cache/features/<backbone>_<weights>_<key>.npy`` and reused. ``tta`` averages features over
    the 8 dihedral transforms. ``model`` may pass an already-built ``FeatureExtractor`` (or any module
    mapping B×3×H×W images to B×D features with a ``num_features``; then ``weights`` is taken from its
    ``info`` or ``weights_tag``). ``images`` may be a zero-argument callable returning the array, together
    with ``n`` (its length): it is only called when the cache has no answer.
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
        if callable(images):
            if n is None:
                raise MaiError("extract_features: an image loader needs n (the number of images)")
            loader = images
        else:
            arr = _check_images(images)
            n = len(arr)

            def loader():
                return arr

        def batches():
            arr = _check_images(loader())
            if len(arr) != n:
                raise MaiError(f"the image loader returned {len(arr)} images, expected {n}")
            for s in range(0, n, batch_size):
                yield arr[s:s + batch_size]

    target = None
    if cache_key is not None:
        if weights_tag is not None:
            tag = weights_tag
        elif model is not None and getattr(model, "info", None) is not None:
            tag = model.info.tag
        else:
            tag = _weights_tag_from_plan(*plan_weights(spec.name, weights))
        target = features_cache_file(spec.name, tag, cache_key, cache_dir, tta)
        hit = read_cached_features(target, n)
        if hit is not None:
            return hit

    dev = resolve_device(device)
    if model is None:
        model, info = create_feature_extractor(spec.name, weights=weights, device=dev)
    else:
        info = getattr(model, "info", None)
        model = model.to(dev).eval()
    if target is not None and weights_tag is None and info is not None and info.tag not in target.name:
        # resolution fell back to another source than planned: store under the real one
        target = features_cache_file(spec.name, info.tag, cache_key, cache_dir, tta)
        hit = read_cached_features(target, n)
        if hit is not None:
            return hit
    if dev.type == "cpu":
        tune_cpu()
    fmt = torch.channels_last if prefers_channels_last(model, dev) else torch.contiguous_format
    model = model.to(memory_format=fmt)
    use_bf16 = dev.type == "cuda"
    out = np.empty((n, model.num_features), dtype=np.float32)
    from tqdm.auto import tqdm

    done = 0
    decoded = prefetched(np.ascontiguousarray, batches())  # the next batch decodes while this one runs
    with torch.inference_mode(), tqdm(total=n, disable=not progress, desc=f"features {spec.name}", unit="img") as bar:
        try:
            for batch in decoded:
                # uint8 N×H×W×3 permuted to B×3×H×W is channels_last already: no layout copy
                x = torch.from_numpy(batch).to(dev, non_blocking=True).permute(0, 3, 1, 2)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                    if tta:
                        f = torch.stack([model(v.contiguous(memory_format=fmt)).float()
                                         for v in dihedral_views(x)]).mean(0)
                    else:
                        f = model(x).float()
                out[done:done + len(batch)] = f.cpu().numpy()
                done += len(batch)
                bar.update(len(batch))
        finally:
            decoded.close()
    if target is not None:
        from mai_core.io import atomic_path

        with atomic_path(target, suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, out)
    return out


def read_cached_features(path: Path, n: int) -> np.ndarray | None:
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


