"""``--ema DECAY``: an exponential moving average of the trained weights, for from-scratch runs.

Small diffusion models trained from scratch sample far better from averaged weights. The average
is kept in float32 beside the trained weights, updated after every optimizer step, saved in each
checkpoint (``ema.safetensors``) so a resumed run continues it exactly, and swapped in for the
held-out loss, the validation videos and the written result.

The decay warms up as diffusers' ``EMAModel`` does: step ``s`` (0-based) uses
``min(decay, (1 + s) / (10 + s))``, so the first steps' average follows the weights closely instead
of staying near the initialisation for thousands of steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def ema_decay(decay: float, step: int) -> float:
    return min(decay, (1 + step) / (10 + step))


class Ema:
    """The average of ``parameters`` (name -> trained parameter)."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter], decay: float):
        self.parameters, self.decay = parameters, decay
        self.average = {name: p.detach().float().clone() for name, p in parameters.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Blend in the weights after optimizer step ``step`` (0-based): average = d * average + (1 - d) * weights."""
        weight = 1.0 - ema_decay(self.decay, step)
        for name, parameter in self.parameters.items():
            self.average[name].lerp_(parameter.detach().float(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.cpu() for name, tensor in self.average.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.average) ^ set(state))
        if missing:
            raise KeyError(f"EMA weights do not match the model: {', '.join(missing[:3])}")
        self.average = {name: state[name].to(self.average[name]) for name in self.average}

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The averaged weights in place of the trained ones for the duration (copied in place, so hooks and compiled blocks see them)."""
        trained = {name: p.detach().clone() for name, p in self.parameters.items()}
        for name, parameter in self.parameters.items():
            parameter.copy_(self.average[name])
        try:
            yield
        finally:
            for name, parameter in self.parameters.items():
                parameter.copy_(trained[name])
