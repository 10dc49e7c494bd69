"""The blocks' joint attention, with a choice of kernel: PyTorch's SDPA or FlashAttention-3.

On Hopper, FA3 (the ``tokenspeed-fa3`` wheel, module ``flash_attn_interface``; ``pip install
'fpgen[hopper]'``) computes FramePack's attention 1.1-1.2x faster than the cuDNN kernel SDPA picks,
with the same error (benchmarks/RESULTS.md); the fast mode uses its FP8 forward. The wheel has no
backward pass, so training keeps SDPA.

diffusers reaches FA3 only through a distribution it checks by name (``flash_attn_3``), so fpgen
swaps the blocks' attention processors for its own, which do what diffusers' HunyuanVideo processor
does and call the chosen kernel on (batch, tokens, heads, head_dim) tensors: FA3's own layout.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fpgen.acceleration import FP8_MAX

FA3_MODULE = "flash_attn_interface"
HOPPER = (9, 0)

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def pick_attention(capability: tuple[int, int] | None, fa3_installed: bool, training: bool, fast: bool = False) -> tuple[str, str]:
    """The attention backend ("fa3", "fa3-fp8" in the fast mode, or "sdpa") and why, for the mode line.

    ``capability`` is the CUDA device's compute capability, None off CUDA.
    """
    if training:
        return "sdpa", "training: FlashAttention-3's wheel has no backward pass"
    if capability is None:
        return "sdpa", "not a CUDA device"
    if capability != HOPPER:
        return "sdpa", f"FlashAttention-3 runs on Hopper (sm90) only, this GPU is sm{capability[0]}{capability[1]}"
    if not fa3_installed:
        return "sdpa", "FlashAttention-3 is not installed (pip install 'fpgen[hopper]')"
    if fast:
        return "fa3-fp8", "FlashAttention-3 in FP8 (fast mode) on Hopper"
    return "fa3", "FlashAttention-3 on Hopper"


def fa3_installed() -> bool:
    return importlib.util.find_spec(FA3_MODULE) is not None


def attention_for(device: torch.device, training: bool = False, fast: bool = False) -> tuple[str, str]:
    """``pick_attention`` for this device and this Python environment."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return pick_attention(capability, fa3_installed(), training, fast)


def sdpa_attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA on (B, S, H, D) tensors, exactly as diffusers' native backend calls it."""
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def fa3_attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """FA3 on (B, S, H, D) tensors; a padded batch (a mask: only batches above 1 have one) goes to SDPA."""
    if mask is not None:
        return sdpa_attend(query, key, value, mask)
    from flash_attn_interface import flash_attn_func

    return flash_attn_func(query, key, value)


def to_float8_heads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, H, D) -> e4m3 copy scaled per (batch, head), and the float32 (B, H) descales FA3 takes."""
    descale = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-6) / FP8_MAX
    return (x.float() / descale[:, None, :, None]).to(torch.float8_e4m3fn), descale


def fa3_fp8_attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """FA3's FP8 forward with K and V centred per head first, which keeps FP8's range for what varies.

    Both shifts are exact algebra: subtracting K's token mean adds the same constant to every score
    of a query row (softmax ignores it), and V's token mean comes back out of the attention unchanged
    because each row of the softmax sums to 1, so it is added back after. On DiT-like inputs this
    took FP8's error from 9.5% to 1.5% (research/kernels.md 3c). A padded batch goes to SDPA.
    """
    if mask is not None:
        return sdpa_attend(query, key, value, mask)
    from flash_attn_interface import flash_attn_func

    value_mean = value.float().mean(dim=1, keepdim=True)
    q8, q_descale = to_float8_heads(query)
    k8, k_descale = to_float8_heads(key.float() - key.float().mean(dim=1, keepdim=True))
    v8, v_descale = to_float8_heads(value.float() - value_mean)
    out = flash_attn_func(q8, k8, v8, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale)
    return (out.float() + value_mean).to(query.dtype)


ATTEND: dict[str, Attend] = {"sdpa": sdpa_attend, "fa3": fa3_attend, "fa3-fp8": fa3_fp8_attend}


class FramePackAttention:
    """diffusers' ``HunyuanVideoAttnProcessor2_0`` (dual- and single-stream blocks) with the kernel swapped.

    Dual-stream blocks project the text with their own ``add_*`` layers; single-stream blocks get
    the text appended to the image tokens. RoPE applies to the image tokens only. The operations
    and their order are diffusers', so with SDPA the output is bit-identical.
    """

    def __init__(self, backend: str):
        self.backend = backend
        self.attend = ATTEND[backend]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        dual = attn.add_q_proj is not None
        if not dual and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        query, key, value = heads(attn, hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        if image_rotary_emb is not None:
            rotated = query.shape[1] - (0 if dual else text)
            query, key = (rotate_image_tokens(x, image_rotary_emb, rotated) for x in (query, key))
        if dual and encoder_hidden_states is not None:
            added = heads(attn, encoder_hidden_states, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.norm_added_q, attn.norm_added_k)
            query, key, value = (torch.cat([x, y], dim=1) for x, y in zip((query, key, value), added))
        out = self.attend(query, key, value, attention_mask).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out, None
        out, text_out = out[:, :-text], out[:, -text:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return out, text_out


def heads(attn, x: torch.Tensor, to_q, to_k, to_v, norm_q, norm_k) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projected, per-head (B, S, H, D) query, key and value, with the query/key norms applied."""
    query, key, value = (proj(x).unflatten(2, (attn.heads, -1)) for proj in (to_q, to_k, to_v))
    query = norm_q(query) if norm_q is not None else query
    key = norm_k(key) if norm_k is not None else key
    return query, key, value


def rotate_image_tokens(x: torch.Tensor, rope, image_tokens: int) -> torch.Tensor:
    """RoPE on the first ``image_tokens`` tokens; the text tokens after them stay as they are."""
    from diffusers.models.embeddings import apply_rotary_emb

    if image_tokens == x.shape[1]:
        return apply_rotary_emb(x, rope, sequence_dim=1)
    return torch.cat([apply_rotary_emb(x[:, :image_tokens], rope, sequence_dim=1), x[:, image_tokens:]], dim=1)


def use_attention(transformer, backend: str) -> int:
    """Give every dual- and single-stream block an attention processor calling ``backend``; returns how many.

    Call it before compiling the blocks (the processor is traced into the compiled graph).
    """
    blocks = (*transformer.transformer_blocks, *transformer.single_transformer_blocks)
    for block in blocks:
        block.attn.set_processor(FramePackAttention(backend))
    return len(blocks)
