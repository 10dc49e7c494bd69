"""The memory options change where activations and weights live, not what is computed."""

from __future__ import annotations

import copy
import functools

import torch
from conftest import HUB

from fpgen.loading import load_transformer
from fpgen.packing import pack_section
from fpgen.plan import plan_sections
from fpgen.training.adapters import add_lora, trainable_parameters
from fpgen.training.memory import cast_base_to_fp8, enable_checkpointing
from fpgen.training.objective import FlowMatchingLoss
from fpgen.transformer import Conditioning

TRANSFORMER = HUB / "lllyasviel" / "FramePackI2V_HY"


@functools.cache
def _with_lora():
    model = load_transformer(TRANSFORMER, torch.float32)
    add_lora(model, 4, 4.0, None, seed=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    return model.train()


def model_with_lora():
    """A fresh copy of one LoRA-carrying transformer (B non-zero, so every LoRA weight gets a gradient)."""
    return copy.deepcopy(_with_lora())


def batch():
    generator = torch.Generator().manual_seed(5)
    video = torch.randn((1, 16, 7, 4, 6), generator=generator)
    context = pack_section("inverted", video, plan_sections(2, 3, "inverted").sections[1], 3)
    cond = Conditioning(torch.randn((1, 6, 32), generator=generator), torch.ones((1, 6), dtype=torch.bool), torch.randn((1, 16), generator=generator), torch.randn((1, 3, 24), generator=generator))
    return video[:, :, 1:4], torch.randn((1, 16, 3, 4, 6), generator=generator), torch.tensor([0.6]), cond, context


def loss_and_grads(model):
    loss = FlowMatchingLoss(model, guidance=1.0)(*batch())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainable_parameters(model)]


def test_checkpointing_and_offloading_give_the_same_gradients():
    reference_loss, reference = loss_and_grads(model_with_lora())
    for offload in (False, True):
        model = model_with_lora()
        enable_checkpointing(model, offload)
        loss, grads = loss_and_grads(model)
        assert torch.allclose(loss, reference_loss, rtol=1e-6)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads, reference))
    assert any(g.abs().sum() > 0 for g in reference)


def test_fp8_base_stores_block_linears_in_float8_and_still_trains_the_lora():
    model = model_with_lora()
    cast_base_to_fp8(model)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.base_layer.weight"] == torch.float8_e4m3fn
    assert dtypes["single_transformer_blocks.1.proj_mlp.base_layer.weight"] == torch.float8_e4m3fn
    assert dtypes["transformer_blocks.0.attn.to_q.lora_A.default.weight"] == torch.float32
    assert dtypes["x_embedder.proj.weight"] == dtypes["proj_out.weight"] == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(model)
    reference_loss, _ = loss_and_grads(model_with_lora())
    assert torch.isfinite(loss) and abs(loss.item() - reference_loss.item()) < 0.1 * reference_loss.item()
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_a_batch_is_its_sections_one_by_one():
    """Batched sections with prompts of different lengths (padded and masked) lose what each loses alone."""
    from fpgen.training.samples import Batch
    from fpgen.training.samples import collate_conditioning

    generator = torch.Generator().manual_seed(9)
    video = torch.randn((2, 16, 7, 4, 6), generator=generator)
    sections = plan_sections(2, 3, "inverted").sections
    texts = [{"prompt_embeds": torch.randn((1, n, 32), generator=generator), "pooled": torch.randn((1, 16), generator=generator)} for n in (3, 7)]
    images = [torch.randn((1, 3, 24), generator=generator) for _ in range(2)]
    contexts = [pack_section("inverted", video[i : i + 1], sections[1], 3) for i in range(2)]
    noise, t = torch.randn((2, 16, 3, 4, 6), generator=generator), torch.tensor([0.3, 0.8])
    objective = FlowMatchingLoss(model_with_lora(), guidance=1.0)
    with torch.no_grad():
        alone = [objective(video[i : i + 1, :, 1:4], noise[i : i + 1], t[i : i + 1], collate_conditioning([texts[i]], [images[i]]), contexts[i]) for i in range(2)]
        context = type(contexts[0])(contexts[0].indices, *(torch.cat([getattr(c, k) for c in contexts]) for k in ("clean", "clean_2x", "clean_4x")))
        batch = Batch(video[:, :, 1:4], context, collate_conditioning(texts, images))
        together = objective(batch.latents, noise, t, batch.cond, batch.context)
    assert batch.cond.prompt_mask.sum(dim=1).tolist() == [3, 7]
    assert torch.allclose(together, (alone[0] + alone[1]) / 2, rtol=1e-5)
