"""The training engine: one entry point, :func:`train(config, out, resume=False)`, used by
``python -m mai_core train`` and background jobs.

It starts the runtime (device, precision, process group), prepares a :class:`~.session.Session`, records
the resolved config through the :class:`~.recorder.Recorder` (the only writer of the run directory), hands
over to a strategy from :data:`STRATEGIES` and finally predicts the validation split with the final
predictor (best weights, test-time augmentation as at predict time). SIGTERM/SIGINT finish the current
step, write a checkpoint and leave the run ``stopped``; ``resume`` continues from ``last_state.pt``.
"""

from __future__ import annotations

import copy
import traceback

from mai_core.errors import MaiError
from mai_core.runs.rundir import RunDir
from mai_core.training import finetune, frozen
from mai_core.training.config import deep_merge
from mai_core.training.context import Context
from mai_core.training.recorder import Recorder, TrainState
from mai_core.training.runtime import Runtime, StopFlag, StoppedEarly, rank_info
from mai_core.training.session import Session, planned_epochs

STRATEGIES = {"finetune": finetune.run, "frozen": frozen.run_frozen, "ridge": frozen.run_ridge}


class Trainer:
    """Trains one run directory from a resolved config (see :func:`mai_core.training.resolve_config`)."""

    def __init__(self, cfg: dict, out, resume: bool = False, progress: bool = True, force: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.force = force
        self.progress = progress
        self.stop = StopFlag()
        self.rec = Recorder(out, is_main=rank_info()[0] == 0)
        self.rt: Runtime | None = None

    @property
    def run(self) -> RunDir:
        return self.rec.run

    def _setup(self) -> Context:
        from mai_core.training.objective import build_loss

        cfg, rec = self.cfg, self.rec
        rec.check_target(self.resume, force=self.force)
        self.rt = rt = Runtime.start(cfg["runtime"])
        rec.is_main = rt.is_main
        rec.begin(planned_epochs(cfg))
        session = Session(cfg, rt, progress=self.progress)
        facts = session.prepare()
        info = session.weights_info
        if info.get("source") == "random":
            rec.log(f"WARNING: {info.get('warning')}", echo=False)
        resolved = deep_merge(cfg, facts)
        rec.write_setup(resolved, session.genes, session.grouping)
        spec = cfg["model"]
        rec.log(f"data {session.ds.root}: {session.ds.n_train} samples, {len(session.genes)} genes; "
                f"split: {session.split_desc} ({len(session.train_idx)} train / {len(session.val_idx)} val)")
        rec.log(f"model {spec['kind']}: backbone {spec['backbone']} weights={info.get('source')} "
                f"({info.get('path') or '-'}), {len(session.groups)} head(s), device {rt.device}"
                f"{' x' + str(rt.world) if rt.world > 1 else ''}, amp={'bf16' if rt.amp else 'off'}")
        loss_fn, loss_facts = build_loss(cfg, session.genes, session.groups)
        if loss_facts["weighted_genes"] or loss_facts["coexp_sets"]:
            rec.log(f"loss: {loss_facts['weighted_genes']} genes of {loss_facts['pathway_sets']} gene sets weighted "
                    f"x{cfg['loss'].get('pathway_weight')}; co-loss on {loss_facts['coexp_sets']} sets")
        return Context(cfg=cfg, session=session, rt=rt, rec=rec, state=self.state, stop=self.stop,
                       loss_fn=loss_fn,
                       resume=self.resume, progress=self.progress)

    def run_training(self) -> RunDir:
        self.state = TrainState()
        self.stop.install()
        try:
            ctx = self._setup()
            try:
                STRATEGIES[self.cfg["model"]["kind"]](ctx)
            except StoppedEarly:
                self.rec.status(force=True, state="stopped", error=None, eta_s=None)
                self.rec.log(f"stopped by {self.stop.signal} before the first training step; nothing to resume, "
                             "start the run again")
                return self.run
            if self.stop.set:
                self.rec.status(force=True, state="stopped", error=None, eta_s=None)
                self.rec.log(f"stopped by {self.stop.signal}; checkpoint written, continue with --resume")
            else:
                self._finish(ctx)
        finally:
            self.stop.restore()
            if self.rt is not None:
                self.rt.close()
        return self.run

    def _finish(self, ctx: Context) -> None:
        """Validation predictions of the final predictor (best weights, TTA as at predict time)."""
        from mai_core.models.model import load_state
        from mai_core.models.tta import tta_views

        s, rec, state, rt = ctx.session, ctx.rec, ctx.state, ctx.rt
        done = int(state.epochs_done or planned_epochs(self.cfg))
        final = {"state": "finished", "progress": 1.0, "eta_s": 0, "epoch": done, "epochs": done,
                 "best_val_gene_pcc": state.best_pcc, "best_epoch": state.best_epoch, "phase": None}
        if len(s.val_idx):
            rt.barrier()  # the main process has written the checkpoints
            ck = rec.best_or_last_checkpoint()
            model = copy.deepcopy(ctx.model)
            if ck.is_file():
                load_state(model, ck)
            model = model.to(rt.device)
            views = tta_views(self.cfg)
            phase = f"final validation ({views} view{'s' if views > 1 else ''} per patch)"
            rec.status(force=True, phase=phase, phase_done=0, phase_total=len(s.val_idx), eta_s=None)

            def on_batch(done: int, total: int) -> None:
                rec.status(phase=phase, phase_done=done * rt.world, phase_total=len(s.val_idx))
                if self.stop.set and rt.world == 1:
                    raise StoppedEarly

            try:
                z = s.predict_z(model, s.val_idx, views, on_batch=on_batch)
            except StoppedEarly:
                rec.status(force=True, state="stopped", error=None, eta_s=None, phase=None)
                rec.log(f"stopped by {self.stop.signal} during the final validation; checkpoints are kept, "
                        "--resume runs the final validation again")
                return
            _, pcc = s.val_metrics(z, ctx.loss_fn)
            final["final_val_gene_pcc"] = pcc
            pred = z * s.y_std + s.y_mean
            rec.val_predictions([s.ds.ids[i] for i in s.val_idx], s.genes, pred, s.ds.X[s.val_idx])
            rec.log(f"validation gene PCC of the final predictor (TTA {views} view(s)): {pcc:.4f}")
            try:
                self._spatial(ctx, model, pred, pcc, views)
            except StoppedEarly:
                rec.status(force=True, state="stopped", error=None, eta_s=None, phase=None)
                rec.log(f"stopped by {self.stop.signal} while fitting the spatial context; checkpoints are kept, "
                        "--resume runs the final validation again")
                return
        rec.status(force=True, **final)
        rec.log(f"finished in {state.elapsed() / 60:.1f} min -> {self.run.path}")


    def _spatial(self, ctx: Context, model, pred, pcc: float, views: int) -> None:
        """Spatial context chosen on the validation spots when the data has coordinates: the context head
        when it beats the fine-tuned head, else neighbour smoothing (:mod:`.spatialfit`)."""
        from mai_core.training.spatialfit import spatial_facts

        s, rec, rt = ctx.session, ctx.rec, ctx.rt
        phase = "spatial context (embedding every spot)"
        rec.status(force=True, phase=phase, phase_done=0, phase_total=s.ds.n_train, eta_s=None)

        def on_batch(done: int, total: int) -> None:
            rec.status(phase=phase, phase_done=done * rt.world, phase_total=s.ds.n_train)
            if self.stop.set and rt.world == 1:
                raise StoppedEarly

        facts, notes, head = spatial_facts(self.cfg, s, model, pred, pcc, views, on_batch=on_batch)
        rec.context_head(head)
        rec.add_facts({"spatial": facts})
        for note in notes:
            rec.log(note)


def train(config: dict, out, resume: bool = False, progress: bool = True, force: bool = False) -> RunDir:
    """Train into ``out``; exceptions mark the run failed (message in status, traceback in log.txt).

    ``force`` starts over in a folder that holds a run with progress, or that holds something else."""
    trainer = Trainer(config, out, resume=resume, progress=progress, force=force)
    try:
        return trainer.run_training()
    except MaiError as exc:
        trainer.rec.fail(exc.render(), None)
        raise
    except KeyboardInterrupt:
        trainer.rec.fail("interrupted", None, state="stopped")
        raise
    except Exception as exc:
        trainer.rec.fail(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        raise
