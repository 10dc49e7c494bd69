"""The flow-matching objective FramePack samples with, as a module accelerate can wrap.

x_t = (1 - t) * x0 + t * noise, and the network, fed the timestep t*1000 and the distilled guidance
exactly as at inference (``fpgen.denoiser.network_scalars``), predicts the velocity noise - x0 of
the section's window. Timesteps are logit-normal, sigmoid(N(0, 1)), then shifted towards noise by
t' = shift*t / (1 + (shift-1)*t); shift 3 is musubi-tuner's public FramePack recipe (inference
uses 7, the cap of FramePack's resolution rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fpgen.packing import PackedContext, context_to
from fpgen.training.samples import Batch
from fpgen.denoiser import network_scalars
from fpgen.transformer import BlockStack, Conditioning, packed_forward

EVAL_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)  # before the shift; the evaluation loss averages over them


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(batch: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """(batch,) float32 timesteps in (0, 1): logit-normal, then shifted."""
    return shift_timesteps(torch.sigmoid(torch.randn(batch, generator=generator)), shift)


class FlowMatchingLoss(torch.nn.Module):
    """The transformer plus its training objective; its ``forward`` is the loss.

    accelerate wraps this module (DDP, FSDP, autocast), so the loss has to be computed inside a
    ``forward`` call rather than by driving the transformer's submodules from outside.
    """

    def __init__(self, transformer: torch.nn.Module, guidance: float):
        super().__init__()
        self.transformer = transformer
        self.guidance = guidance
        object.__setattr__(self, "blocks", BlockStack(transformer))  # borrows the blocks; not registered a second time

    def forward(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: Conditioning, context: PackedContext) -> torch.Tensor:
        device = self.transformer.x_embedder.proj.weight.device
        dtype = self.transformer.x_embedder.proj.weight.dtype
        x0, noise, t = latents.to(device, torch.float32), noise.to(device, torch.float32), t.to(device)
        expand = t.view(-1, *([1] * (x0.ndim - 1)))
        noisy = (1 - expand) * x0 + expand * noise
        timestep, guidance = network_scalars(t, self.guidance, dtype)
        velocity = packed_forward(self.transformer, noisy, timestep, guidance, cond.to(device, dtype), context_to(context, device), self.blocks)
        return F.mse_loss(velocity.float(), noise - x0)


def draw(batch: Batch, shift: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, noise) for a batch, from one generator: timesteps first, then the noise."""
    t = sample_timesteps(batch.latents.shape[0], shift, generator)
    return t, torch.randn(batch.latents.shape, generator=generator)


@torch.no_grad()
def evaluation_loss(objective: torch.nn.Module, batches: list[Batch], shift: float, seed: int) -> float:
    """The mean loss over held-out batches at fixed timesteps and fixed noise: comparable from step to step."""
    generator = torch.Generator("cpu").manual_seed(seed)
    total, count = 0.0, 0
    for batch in batches:
        for value in EVAL_TIMESTEPS:
            t = shift_timesteps(torch.full((batch.latents.shape[0],), value), shift)
            noise = torch.randn(batch.latents.shape, generator=generator)
            total += float(objective(batch.latents, noise, t, batch.cond, batch.context))
            count += 1
    return total / count
