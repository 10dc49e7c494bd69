"""The transformer as the sampler's denoiser ``f(x, sigma) -> x0``, with FramePack's guidance.

The sampler (``fpgen.sampling``) knows nothing of models; everything model-side of a step lives
here: the network's quantised scalars, distilled guidance, real CFG with rescale, and pinning the
last frame to an end picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fpgen.packing import PackedContext
from fpgen.transformer import BlockStack, Conditioning, packed_forward


@dataclass(frozen=True)
class Guidance:
    distilled: float = 10.0  # the distilled guidance scale the network is conditioned on
    cfg: float = 1.0  # real classifier-free guidance: 1 runs no negative pass
    rescale: float = 0.0  # guidance rescale (0 disables)


def network_scalars(sigma: torch.Tensor, distilled_guidance: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The timestep (sigma*1000) and distilled guidance (gs*1000) per batch row as the network sees them: in its own dtype (bf16 quantises both)."""
    timestep = (sigma.float() * 1000.0).to(dtype)
    guidance = torch.full(sigma.shape, distilled_guidance * 1000.0, dtype=torch.float32, device=sigma.device).to(dtype)
    return timestep, guidance


def guided_velocity(positive: torch.Tensor, negative: torch.Tensor | None, cfg: float, rescale: float) -> torch.Tensor:
    """Real classifier-free guidance with guidance rescale (std of the guided prediction matched to the positive one)."""
    if negative is None:
        return positive
    guided = negative + cfg * (positive - negative)
    if rescale == 0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


def make_denoiser(model, blocks: BlockStack, positive: Conditioning, negative: Conditioning | None, context: PackedContext, guidance: Guidance):
    """The transformer as ``f(x, sigma) -> x0`` with FramePack's conventions.

    The network sees x, the timestep sigma*1000 and the distilled guidance gs*1000 all in its own
    dtype (bf16 quantises both), and x0 = x - sigma*v is formed from that quantised x with the
    unquantised sigma. With ``cfg == 1`` there is no negative pass.
    """
    dtype = model.x_embedder.proj.weight.dtype
    run_negative = guidance.cfg != 1.0 and negative is not None

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_in = x.to(dtype)
        timestep, distilled = network_scalars(sigma, guidance.distilled, dtype)
        positive_v = packed_forward(model, x_in, timestep, distilled, positive, context, blocks)
        negative_v = packed_forward(model, x_in, timestep, distilled, negative, context, blocks) if run_negative else None
        velocity = guided_velocity(positive_v, negative_v, guidance.cfg, guidance.rescale)
        return x_in.float() - velocity * sigma.float().view(-1, *([1] * (x.ndim - 1)))

    return denoise


def pin_last_frame(denoise, latent: torch.Tensor):
    """A denoiser whose clean prediction always ends with ``latent`` (F1's end picture).

    UniPC steps from the clean predictions, so the pinned frame follows the exact flow-matching path
    from its noise to ``latent`` and the section's output ends with it, while the model makes every
    other frame of the window attend to it at every step.
    """

    def pinned(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x0 = denoise(x, sigma)
        return torch.cat([x0[:, :, :-1], latent.to(x0)], dim=2)

    return pinned
