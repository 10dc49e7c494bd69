"""The attention backend: which kernel is chosen, and that swapping the processors keeps the tiny model's output."""

from __future__ import annotations

import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import HUB

from fpgen import attention
from fpgen.attention import attention_for, fa3_attend, fa3_fp8_attend, pick_attention, sdpa_attend, use_attention
from fpgen.loading import load_transformer
from fpgen.packing import pack_section
from fpgen.plan import plan_sections
from fpgen.transformer import BlockStack, Conditioning, packed_forward


@pytest.mark.parametrize(
    ("capability", "installed", "training", "expected", "reason"),
    [
        ((9, 0), True, False, "fa3", "Hopper"),
        ((9, 0), True, True, "sdpa", "no backward"),
        ((9, 0), False, False, "sdpa", "pip install 'fpgen\\[hopper\\]'"),
        ((9, 0), True, True, "sdpa", "no backward"),
        ((8, 9), True, False, "sdpa", "sm89"),
        ((10, 0), True, False, "sdpa", "sm100"),
        (None, True, False, "sdpa", "not a CUDA device"),
    ],
)
def test_backend_choice(capability, installed, training, expected, reason):
    name, why = pick_attention(capability, installed, training)
    assert name == expected
    assert re.search(reason, why)
    assert pick_attention(capability, installed, training, fast=True)[0] == ("fa3-fp8" if expected == "fa3" else "sdpa")


def test_backend_choice_reads_the_gpu_and_the_installed_modules(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: object() if name == "flash_attn_interface" else None)
    assert attention_for(torch.device("cuda"))[0] == "fa3"
    assert attention_for(torch.device("cuda"), training=True)[0] == "sdpa"
    assert attention_for(torch.device("cpu"))[0] == "sdpa"
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    assert attention_for(torch.device("cuda")) == ("sdpa", "FlashAttention-3 is not installed (pip install 'fpgen[hopper]')")


def inputs(batch: int):
    """A mid-video section of the tiny model; with batch 2 the second prompt is shorter, so attention gets a mask."""
    generator = torch.Generator().manual_seed(2)
    video = torch.randn((batch, 16, 7, 4, 6), generator=generator)
    context = pack_section("inverted", video, plan_sections(2, 3, "inverted").sections[1], 3)
    mask = torch.ones((batch, 5), dtype=torch.bool)
    mask[1:, 3:] = False
    embeds = torch.randn((batch, 5, 32), generator=generator)
    cond = Conditioning(embeds, mask, torch.randn((batch, 16), generator=generator), torch.randn((batch, 3, 24), generator=generator))
    return video[:, :, 1:4], cond, context


def forward(model, batch: int) -> torch.Tensor:
    latents, cond, context = inputs(batch)
    with torch.no_grad():
        return packed_forward(model, latents, torch.full((batch,), 700.0), torch.full((batch,), 1000.0), cond, context, BlockStack(model))


@pytest.mark.parametrize("batch", [1, 2])
def test_sdpa_processors_give_bit_identical_output(batch):
    model = load_transformer(HUB / "lllyasviel/FramePackI2V_HY", torch.float32)
    expected = forward(model, batch)
    assert use_attention(model, "sdpa") == 4  # 2 dual- and 2 single-stream blocks
    assert all(type(block.attn.processor).__name__ == "FramePackAttention" for block in (*model.transformer_blocks, *model.single_transformer_blocks))
    out = forward(model, batch)
    assert torch.equal(out, expected)


def test_fa3_processors_pass_fa3_its_own_layout(monkeypatch):
    """FA3 is called with (B, S, H, D) tensors and no mask; a stand-in computing attention in that layout gives the SDPA output."""
    calls = []

    def flash_attn_func(q, k, v):
        calls.append(q.shape)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    model = load_transformer(HUB / "lllyasviel/FramePackI2V_HY", torch.float32)
    expected = forward(model, 1)
    use_attention(model, "fa3")
    out = forward(model, 1)
    assert torch.equal(out, expected)
    assert len(calls) == 4 and all(shape[0] == 1 and shape[2:] == (2, 16) and shape[1] > 16 for shape in calls)


def test_a_masked_batch_goes_to_sdpa():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn((2, 7, 2, 8), generator=generator) for _ in range(3))
    mask = torch.ones((2, 1, 1, 7), dtype=torch.bool)
    mask[1, ..., 5:] = False
    assert torch.equal(fa3_attend(q, k, v, mask), sdpa_attend(q, k, v, mask))  # no FA3 module needed for a masked call


def dequantising_fa3(calls):
    """Stands in for FA3's FP8 forward on the CPU: attention of the FP8 inputs times their (B, H) descales."""

    def flash_attn_func(q, k, v, q_descale, k_descale, v_descale):
        calls.append((q.dtype, q_descale.shape))
        q, k, v = (x.float() * s[:, None, :, None] for x, s in ((q, q_descale), (k, k_descale), (v, v_descale)))
        return sdpa_attend(q, k, v, None).to(torch.bfloat16)

    return types.SimpleNamespace(flash_attn_func=flash_attn_func)


def test_fp8_attention_centres_k_and_v_exactly(monkeypatch):
    """With K and V far off-centre (as DiT activations are), centring keeps FP8's error near its rounding."""
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn_interface", dequantising_fa3(calls))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn((2, 64, 3, 32), generator=generator) for _ in range(3))
    k, v = k + 8 * torch.randn((1, 1, 3, 32), generator=generator), v + 8 * torch.randn((1, 1, 3, 32), generator=generator)
    exact = sdpa_attend(q, k, v, None)
    out = fa3_fp8_attend(q, k, v, None).float()
    error = ((out - exact).norm() / exact.norm()).item()
    (q8, qs), (k8, ks), (v8, vs) = (attention.to_float8_heads(x) for x in (q, k, v))
    plain = dequantising_fa3([]).flash_attn_func(q8, k8, v8, qs, ks, vs)  # FP8 without centring
    plain_error = ((plain.float() - exact).norm() / exact.norm()).item()
    assert calls == [(torch.float8_e4m3fn, (2, 3))]
    assert error < 0.03 and error < plain_error / 3
