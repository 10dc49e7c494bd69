"""One call of the FramePack transformer, the way the official implementation makes it.

We drive diffusers' ``HunyuanVideoFramepackTransformer3DModel`` through its own submodules rather
than its ``forward`` so that the official details are explicit: the history slots and their RoPE are
packed by ``fpgen.packing``, the final projection runs in float32 (the official
``high_quality_fp32_output_for_inference``), step caches can skip the block stack, and every block is
an ordinary call that compilation, offloading and gradient checkpointing can wrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F

from fpgen.packing import PackedContext


@dataclass(frozen=True)
class Conditioning:
    """Text and image conditioning of one prompt, already in the transformer's dtype and device."""

    prompt_embeds: torch.Tensor  # (B, L, D) Llama hidden states, zero-padded
    prompt_mask: torch.Tensor  # (B, L) bool, True on real tokens
    pooled: torch.Tensor  # (B, P) CLIP pooled output
    image_embeds: torch.Tensor  # (B, N, E) SigLIP last hidden state

    def to(self, device=None, dtype=None) -> Conditioning:
        return Conditioning(
            self.prompt_embeds.to(device=device, dtype=dtype),
            self.prompt_mask.to(device=device),
            self.pooled.to(device=device, dtype=dtype),
            self.image_embeds.to(device=device, dtype=dtype),
        )


class Float32Linear(torch.nn.Linear):
    """A Linear that computes in float32 whatever its input's dtype (the official high-quality output head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight, self.bias)


def use_float32_head(model: torch.nn.Module) -> None:
    """Run the final projection in float32 on float32-cast hidden states, as the official demo does.

    The module stays a Linear with the same parameter names, so checkpoints and diffusers' own
    forward keep working.
    """
    head = model.proj_out
    fp32 = Float32Linear(head.in_features, head.out_features, bias=head.bias is not None, device=head.weight.device, dtype=torch.float32)
    fp32.load_state_dict({name: tensor.float() for name, tensor in head.state_dict().items()})
    model.proj_out = fp32.requires_grad_(head.weight.requires_grad)


def _rope(model, indices: torch.Tensor, height: int, width: int, device, kernel: tuple[int, int, int] | None = None):
    """Rotary tables of a token group; for the 2x/4x groups the full-grid table is padded and average-pooled."""
    cos, sin = model.rope(frame_indices=indices, height=height, width=width, device=device)
    if kernel is not None:
        cos, sin = model._pad_rotary_emb((cos, sin), height // model.config.patch_size, width // model.config.patch_size, kernel)
    return cos, sin


def embed_image_tokens(model, latents: torch.Tensor, context: PackedContext):
    """Patchify the noisy window and the three history slots into one token sequence [4x, 2x, 1x, window]."""
    dtype = model.x_embedder.proj.weight.dtype
    _, _, _, height, width = latents.shape
    device = latents.device
    tokens = model.x_embedder(latents.to(dtype))
    slots = (context.clean, context.clean_2x, context.clean_4x)  # a slot without frames (one-frame edits) is left out
    clean, clean_2x, clean_4x = model.clean_x_embedder(*(slot.to(device=device, dtype=dtype) if slot.shape[2] else None for slot in slots))
    groups = [
        (clean_4x, context.indices.clean_4x, (4, 4, 4)),
        (clean_2x, context.indices.clean_2x, (2, 2, 2)),
        (clean, context.indices.clean, None),
        (tokens, context.indices.latents, None),
    ]
    groups = [(embedded, _rope(model, indices, height, width, device, kernel)) for embedded, indices, kernel in groups if embedded is not None]
    hidden = torch.cat([g[0] for g in groups], dim=1)
    rope = (torch.cat([g[1][0] for g in groups]), torch.cat([g[1][1] for g in groups]))
    return hidden, rope


def embed_conditioning(model, timestep: torch.Tensor, guidance: torch.Tensor | None, cond: Conditioning):
    """Timestep/guidance/pooled embedding and the text stream [image tokens, refined text], with its mask."""
    temb, _ = model.time_text_embed(timestep, cond.pooled, guidance)
    text = model.context_embedder(cond.prompt_embeds, timestep, cond.prompt_mask)
    image = model.image_projection(cond.image_embeds)
    context = torch.cat([image, text], dim=1)
    mask = torch.cat([cond.prompt_mask.new_ones(image.shape[:2]), cond.prompt_mask], dim=1)
    return temb, context, mask


class BlockHook(Protocol):
    """A feature around the block stack: called with the next ``run`` and the blocks' inputs."""

    def __call__(self, run, hidden, context, temb, attention_mask, rope) -> torch.Tensor: ...

    def reset(self) -> None: ...


class BlockStack(torch.nn.Module):
    """The 20 dual-stream and 40 single-stream blocks as one module.

    Grouping them lets offloading prefetch block after block and lets step caches skip them as a
    unit. Features attach as ``hooks`` (the diffusers-hooks way): each wraps the call of the ones
    after it, and ``reset_hooks`` starts their state afresh for a new section. ``calls`` counts the
    passes asked for, ``computed`` those that really ran the blocks. The blocks stay registered on
    the transformer too; this module only borrows them.
    """

    def __init__(self, model):
        super().__init__()
        self.transformer_blocks = model.transformer_blocks
        self.single_transformer_blocks = model.single_transformer_blocks
        object.__setattr__(self, "model", model)  # not a submodule: read for its gradient-checkpointing switch
        self.hooks: list[BlockHook] = []
        self.calls = self.computed = 0

    def forward(self, hidden, context, temb, attention_mask, rope):
        self.calls += 1
        run = self.run_blocks
        for hook in reversed(self.hooks):
            run = partial(hook, run)
        return run(hidden, context, temb, attention_mask, rope)

    def reset_hooks(self) -> None:
        for hook in self.hooks:
            hook.reset()

    def run_blocks(self, hidden, context, temb, attention_mask, rope):
        self.computed += 1
        return self.run_span(0, None, hidden, context, temb, attention_mask, rope)[0]

    def lend(self, index: int, use):
        """``use(block)`` with block ``index`` ready to compute (a streamed stack fetches its weights for the call)."""
        return use((*self.transformer_blocks, *self.single_transformer_blocks)[index])

    def run_span(self, start: int, stop: int | None, hidden, context, temb, attention_mask, rope):
        """Blocks ``start:stop`` of the 60 (dual-stream first): ``(hidden, context)`` after them."""
        checkpoint = torch.is_grad_enabled() and getattr(self.model, "gradient_checkpointing", False)
        for block in (*self.transformer_blocks, *self.single_transformer_blocks)[start:stop]:
            if checkpoint:
                hidden, context = self.model._gradient_checkpointing_func(block, hidden, context, temb, attention_mask, rope)
            else:
                hidden, context = block(hidden, context, temb, attention_mask, rope)
        return hidden, context


def packed_forward(
    model,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    guidance: torch.Tensor | None,
    cond: Conditioning,
    context: PackedContext,
    blocks: BlockStack,
) -> torch.Tensor:
    """The velocity prediction (float32, shape of ``latents``) for the noisy window ``latents``, through ``blocks``."""
    batch, _, frames, height, width = latents.shape
    p = model.config.patch_size
    window_tokens = frames * (height // p) * (width // p)

    hidden, rope = embed_image_tokens(model, latents, context)
    temb, text, text_mask = embed_conditioning(model, timestep, guidance, cond)
    if batch == 1:  # crop the text to its real length: no mask needed (the official batch-1 path)
        text, attention_mask = text[:, : int(text_mask.sum())], None
    else:  # keep padding, mask it out of attention
        image_tokens = hidden.shape[1]
        attention_mask = torch.cat([text_mask.new_ones((batch, image_tokens)), text_mask], dim=1)[:, None, None, :]

    hidden = blocks(hidden, text, temb, attention_mask, rope)

    hidden = model.norm_out(hidden[:, -window_tokens:], temb)
    out = model.proj_out(hidden).float()
    out = out.reshape(batch, frames, height // p, width // p, -1, 1, p, p)
    return out.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
