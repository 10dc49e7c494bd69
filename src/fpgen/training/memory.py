"""Memory savers for a LoRA's frozen base and for activations, so a 24 GB GPU can train the 13B model.

- ``cast_base_to_fp8``: the blocks' linears are stored in float8 and cast to bf16 layer by layer as
  they run (diffusers' layerwise casting): 26 -> 13 GB of weights.
- ``offloaded_checkpoint``: gradient checkpointing whose saved block inputs live in CPU memory; the
  GPU then holds one block's activations at a time instead of every block's input.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

# Kept in their own dtype: the patch embedders, conditioning embedders and the output head (small,
# and precision-sensitive), and the trainable LoRA weights.
FP8_SKIP = ("x_embedder", "clean_x_embedder", "context_embedder", "time_text_embed", "image_projection", "norm_out", "^proj_out$", "lora_")


def cast_base_to_fp8(model: torch.nn.Module) -> None:
    """Store the frozen block linears in float8 e4m3, compute in bf16.

    Unscaled, like musubi-tuner's ``--fp8_base`` without ``--fp8_scaled``: weights far below 1 lose
    relative precision, so expect a LoRA slightly different from one trained on a bf16 base.
    """
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(model, storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16, skip_modules_pattern=list(FP8_SKIP))


def offloaded_checkpoint(block: torch.nn.Module, hidden: torch.Tensor, context: torch.Tensor, *rest):
    """Checkpoint one transformer block keeping its saved (hidden, context) inputs on the CPU.

    A non-reentrant checkpoint keeps its inputs for the recomputation; handing it CPU copies moves
    the one activation that lives across the whole backward pass off the GPU. The block runs on the
    inputs' device as usual.
    """
    device = hidden.device

    def run(hidden_cpu, context_cpu, *others):
        return block(hidden_cpu.to(device, non_blocking=True), context_cpu.to(device, non_blocking=True), *others)

    return checkpoint(run, hidden.to("cpu"), context.to("cpu"), *rest, use_reentrant=False)


def enable_checkpointing(model, offload: bool) -> None:
    model.enable_gradient_checkpointing(offloaded_checkpoint if offload else None)
