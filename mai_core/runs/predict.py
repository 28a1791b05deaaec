"""Prediction with a trained run or ensemble: ``load_predictor(path).predict_images(uint8 N×H×W×3)``.

The fast path (``bench/predict_throughput.py``): the model runs in channels_last where that is faster
(convolutional networks, CPU and CUDA), the CPU allocator keeps activation memory between batches and the
thread count fits the cores this process may use (:mod:`mai_core.models.fastpath`); each dihedral view is
cut from the uint8 batch into one reused float buffer, outputs are summed into one reused accumulator, and
image files are decoded in a background thread while the model runs. Every predict call takes an
``on_progress(done, total)`` callback and a ``should_stop`` hook (a callable or a ``threading.Event``); a
stop request ends the call within one model forward with :class:`PredictionCancelled`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from mai_core.errors import MaiError, Problem
from mai_core.models.fastpath import prefers_channels_last, prefetched, tune_cpu
from mai_core.models.tta import dihedral_view, parse_views, tta_views as views_for
from mai_core.runs.rundir import RunDir, read_config


class PredictionCancelled(MaiError):
    """A prediction ended early because its ``should_stop`` hook asked; ``done`` of ``total`` images were
    predicted."""

    def __init__(self, done: int, total: int | None):
        of = f" of {total}" if total is not None else ""
        super().__init__(f"prediction cancelled after {done}{of} images", hint="start it again to predict them all")
        self.done, self.total = int(done), total


def _stop_requested(should_stop) -> bool:
    if should_stop is None:
        return False
    is_set = getattr(should_stop, "is_set", None)
    return bool(is_set() if callable(is_set) else should_stop())


def _views(tta, default: int) -> int:
    if tta is None:
        return default
    try:
        return parse_views(tta)
    except ValueError as exc:
        raise MaiError(f"invalid test-time augmentation setting {tta!r}",
                       [Problem("tta", str(exc), "use 1 (off) to 8 views")]) from None


class Predictor:
    """A loaded model ready for inference.

    ``genes`` (output column order), ``config`` (the run's config.yaml), ``model`` (torch module:
    float B×3×H×W in [0, 1] or uint8 → original-unit expression B×G; ``model.backbone`` is the first
    backbone, for Grad-CAM), ``device``, ``tta_views`` (number of dihedral views averaged, 1 = off),
    ``channels_last`` (memory layout the model runs in; None = the faster one for the model and device),
    ``threads`` (CPU threads; None = torch's count, capped at the cores this process may use).
    """

    def __init__(self, model, genes: list[str], config: dict, device, tta_views: int = 1, batch_size: int = 64,
                 path: Path | None = None, channels_last: bool | None = None, threads: int | None = None):
        import torch

        self.model = model.eval()
        self.genes = list(genes)
        self.config = config
        self.device = device
        self.tta_views = int(tta_views)
        self.batch_size = int(batch_size)
        self.path = path
        if device.type == "cpu":
            tune_cpu(threads)
        self.channels_last = prefers_channels_last(self.model, device) if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def __repr__(self) -> str:
        return (f"Predictor({self.path}, {len(self.genes)} genes, tta={self.tta_views}, device={self.device}, "
                f"channels_last={self.channels_last})")

    def predict_images(self, images, batch_size: int | None = None, tta: bool | int | str | None = None,
                       progress: bool = False, on_progress: Callable[[int, int], None] | None = None,
                       should_stop=None) -> np.ndarray:
        """Expression (float32 N×G, original units) for uint8 N×H×W×3 images (or one H×W×3 image).

        ``tta``: None = the run's setting, True/False, or a number of views 1..8. ``on_progress(done, total)``
        is called after every batch; ``should_stop`` (callable or Event) is checked before every forward and
        raises :class:`PredictionCancelled` when set.
        """
        import torch

        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise MaiError(f"images must be N×H×W×3, got shape {arr.shape}",
                           [Problem("images", "wrong layout", "stack RGB patches as N×H×W×3 uint8")])
        views = _views(tta, self.tta_views)
        bs = max(1, int(batch_size or self.batch_size))
        n = len(arr)
        out = np.empty((n, len(self.genes)), dtype=np.float32)
        from tqdm.auto import tqdm

        bar = tqdm(total=n, disable=not progress, desc="predicting", unit="img", file=sys.stderr)
        try:
            with torch.inference_mode():
                work = _Buffers(self, min(bs, max(n, 1)))
                for s in range(0, n, bs):
                    out[s:s + bs] = self._batch(arr[s:s + bs], views, work, should_stop, s, n)
                    bar.update(min(bs, n - s))
                    if on_progress is not None:
                        on_progress(min(s + bs, n), n)
        finally:
            bar.close()
        return out

    def _batch(self, chunk: np.ndarray, views: int, work: "_Buffers", should_stop, done: int, total: int):
        import torch

        b = len(chunk)
        u8 = chunk.dtype == np.uint8
        src = torch.from_numpy(np.ascontiguousarray(chunk if u8 else chunk.astype(np.float32, copy=False)))
        src = src.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # channels_last strides, no copy
        acc = work.acc[:b]
        amp = self.device.type == "cuda"
        for v in range(views):
            if _stop_requested(should_stop):
                raise PredictionCancelled(done, total)
            view = dihedral_view(src, v)
            x = work.x(b, view.shape[-2], view.shape[-1])
            x.copy_(view)
            if u8:
                x.div_(255.0)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                y = self.model(x).float()
            if v == 0:
                acc.copy_(y)
            else:
                acc.add_(y)
        return torch.div(acc, views).cpu().numpy()

    def predict_paths(self, paths, batch_size: int | None = None, progress: bool = False, tta=None,
                      on_progress: Callable[[int, int], None] | None = None, should_stop=None) -> np.ndarray:
        """Expression for image files, decoded ``batch_size`` at a time (default: two model batches) in a
        background thread while the model predicts the previous chunk (memory stays bounded)."""
        from mai_core.data.images import load_images

        paths = list(paths)
        n = len(paths)
        chunk = max(1, int(batch_size or 2 * self.batch_size))
        out = np.empty((n, len(self.genes)), dtype=np.float32)
        starts = range(0, n, chunk)
        from tqdm.auto import tqdm

        bar = tqdm(total=n, disable=not progress, desc="predicting", unit="img", file=sys.stderr)
        decoded = prefetched(lambda i: load_images(paths[i:i + chunk]), starts)
        try:
            for s, imgs in zip(starts, decoded):
                def report(done, _total, s=s):
                    bar.update(s + done - bar.n)
                    if on_progress is not None:
                        on_progress(s + done, n)

                try:
                    out[s:s + len(imgs)] = self.predict_images(imgs, tta=tta, on_progress=report,
                                                               should_stop=should_stop)
                except PredictionCancelled as exc:
                    raise PredictionCancelled(s + exc.done, n) from None
        finally:
            decoded.close()
            bar.close()
        return out

    def feature_predictor(self) -> "Predictor | None":
        """A predictor of the backbone's pooled embeddings (same views, layout, threads) instead of expression;
        for an ensemble, its members' embeddings side by side (member order). None when the model has none."""
        from mai_core.models.model import EnsembleFeatures, MeanEnsemble, ModelFeatures

        inner = getattr(self.model, "inner", None)
        if isinstance(self.model, MeanEnsemble) and all(hasattr(m, "features") for m in self.model.members):
            feats = EnsembleFeatures(self.model)
        elif inner is None or not hasattr(inner, "features"):
            return None
        else:
            feats = ModelFeatures(inner)
        return Predictor(feats, [f"f{i}" for i in range(feats.num_features)], self.config, self.device,
                         tta_views=self.tta_views, batch_size=self.batch_size, path=self.path,
                         channels_last=self.channels_last)

    def predict_stream(self, chunks: Iterable, tta=None, on_progress: Callable[[int, int | None], None] | None = None,
                       should_stop=None, total: int | None = None) -> Iterator[np.ndarray]:
        """Predictions for a stream of uint8 N×H×W×3 chunks (e.g. slide tiles), one float32 array per chunk;
        the next chunk is produced in a background thread while the model runs on this one.
        ``on_progress(done, total)`` counts images (``total`` as given, None when unknown)."""
        done = 0
        produced = prefetched(np.asarray, chunks)
        try:
            for imgs in produced:
                try:
                    pred = self.predict_images(imgs, tta=tta, should_stop=should_stop)
                except PredictionCancelled as exc:
                    raise PredictionCancelled(done + exc.done, total) from None
                done += len(pred)
                if on_progress is not None:
                    on_progress(done, total)
                yield pred
        finally:
            produced.close()


class _Buffers:
    """Float input buffers (in the model's layout, one per view shape) and the output accumulator, reused
    across batches."""

    def __init__(self, predictor: Predictor, rows: int):
        import torch

        self.rows, self.device = rows, predictor.device
        self.fmt = torch.channels_last if predictor.channels_last else torch.contiguous_format
        self._x: dict = {}
        self.acc = torch.empty((rows, len(predictor.genes)), dtype=torch.float32, device=self.device)

    def x(self, b: int, h: int, w: int):
        import torch

        if (h, w) not in self._x:
            self._x[(h, w)] = torch.empty((self.rows, 3, h, w), dtype=torch.float32, device=self.device,
                                          memory_format=self.fmt)
        return self._x[(h, w)][:b]


def _groups_for(run: RunDir, genes: list[str]) -> list[list[int]]:
    from mai_core.genes.grouping import load_grouping

    if run.grouping_path.is_file():
        idx = load_grouping(run.grouping_path).indices_for(genes)
        return list(idx.values())
    return [list(range(len(genes)))]


def build_run_model(run: RunDir, cfg: dict, genes: list[str]):
    """A GeneModel with the run's architecture and its prediction weights (CPU)."""
    import warnings

    from mai_core.models.model import GeneModel, load_state

    ck = run.model_checkpoint()
    if ck is None:
        raise MaiError(f"{run.path} has no checkpoint yet", [Problem(str(run.checkpoints_dir), "no .safetensors file",
                                                                      "wait for the first epoch to finish, or train again")])
    spec = cfg.get("model") or {}
    info = spec.get("weights_info") or {}
    arch = info.get("timm_name") or spec.get("backbone")
    import timm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            backbone = timm.create_model(arch, pretrained=False, num_classes=0)
        except Exception:
            from mai_core.models.model import backbone_and_info

            backbone, _ = backbone_and_info(spec.get("backbone"), weights="random", quiet=True)
    if spec.get("kind") == "finetune" and spec.get("drop_path"):
        from mai_core.models.model import apply_drop_path

        apply_drop_path(backbone, float(spec["drop_path"]))
    kind = spec.get("kind", "finetune")
    head = "linear" if kind == "ridge" else spec.get("head", "linear")
    pca = 0 if kind == "ridge" else int(spec.get("pca_components") or 0)
    model = GeneModel(backbone, len(genes), _groups_for(run, genes), head=head, hidden=int(spec.get("hidden", 512)),
                      dropout=0.0 if kind == "ridge" else float(spec.get("dropout", 0.0)), pca_k=pca,
                      mean=info.get("mean", (0.485, 0.456, 0.406)), std=info.get("std", (0.229, 0.224, 0.225)),
                      image_size=int(spec.get("image_size", 224)))
    try:
        load_state(model, ck)
    except Exception as exc:  # shape mismatch (RuntimeError) or a corrupt/truncated file (SafetensorError)
        raise MaiError(f"checkpoint {ck} cannot be loaded into the run's model", [Problem(str(ck), str(exc),
                       "the run folder may be corrupt or from another version; retrain")]) from None
    return model.eval()


def load_predictor(path, device: str = "auto", channels_last: bool | None = None,
                   threads: int | None = None) -> Predictor:
    """Predictor for a run or ensemble directory (see :func:`mai_core.runs.load_predictor`); ``channels_last``
    and ``threads`` as in :class:`Predictor` (None: the measured-faster layout, the usable cores)."""

    from mai_core.device import resolve_device
    from mai_core.models.model import MeanEnsemble, OriginalUnits
    from mai_core.runs.contexthead import ensemble_members

    run = RunDir(path)
    cfg = read_config(run)
    dev = resolve_device(device)
    if cfg.get("kind") == "ensemble":
        genes = run.read_genes()
        members, weights = [], []
        for mp, weight in ensemble_members(run.path, cfg):
            mr = RunDir(mp)
            mcfg = read_config(mr)
            mgenes = mr.read_genes()
            if mgenes != genes:
                raise MaiError(f"ensemble member {mp} predicts different genes than the ensemble",
                               hint="rebuild the ensemble from runs trained on the same genes")
            members.append(build_run_model(mr, mcfg, genes))
            weights.append(weight)
        if not members:
            raise MaiError(f"ensemble {run.path} lists no members")
        model = MeanEnsemble(members, weights).to(dev).eval()
    else:
        genes = run.read_genes()
        model = OriginalUnits(build_run_model(run, cfg, genes)).to(dev).eval()
    return Predictor(model, genes, cfg, dev, tta_views=views_for(cfg),
                     batch_size=int((cfg.get("predict") or {}).get("batch_size", 64)), path=run.path,
                     channels_last=channels_last, threads=threads)


def predict_csv(run_path, csv_path, out_path, device: str = "auto", progress: bool = True, tta=None,
                on_progress: Callable[[int, int], None] | None = None, should_stop=None, spatial: bool = True):
    """Predict every row of an ID,path CSV; write ID + one column per gene atomically. Returns the frame
    (``frame.attrs["spatial"]``: a sentence on the spatial context used).

    ``tta``: None = the run's setting, or 1 (off) .. 8 views; ``on_progress``/``should_stop`` as in
    :meth:`Predictor.predict_images` (a cancelled prediction writes nothing). ``spatial``: when the CSV has spot
    coordinates (``section``, ``px``/``py``), use the run's spatial context (its context head, else its
    neighbour-smoothing weight; :func:`mai_core.runs.contexthead.spatial_predict`)."""
    import pandas as pd

    from mai_core.data.dataset import read_id_path_csv
    from mai_core.io import write_csv
    from mai_core.runs.contexthead import spatial_predict
    from mai_core.runs.neighbours import spot_coordinates

    df, paths = read_id_path_csv(csv_path)
    pred = load_predictor(run_path, device=device)
    values, note = spatial_predict(pred, paths, spot_coordinates(df), enabled=spatial, progress=progress, tta=tta,
                                   on_progress=on_progress, should_stop=should_stop)
    out = pd.concat([df[["ID"]].reset_index(drop=True), pd.DataFrame(values, columns=pred.genes)], axis=1)
    write_csv(out_path, out, float_format="%.6g")
    out.attrs["spatial"] = note
    return out


def labelled_split(data, split: str):
    """(ids, image paths, truth N×G frame-aligned, genes, reference X) for a dataset split."""
    import pandas as pd

    from mai_core.data.dataset import ID_COL, PATH_COL, load_dataset

    ds = load_dataset(data)
    if split == "train":
        return ds.ids, [ds.image_path(i, "train") for i in range(ds.n_train)], ds.X, ds.genes, ds.X
    if ds.test is None or ds.n_test == 0:
        raise MaiError(f"{ds.root} has no test split", [Problem(str(ds.root / "test.csv"), "missing or empty",
                                                                "evaluate --split train, or add test.csv")])
    truth_df = None
    if all(g in ds.test.columns for g in ds.genes):
        truth_df = ds.test[[ID_COL] + ds.genes]
    elif (ds.root / "test_truth.csv").is_file():
        truth_df = pd.read_csv(ds.root / "test_truth.csv", dtype={ID_COL: str})
        missing = [g for g in ds.genes if g not in truth_df.columns]
        if missing:
            raise MaiError("test_truth.csv lacks genes of train.csv",
                           [Problem(str(ds.root / "test_truth.csv"), f"missing {missing[:5]}", "regenerate it")])
    if truth_df is None:
        raise MaiError(f"the test split of {ds.root} has no expression to evaluate against",
                       [Problem(str(ds.root / "test.csv"), "no gene columns and no test_truth.csv",
                                "add the truth as test_truth.csv (ID + gene columns), or evaluate --split train")])
    truth = truth_df.set_index(ID_COL)
    absent = [i for i in ds.test_ids if i not in truth.index]
    if absent:
        raise MaiError(f"{len(absent)} test IDs have no truth (e.g. {absent[:3]})")
    X = truth.loc[ds.test_ids, ds.genes].to_numpy(dtype=np.float32)
    paths = [ds.root / p for p in ds.test[PATH_COL]]
    return ds.test_ids, paths, X, ds.genes, ds.X


def evaluate_run(run_path, data=None, split: str = "test", device: str = "auto", progress: bool = True,
                 tta=None, on_progress: Callable[[int, int], None] | None = None, should_stop=None,
                 spatial: bool = True) -> dict:
    """Metrics dict (mai_core.metrics.evaluate_predictions) of a run/ensemble on a labelled split.

    ``tta``: None = the run's setting, or 1 (off) .. 8 views (reported as ``tta_views``). ``spatial``: the
    run's spatial context when the split has spot coordinates (reported as ``spatial``; the ``val`` split is
    the run's own stored validation predictions, as trained)."""
    from mai_core.data.dataset import load_dataset
    from mai_core.metrics import evaluate_predictions
    from mai_core.runs.contexthead import spatial_predict
    from mai_core.runs.neighbours import spot_coordinates

    run = RunDir(run_path)
    if split == "val":
        vp = run.read_val_predictions()
        if vp is None:
            raise MaiError(f"{run.path} has no val_predictions.parquet",
                           hint="it is written when training finishes with a validation split")
        genes = run.read_genes()
        y = vp[[f"true:{g}" for g in genes]].to_numpy(np.float32)
        p = vp[[f"pred:{g}" for g in genes]].to_numpy(np.float32)
        out = evaluate_predictions(y, p, genes)
        out.update(split="val", run=str(run.path))
        return out
    if data is None:
        raise MaiError("--data is required for --split train/test", [Problem("--data", "missing",
                                                                            "pass the labelled dataset folder")])
    ids, paths, X, genes, ref = labelled_split(data, split)
    pred = load_predictor(run.path, device=device)
    missing = [g for g in pred.genes if g not in genes]
    if missing:
        raise MaiError(f"the dataset lacks {len(missing)} gene(s) the model predicts (e.g. {missing[:5]})",
                       hint="evaluate on data with the genes the run was trained on")
    col = {g: i for i, g in enumerate(genes)}
    sel = [col[g] for g in pred.genes]
    views = _views(tta, pred.tta_views)
    ds = load_dataset(data, check_images=False)
    coords = spot_coordinates(ds.train if split == "train" else ds.test)
    p, note = spatial_predict(pred, paths, coords, enabled=spatial, progress=progress, tta=views,
                              on_progress=on_progress, should_stop=should_stop)
    out = evaluate_predictions(X[:, sel], p, pred.genes, reference_X=ref[:, sel])
    out.update(split=split, run=str(run.path), data=str(data), tta_views=views, spatial=note)
    return out
