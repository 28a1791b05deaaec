"""The explainer: many genes for the same images share one forward pass.

The target layer's activations are kept and every gene only back-propagates from its output to that
layer; the library's own CAM formula then turns (activations, gradients) into a map. The result equals
one library call per gene (tested) at a fraction of the cost. Maps are cached per (run, image, gene,
method, layer) in memory (LRU) and optionally on disk, at layer resolution (exact and tiny).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mai_core.device import resolve_device
from mai_core.errors import MaiError, Problem
from mai_core.explain.analysis import _unknown
from mai_core.explain.layers import resolve_target_layers
from mai_core.explain.methods import CamMethod, GeneTarget, check_method


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
    """CAMs of N images × G genes: ``cams`` float32 N×G×H×W in [0, 1]; ``predicted`` N×G model outputs.

    Each map is scaled to its own maximum; ``peaks`` (N×G) holds the range of each map before that
    scaling (mean over target layers), so maps can be put on one scale across genes
    (:func:`mai_core.explain.render.shared_scale`).
    """

    cams: np.ndarray
    predicted: np.ndarray
    genes: list[str]
    method: str
    layer: str
    peaks: np.ndarray | None = None


class CamExplainer:
    """Grad-CAM family maps for many genes of one model, sharing forward passes and caching results.

    ``model`` maps float B×3×H×W in [0, 1] to B×G predictions in ``genes`` order (e.g.
    ``load_predictor(run).model``). ``run_key`` identifies the weights for the disk cache (set by
    :meth:`from_run`); without it only the in-memory cache is used.
    """

    def __init__(self, model, genes: Sequence[str], layer: str | None = None, device="cpu",
                 backbone_name: str | None = None, run_key: str | None = None, cache_size: int = 4096, disk_cache: str | os.PathLike | None = None,
                 gene_chunk: int = 32, image_batch: int = 8, score_batch: int = 32):

        self.device = resolve_device(device)
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
        predictor = load_predictor(rd.path, device=device)
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
        peaks = np.zeros((n, G), dtype=np.float32)
        for i in range(n):
            layers = [np.stack([raw[(i, g)][li] for g in idx]) for li in range(len(self.layers.modules))]
            cams[i] = _finalize(layers, size)
            peaks[i] = np.mean([np.ptp(m.reshape(len(idx), -1), axis=1) for m in layers], axis=0) if G else 0.0
        predicted = np.stack([self._pred_cache[k][idx] for k in keys]) if n else np.zeros((0, G), np.float32)
        return CamResult(cams, predicted.astype(np.float32), [self.genes[g] for g in idx], spec.name,
                         self.layer_name, peaks)

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


