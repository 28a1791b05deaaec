"""What a training strategy works with: config, session, runtime, recorder, progress, stop flag, loss."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from mai_core.training.recorder import Recorder, TrainState
from mai_core.training.runtime import Runtime, StopFlag
from mai_core.training.session import Session


@dataclass
class Context:
    cfg: dict
    session: Session
    rt: Runtime
    rec: Recorder
    state: TrainState
    stop: StopFlag
    loss_fn: object
    resume: bool = False
    progress: bool = True
    optimizer: object = None
    ema: object = None
    _ema_model: object = field(default=None, repr=False)

    @property
    def model(self):
        """The plain (unwrapped) model being trained."""
        return self.session.raw_model()

    def eval_model(self):
        """The weights used for prediction: the EMA copy when enabled, else the model itself."""
        raw = self.model
        if self.ema is None:
            return raw
        if self._ema_model is None:
            self._ema_model = copy.deepcopy(raw)
        self.ema.copy_to(self._ema_model)
        return self._ema_model

    def checkpoint(self, epoch_done: int, step_in_epoch: int, global_step: int, best: bool = False) -> None:
        self.rec.save_checkpoint(self.eval_model(), self.model, self.state, epoch_done, step_in_epoch, global_step,
                                 optimizer=self.optimizer, ema=self.ema, best=best)

    def restore(self) -> dict:
        """Continue from last_state.pt (``--resume``): model, optimizer, EMA, RNG, best score, time spent."""
        return self.rec.load_checkpoint(self.model, self.state, self.optimizer, self.ema, self.rt.device)

    def stop_requested(self) -> bool:
        """True when any process got a stop signal (all processes agree)."""
        self.stop.set = self.rt.any(self.stop.set)
        return self.stop.set
