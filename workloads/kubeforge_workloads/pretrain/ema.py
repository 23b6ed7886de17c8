"""A scheduled exponential moving average of the weights (the seed's recipe: decay 0.9999 over only the last ~3.5%
of the steps, since earlier weights would contribute under 1% to the average anyway).

Nothing is kept, copied or computed before `start_step`: the first update at that step copies the weights, every
later one blends them in. The average lives in the same kind of tensors as the parameters (sharded DTensors
under FSDP, so each rank averages only its shard), and goes into every checkpoint once it exists.
"""

from __future__ import annotations

import math
from typing import Optional


def ema_start_step(max_steps: int, start_fraction: float) -> int:
    """The optimizer step (1-based, counted after the update) at which the average starts."""
    return max(1, math.ceil(max_steps * start_fraction))


def parameter_key(name: str) -> str:
    """A parameter's name in the unwrapped model: DDP prefixes `module.`, but one worker trains unwrapped, and a
    checkpoint must load under any worker count."""
    return name.removeprefix("module.")


class ScheduledEMA:
    def __init__(self, decay: float, start_step: int):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be between 0 and 1 (exclusive), got {decay}")
        self.decay, self.start_step = decay, start_step
        self.shadow: Optional[dict] = None

    @property
    def active(self) -> bool:
        return self.shadow is not None

    def update(self, named_parameters, step: int) -> None:
        """After optimizer step `step` (1-based)."""
        import torch

        if step < self.start_step:
            return
        with torch.no_grad():
            if self.shadow is None:
                self.shadow = {parameter_key(name): p.detach().clone() for name, p in named_parameters}
                return
            for name, p in named_parameters:
                self.shadow[parameter_key(name)].lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return dict(self.shadow or {})

    def prepare_to_restore(self, named_parameters, step: int) -> dict:
        """Before loading a checkpoint taken at `step`: the tensors a checkpoint loader fills in place (shaped and
        sharded like the parameters) if the average had started by then, else {} and the average stays off."""
        import torch

        if step < self.start_step:
            self.shadow = None
            return {}
        with torch.no_grad():
            self.shadow = {parameter_key(name): p.detach().clone() for name, p in named_parameters}
        return self.shadow
