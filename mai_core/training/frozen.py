"""Strategies on frozen backbone embeddings: trained heads (``frozen``) and the ridge baseline (``ridge``).

Embeddings of every training image (one per dihedral view for the heads, the plain view for ridge, the
HEST protocol) come from THE feature cache (:func:`mai_core.models.backbones.extract_features`), so a
second run over the same data and backbone skips the backbone entirely.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

import numpy as np

from mai_core.models.tta import dihedral_view_np
from mai_core.training.context import Context
from mai_core.training.runtime import StoppedEarly


def _cache_key(ctx: Context) -> str:
    s, info = ctx.session, ctx.session.weights_info
    model = ctx.model
    return hashlib.sha1(json.dumps([ctx.cfg["model"]["backbone"], info.get("source"), info.get("path"),
                                    info.get("timm_name"), model.image_size, s.ds.fingerprint],
                                   sort_keys=True).encode()).hexdigest()[:16]


def view_features(ctx: Context, views: int) -> np.ndarray:
    """Backbone features of every training image under ``views`` dihedral views: V×N×F (cached on disk)."""
    from mai_core.models.backbones import extract_features
    from mai_core.models.model import ModelFeatures

    s = ctx.session
    key = _cache_key(ctx)
    fe = ModelFeatures(ctx.model)
    feats = []
    for v in range(views):
        if ctx.stop.set:
            raise StoppedEarly

        def images(v=v):
            return dihedral_view_np(s.images().cpu().numpy(), v)

        arr = extract_features(ctx.cfg["model"]["backbone"], images, n=s.ds.n_train, model=fe, device=ctx.rt.device,
                               cache_key=f"train_{key}_view{v}", weights_tag=str(s.weights_info.get("source")),
                               progress=ctx.progress and ctx.rt.is_main,
                               batch_size=int(ctx.cfg["predict"]["batch_size"]))
        feats.append(arr.astype(np.float32, copy=False))
    return np.stack(feats)


def run_frozen(ctx: Context) -> None:
    """Heads on cached embeddings; each step draws one dihedral view per sample (augmentation for free)."""
    import torch

    from mai_core.models.model import cosine_lr

    cfg, fz, s, rec, state = ctx.cfg, ctx.cfg["frozen"], ctx.session, ctx.rec, ctx.state
    views = int(fz["views"]) if cfg["aug"]["policy"] not in (None, "", "none", "off") else 1
    F_all = torch.from_numpy(view_features(ctx, views))  # V×N×F
    model = ctx.model
    dev = ctx.rt.device
    epochs, bs, lr = int(fz["epochs"]), int(fz["batch_size"]), float(fz["lr"])
    n_tr = len(s.train_idx)
    spe = max(1, math.ceil(n_tr / bs))
    total = epochs * spe
    params = [p for p in model.heads.parameters() if p.requires_grad]
    ctx.optimizer = torch.optim.AdamW([{"params": params, "lr": lr, "base_lr": lr}],
                                      weight_decay=float(cfg["optim"]["weight_decay"]))
    start_epoch = 0
    if ctx.resume:
        start_epoch = int(ctx.restore()["epoch"])
        rec.truncate_metrics(start_epoch)
    seed = int(cfg["seed"])
    gstep = start_epoch * spe
    Zt = torch.from_numpy(s.Z)
    t_start = last_save = time.time()
    best_sd = None
    for epoch in range(start_epoch, epochs):
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        torch.manual_seed(seed * 1000 + epoch)
        perm = s.train_idx[torch.randperm(n_tr, generator=g).numpy()]
        model.heads.train()
        t_ep, loss_sum, loss_n = time.time(), 0.0, 0
        for step in range(spe):
            idx = perm[step * bs:(step + 1) * bs]
            if len(idx) < 2:
                continue
            v = torch.randint(0, views, (len(idx),), generator=g)
            f = F_all[v, torch.from_numpy(idx)].to(dev)
            y = Zt[idx].to(dev)
            for pg in ctx.optimizer.param_groups:
                pg["lr"] = pg["base_lr"] * cosine_lr(gstep, total, spe, 0.01)
            loss = ctx.loss_fn(model.head_forward(f).float(), y)
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ctx.optimizer.step()
            gstep += 1
            loss_sum += float(loss.detach())
            loss_n += 1
            if ctx.stop.set:
                break
        if ctx.stop.set:
            rec.save_best(model, best_sd)  # held in memory only: keep it for the resumed run
            ctx.checkpoint(epoch, 0, gstep)
            return
        model.heads.eval()
        val_loss, val_pcc, is_best = float("nan"), float("nan"), not len(s.val_idx)
        if len(s.val_idx):
            with torch.no_grad():
                fv = F_all[:, torch.from_numpy(s.val_idx)].to(dev)
                z = torch.stack([model.head_forward(fv[i]).float() for i in range(views)]).mean(0).cpu().numpy()
            val_loss, val_pcc = s.val_metrics(z, ctx.loss_fn)
            is_best = state.improve(val_pcc, epoch + 1)
        dt = time.time() - t_ep
        state.epochs_done = epoch + 1
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, loss_n), "val_loss": val_loss,
               "val_gene_pcc": val_pcc, "lr": float(ctx.optimizer.param_groups[0]["lr"]),
               "imgs_per_s": n_tr / max(dt, 1e-9), "time": round(state.elapsed(), 2)}
        if is_best:
            best_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rec.metrics(row)
        rec.log(f"epoch {epoch + 1}/{epochs}: train_loss {row['train_loss']:.4f} val_gene_pcc {val_pcc:.4f}",
                echo=False)
        if epoch + 1 == epochs or time.time() - last_save >= 5.0:
            ctx.checkpoint(epoch + 1, 0, gstep)
            last_save = time.time()
        rate = (time.time() - t_start) / (epoch + 1 - start_epoch)
        rec.status(state="running", epoch=epoch + 1, epochs=epochs, progress=(epoch + 1) / epochs,
                   eta_s=round(rate * (epochs - epoch - 1), 1), best_val_gene_pcc=state.best_pcc,
                   force=epoch + 1 == epochs)
    rec.save_best(model, best_sd)
    rec.log(f"frozen heads: best val gene PCC {state.best_pcc} at epoch {state.best_epoch}")


def run_ridge(ctx: Context) -> None:
    """Closed-form ridge on plain embeddings (alpha by validation or leave-one-out), written into the head."""
    import torch

    from mai_core.models.ridge import DEFAULT_ALPHAS, fit_ridge, predict_ridge

    s, rec, state = ctx.session, ctx.rec, ctx.state
    F_all = view_features(ctx, 1)[0]
    rc = ctx.cfg["ridge"]
    tr, va = s.train_idx, s.val_idx
    fit = fit_ridge(F_all[tr], s.Z[tr], F_all[va] if len(va) else None, s.Z[va] if len(va) else None,
                    alphas=rc.get("alphas") or DEFAULT_ALPHAS, pca=int(rc.get("pca") or 0))
    head = ctx.model.heads[0].last_linear()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.weight.T.copy()))
        head.bias.copy_(torch.from_numpy(fit.bias))
    val_loss, val_pcc = float("nan"), float("nan")
    if len(va):
        val_loss, val_pcc = s.val_metrics(predict_ridge(fit, F_all[va]), ctx.loss_fn)
        state.best_pcc, state.best_epoch = val_pcc, 1
    state.epochs_done = 1
    rec.log(f"ridge: alpha {fit.alpha:g} (pca {fit.pca or 'off'}), val gene PCC {val_pcc:.4f}")
    rec.metrics({"epoch": 1, "train_loss": float("nan"), "val_loss": val_loss, "val_gene_pcc": val_pcc, "lr": 0.0,
                 "imgs_per_s": float("nan"), "time": round(state.elapsed(), 2), "ridge_alpha": fit.alpha,
                 "ridge_pca": fit.pca})
    ctx.checkpoint(1, 0, 1, best=True)
