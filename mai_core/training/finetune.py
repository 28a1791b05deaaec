"""Fine-tuning strategy: the backbone (all of it or its last stages) and the heads, end to end.

AdamW (one rate for heads, ``lr × backbone_lr_mult`` for the backbone, no decay on norms and biases),
linear warm-up + cosine decay, gradient clipping, optional EMA, bf16 autocast + channels_last + fused AdamW
on CUDA, optional ``torch.compile``, DDP under torchrun, and a time budget that shortens the schedule.

One step is :class:`TrainStep` (also what ``bench/gpu_suite.py`` times as "our recipe"): batches are cut from
the uint8 image cache and augmented on their device (:func:`load_batch`), the parameter list for gradient
clipping is built once, and the running loss stays on the device until the epoch ends (no per-step sync).
"""

from __future__ import annotations

import sys
import time

from mai_core.training.context import Context
from mai_core.training.ema import EMA
from mai_core.training.runtime import StoppedEarly
from mai_core.training.session import make_augment


def param_groups(model, optim_cfg: dict) -> list[dict]:
    """Optimizer groups: heads at ``lr``; backbone weights and norms at ``lr × backbone_lr_mult``."""
    head = [p for p in model.heads.parameters() if p.requires_grad]
    bb = [p for p in model.backbone.parameters() if p.requires_grad]
    lr = float(optim_cfg["lr"])
    groups = [{"params": head, "lr": lr, "base_lr": lr, "name": "heads"}]
    if bb and float(optim_cfg["backbone_lr_mult"]) > 0:
        blr = lr * float(optim_cfg["backbone_lr_mult"])
        groups.append({"params": [p for p in bb if p.ndim > 1], "lr": blr, "base_lr": blr, "name": "backbone"})
        groups.append({"params": [p for p in bb if p.ndim <= 1], "lr": blr, "base_lr": blr,
                       "name": "backbone_norm", "weight_decay": 0.0})
    elif bb:
        for p in bb:
            p.requires_grad_(False)
    return groups


def make_optimizer(groups, weight_decay: float, cuda: bool):
    import torch

    kw = {"weight_decay": float(weight_decay)}
    if cuda:
        kw["fused"] = True
    return torch.optim.AdamW(groups, **kw)


def load_batch(session, idx, aug, rt):
    """(images, standardised targets) of dataset rows ``idx`` on the device, augmented when ``aug`` is set."""
    import torch

    x = session.batch(idx)
    y = torch.from_numpy(session.Z[idx]).to(rt.device, non_blocking=True)
    if aug is not None:
        x, y = aug(x, y)
    return x, y


class TrainStep:
    """One optimisation step: learning rate, forward (bf16 autocast where the runtime says), loss, backward,
    gradient clipping, optimizer step, EMA. Returns the detached loss (still on the device)."""

    def __init__(self, train_model, optimizer, loss_fn, rt, clip: float = 0.0, ema=None, ema_model=None):
        self.model, self.optimizer, self.loss_fn, self.rt = train_model, optimizer, loss_fn, rt
        self.clip, self.ema, self.ema_model = float(clip), ema, ema_model
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def __call__(self, x, y, lr_mult: float, gstep: int):
        import torch

        rt = self.rt
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_mult
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            pred = self.model(x)
        loss = self.loss_fn(pred.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.ema_model, gstep)
        return loss.detach()


def steps_per_epoch(n_train: int, world: int, batch_size: int) -> int:
    """Steps each process takes per epoch (a last batch of fewer than 2 samples is dropped)."""
    per_rank = n_train // world
    return max(1, per_rank // batch_size if per_rank % batch_size < 2 else per_rank // batch_size + 1)


def _end_epoch(ctx: Context, epoch: int, epochs: int, train_loss: float, lr: float, ips: float, gstep: int) -> None:
    """Validate (every ``runtime.val_every`` epochs and at the end), record the epoch, checkpoint."""
    s, state = ctx.session, ctx.state
    val_loss, val_pcc = float("nan"), float("nan")
    every = max(1, int(ctx.cfg["runtime"].get("val_every") or 1))
    is_best = False
    if len(s.val_idx) and (epoch % every == 0 or epoch == epochs):
        z = s.predict_z(ctx.eval_model(), s.val_idx, 1)
        val_loss, val_pcc = s.val_metrics(z, ctx.loss_fn)
        is_best = state.improve(val_pcc, epoch)
    elif not len(s.val_idx):
        is_best = True
    state.epochs_done = epoch
    ctx.rec.metrics({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_gene_pcc": val_pcc,
                     "lr": float(lr), "imgs_per_s": float(ips), "time": round(state.elapsed(), 2)})
    ctx.rec.log(f"epoch {epoch}/{epochs}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
                f"val_gene_pcc {val_pcc:.4f} lr {lr:.2e} {ips:.1f} img/s")
    ctx.checkpoint(epoch, 0, gstep, best=is_best)
    ctx.rec.status(force=True, state="running", epoch=epoch, epochs=epochs, progress=epoch / epochs,
                   best_val_gene_pcc=state.best_pcc)


def run(ctx: Context) -> None:
    import torch
    from tqdm.auto import tqdm

    from mai_core.models.model import cosine_lr, frozen_bn_eval

    cfg, o, s, rt, rec = ctx.cfg, ctx.cfg["optim"], ctx.session, ctx.rt, ctx.rec
    epochs, bs = int(o["epochs"]), int(o["batch_size"])
    seed = int(cfg["seed"])
    n_tr = len(s.train_idx)
    per_rank = n_tr // rt.world
    spe = steps_per_epoch(n_tr, rt.world, bs)
    total = epochs * spe
    warmup = int(round(float(o["warmup_epochs"]) * spe))
    ctx.optimizer = make_optimizer(param_groups(ctx.model, o), o["weight_decay"], rt.cuda)
    if float(o["ema"]) > 0:
        ctx.ema = EMA(ctx.model, float(o["ema"]))
    start_epoch, skip_steps = 0, 0
    if ctx.resume:
        blob = ctx.restore()
        start_epoch, skip_steps = int(blob["epoch"]), int(blob["step_in_epoch"])
        if skip_steps >= spe:
            start_epoch, skip_steps = start_epoch + 1, 0
        rec.truncate_metrics(start_epoch)
        rec.log(f"resuming at epoch {start_epoch + 1} step {skip_steps} (of {epochs} x {spe})")
    train_model = rt.wrap(s.model)
    if cfg["runtime"].get("compile"):
        train_model = torch.compile(train_model)
    s.images()
    if ctx.stop.set and not ctx.resume:
        raise StoppedEarly
    max_min = cfg["runtime"].get("max_train_minutes")
    deadline = None if not max_min else ctx.state.t0 + 60.0 * float(max_min) - ctx.state.elapsed_before
    step_fn = TrainStep(train_model, ctx.optimizer, ctx.loss_fn, rt, float(o["grad_clip"]), ctx.ema, ctx.model)
    gstep = start_epoch * spe + skip_steps
    session_steps, session_t0 = 0, time.time()
    out_of_time = False
    t_train0, epochs_session = time.time(), 0
    epoch = start_epoch - 1
    while epoch + 1 < epochs:
        epoch += 1
        torch.manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n_tr, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).numpy()
        perm = s.train_idx[order]
        if rt.world > 1:
            perm = rt.shard(perm[: per_rank * rt.world])
        aug = make_augment(cfg["aug"]["policy"], seed * 1000 + epoch + 17 * rt.rank, data_dir=s.ds.root)
        train_model.train()
        frozen_bn_eval(ctx.model.backbone)
        t_ep, n_img, loss_sum, loss_n = time.time(), 0, None, 0
        first = skip_steps if epoch == start_epoch else 0
        bar = tqdm(range(first, spe), desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                   disable=not (ctx.progress and rt.is_main), file=sys.stderr, leave=False)
        step = first
        for step in bar:
            idx = perm[step * bs:(step + 1) * bs]
            if len(idx) < 2:
                continue
            x, y = load_batch(s, idx, aug, rt)
            loss = step_fn(x, y, cosine_lr(gstep, total, warmup, float(o["min_lr_ratio"])), gstep)
            gstep += 1
            session_steps += 1
            n_img += len(idx) * rt.world
            loss_sum = loss if loss_sum is None else loss_sum + loss
            loss_n += 1
            if rec.status_due():
                rate = (time.time() - session_t0) / session_steps
                rec.status(state="running", epoch=epoch + 1, epochs=epochs, progress=gstep / total,
                           eta_s=round(rate * (total - gstep), 1))
            if ctx.stop_requested():
                break
            if deadline is not None and time.time() > deadline:
                out_of_time = True
                break
        bar.close()
        train_loss = float(loss_sum / max(1, loss_n)) if loss_sum is not None else float("nan")
        train_loss = rt.mean(train_loss)
        if ctx.stop.set and not out_of_time and step + 1 < spe:
            ctx.checkpoint(epoch, step + 1, gstep)
            return
        dt = time.time() - t_ep
        _end_epoch(ctx, epoch + 1, epochs, train_loss, ctx.optimizer.param_groups[0]["lr"],
                   n_img / max(dt, 1e-9), gstep)
        if ctx.stop.set or out_of_time:
            if out_of_time:
                rec.log(f"time budget of {max_min} min reached during epoch {epoch + 1}; finishing")
                ctx.stop.set = False
            return
        epochs_session += 1
        if deadline is not None and epoch + 1 < epochs:
            # budget-aware schedule: shorten the run (and its cosine decay) to what fits the time left
            per_epoch = (time.time() - t_train0) / epochs_session
            fit = rt.min_int(epoch + 1 + int(max(0.0, deadline - time.time()) // max(per_epoch, 1e-9)))
            if fit < epochs:
                rec.log(f"time budget of {max_min} min: shortening the schedule from {epochs} to "
                        f"{max(fit, epoch + 1)} epochs")
                epochs = max(fit, epoch + 1)
                total = epochs * spe
