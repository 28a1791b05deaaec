"""Exponential moving average of a model's weights (and BN statistics), updated with fused foreach ops."""

from __future__ import annotations


class EMA:
    """Exponential moving average of a model's floating-point state (weights and BN statistics)."""

    def __init__(self, model, decay: float):
        import torch

        self.decay = float(decay)
        self.shadow = {k: v.detach().clone().float() if torch.is_floating_point(v) else v.detach().clone()
                       for k, v in model.state_dict().items()}
        self._pairs = None

    def update(self, model, step: int) -> None:
        import torch

        d = min(self.decay, (1.0 + step) / (10.0 + step))
        if self._pairs is None or self._pairs[2] is not model:
            state = model.state_dict()
            fl = [k for k, v in state.items() if torch.is_floating_point(v)]
            other = [k for k, v in state.items() if not torch.is_floating_point(v)]
            self._pairs = ([self.shadow[k] for k in fl], [state[k] for k in fl], model,
                           [(self.shadow[k], state[k]) for k in other])
        shadows, live, _, other = self._pairs
        with torch.no_grad():
            torch._foreach_mul_(shadows, d)
            torch._foreach_add_(shadows, [t.detach().float() for t in live], alpha=1.0 - d)
            for s, v in other:
                s.copy_(v)

    def load(self, shadow: dict, device) -> None:
        self.shadow = {k: v.to(device) for k, v in shadow.items()}
        self._pairs = None

    def copy_to(self, model) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
