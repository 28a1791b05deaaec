"""A training session: the data, the split, standardised targets, the grouping and the model on a device.

:meth:`Session.prepare` returns the facts it resolved (weights source, device, split sizes, grouping,
trainable parameters) for the recorder to write into ``config.yaml``; it never edits the config.
Images are decoded once into a uint8 RAM cache (N×224×224×3; on the GPU when it fits) and batches are
cut from it by tensor indexing, converted to float on the device.
"""

from __future__ import annotations

import numpy as np

from mai_core.data.images import load_image_cache
from mai_core.data.importer import dataset_resolution
from mai_core.errors import MaiError, Problem
from mai_core.models.tta import dihedral_views
from mai_core.training.runtime import Runtime, unwrap_model
from mai_core.training.split import make_split


def make_augment(policy, seed: int, data_dir=None):
    """Batch augmentation callable ``(x, y) -> (x, y)`` for the policy; None when policy is none/empty.

    Unknown policy names raise MaiError (from mai_core.augment) listing the available ones.
    """
    if policy in (None, "", "none", "off"):
        return None
    from mai_core.augment import build_batch_augment

    return build_batch_augment(policy, seed=seed, data_dir=data_dir)


def grouping_for(cfg: dict, genes: list[str]):
    """(Grouping over ``genes``, column indices per group, group names) from ``cfg['grouping']``."""
    from mai_core.genes.grouping import Grouping, load_grouping

    path = cfg["grouping"].get("path")
    if path:
        g = load_grouping(path)
        idx = g.indices_for(genes)
        known = sum(1 for gene in genes if gene in set(g.genes))
        if known == 0:
            raise MaiError(f"grouping {path} shares no gene with the dataset",
                           [Problem(str(path), f"{len(g.genes)} genes, none among the {len(genes)} trained genes",
                                    "build the grouping from this dataset (python -m mai_core genes ...)")])
        names = list(idx)
        lookup = {}
        for name, cols in idx.items():
            for c in cols:
                lookup[genes[c]] = name
        grouping = Grouping(list(genes), [lookup[x] for x in genes], g.method, dict(g.params, source=str(path)))
        return grouping, [idx[n] for n in names], names
    grouping = Grouping(list(genes), ["all"] * len(genes), "none", {})
    return grouping, [list(range(len(genes)))], ["all"]


def planned_epochs(cfg: dict) -> int:
    """Epochs the configured strategy runs (frozen heads have their own count; ridge is one fit)."""
    kind = cfg["model"]["kind"]
    return {"frozen": int(cfg["frozen"]["epochs"]), "ridge": 1}.get(kind, int(cfg["optim"]["epochs"]))


class Session:
    def __init__(self, cfg: dict, rt: Runtime, progress: bool = True):
        self.cfg = cfg
        self.rt = rt
        self.progress = progress
        self.cache = None

    @property
    def device(self):
        return self.rt.device

    def prepare(self) -> dict:
        """Load data and build the model; returns the resolved facts for config.yaml."""
        import torch

        from mai_core.data.dataset import load_dataset
        from mai_core.models.model import apply_drop_path, backbone_units, build_model, set_trainable_blocks

        cfg, rt = self.cfg, self.rt
        self.ds = load_dataset(cfg["data"])
        self.genes = list(self.ds.genes)
        seed = int(cfg["seed"])
        self.train_idx, self.val_idx, self.split_desc = make_split(self.ds, cfg["split"], seed)
        X = self.ds.X
        self.y_mean = X[self.train_idx].mean(0)
        sd = X[self.train_idx].std(0)
        self.y_std = np.where(sd > 1e-6, sd, 1.0).astype(np.float32)
        self.Z = ((X - self.y_mean) / self.y_std).astype(np.float32)
        self.grouping, self.groups, self.group_names = grouping_for(cfg, self.genes)
        make_augment(cfg["aug"]["policy"], seed, data_dir=self.ds.root)  # unknown policy -> MaiError now
        if cfg["model"]["kind"] == "ridge":
            self.groups, self.group_names = [list(range(len(self.genes)))], ["all"]

        spec = dict(cfg["model"])
        if spec["kind"] == "ridge":
            spec.update(head="linear", pca_components=0, dropout=0.0)
        torch.manual_seed(seed)
        from mai_core.models.backbones import describe_weights, offline_mode

        with offline_mode(bool(cfg["runtime"].get("offline"))):  # --offline: nothing is downloaded
            model, info = build_model({**spec, "drop_path": 0.0}, len(self.genes), self.groups,
                                      weights=spec["weights"], device="cpu", quiet=not rt.is_main)
        info = {**info, **describe_weights(spec["backbone"], info["source"], info.get("path"))}  # licence, origin
        if spec["kind"] == "finetune":
            apply_drop_path(model.backbone, float(spec.get("drop_path") or 0.0))
        model.set_target_stats(self.y_mean, self.y_std)
        model.fit_pca(self.Z[self.train_idx])
        self.weights_info = info
        if spec["kind"] == "finetune":
            tb = spec["train_blocks"]
            if spec.get("freeze_blocks") is not None:
                _, block_pos = backbone_units(model.backbone)
                tb = max(0, len(block_pos) - int(spec["freeze_blocks"]))
            self.trainable = set_trainable_blocks(model.backbone, int(tb))
        else:
            self.trainable = set_trainable_blocks(model.backbone, 0)
        self.model = model.to(self.device)
        if rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        return {
            "model": {"weights_info": info},
            "runtime": {"device_resolved": str(self.device), "world_size": rt.world},
            "split": {"n_train": int(len(self.train_idx)), "n_val": int(len(self.val_idx)),
                      "description": self.split_desc},
            "grouping": {"method": self.grouping.method, "n_groups": len(self.groups),
                         "groups": self.group_names[:50]},
            "data_fingerprint": self.ds.fingerprint,
            "data_resolution": dataset_resolution(self.ds.root),
            "n_genes": len(self.genes),
            "trainable": {"params": int(self.trainable["trainable_params"]),
                          "backbone_params": int(self.trainable["total_params"]),
                          "units": self.trainable["trainable_units"][:12]},
        }

    def raw_model(self):
        return unwrap_model(self.model)

    # -- images ----------------------------------------------------------------------------------
    def images(self):
        """The uint8 N×224×224×3 cache of every training image (decoded on first use)."""
        import torch

        if self.cache is None:
            arr = load_image_cache(self.ds, np.arange(self.ds.n_train), int(self.cfg["runtime"]["workers"]),
                                   progress=self.progress and self.rt.is_main)
            t = torch.from_numpy(arr)
            if self.rt.cuda:
                free = torch.cuda.mem_get_info(self.device)[0]
                t = t.to(self.device) if t.numel() < 0.3 * free else t.pin_memory()
            self.cache = t
        return self.cache

    def batch(self, idx):
        """uint8 NHWC cache rows → float [0,1] B×3×H×W on the device."""
        import torch

        cache = self.images()
        it = torch.as_tensor(idx, dtype=torch.long)
        x = cache.index_select(0, it.to(cache.device)) if cache.device == self.device else cache[it]
        return x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)

    # -- evaluation ------------------------------------------------------------------------------
    def predict_z(self, model, idx, tta_views: int = 1, on_batch=None) -> np.ndarray:
        """Standardised predictions for dataset rows ``idx`` (sharded across processes, gathered).

        ``on_batch(done, total)`` is called after each batch with this process's counts."""
        import torch

        rt = self.rt
        idx = np.asarray(idx)
        mine = rt.shard(idx)
        bs = int(self.cfg["predict"]["batch_size"])
        outs = []
        model.eval()
        with torch.inference_mode():
            for s in range(0, len(mine), bs):
                x = self.batch(mine[s:s + bs])
                acc = None
                for v in dihedral_views(x, tta_views):
                    if rt.channels_last:
                        v = v.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=rt.amp):
                        z = model(v).float()
                    acc = z if acc is None else acc + z
                outs.append((acc / tta_views).cpu().numpy())
                if on_batch is not None:
                    on_batch(min(s + bs, len(mine)), len(mine))
        z = np.concatenate(outs) if outs else np.zeros((0, len(self.genes)), np.float32)
        return rt.gather_rows(idx, mine, z)

    def val_metrics(self, z_val: np.ndarray, loss_fn) -> tuple[float, float]:
        """(validation loss, validation gene PCC in original units) of standardised predictions."""
        import torch

        from mai_core.metrics import gene_pearson

        zt = self.Z[self.val_idx]
        bs = max(2, int(self.cfg["optim"]["batch_size"]))
        losses = []
        with torch.no_grad():
            for s in range(0, len(zt), bs):
                if len(zt[s:s + bs]) < 2:
                    continue
                losses.append(float(loss_fn(torch.from_numpy(z_val[s:s + bs]), torch.from_numpy(zt[s:s + bs]))))
        pred = z_val * self.y_std + self.y_mean
        pcc, _ = gene_pearson(self.ds.X[self.val_idx], pred)
        return (float(np.mean(losses)) if losses else float("nan")), float(pcc)
