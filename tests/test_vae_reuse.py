"""VAE tile reuse: every section of a real plan decodes to the same frames, with fewer decoder calls."""

from __future__ import annotations

import pytest
import torch
from conftest import HUB

from fpgen.decode import decode_latents, decode_span
from fpgen.loading import load_vae
from fpgen.plan import plan_sections
from fpgen.vae_reuse import reuse_vae_tiles

VAE = HUB / "hunyuanvideo-community/HunyuanVideo/vae"


def tiles_of(begin: int, end: int, size: int = 5, stride: int = 3) -> set[tuple[int, int]]:
    """The latent ranges diffusers' temporal tiling decodes for a span (one range when the span is short)."""
    if end - begin <= size - 1:
        return {(begin, end)}
    return {(begin + i, min(begin + i + size, end)) for i in range(0, end - begin, stride)}


@pytest.mark.parametrize("order", ["inverted", "forward"])
def test_reused_tiles_give_the_same_frames(order):
    plan = plan_sections(4, 9, order)
    video = torch.randn((1, 16, plan.num_latents, 2, 2), generator=torch.Generator().manual_seed(0))
    spans = [decode_span(plan, section) for section in plan.sections]
    reference, reused = load_vae(VAE, torch.float32), load_vae(VAE, torch.float32)
    cache = reuse_vae_tiles(reused)
    for begin, end in spans:
        latents = video[:, :, begin:end]
        assert torch.equal(decode_latents(reused, latents), decode_latents(reference, latents))

    decoded = [tiles_of(*span) for span in spans]
    repeated = sum(len(now & before) for before, now in zip(decoded, decoded[1:]))
    assert cache.hits == repeated >= 2 * (plan.count - 2)  # tiles 9 and 12 of every middle section at least
    assert cache.misses == sum(map(len, decoded)) - repeated
    assert len(cache.tiles) <= len(decoded[-1]) + len(decoded[-2])  # only the last two decodes are kept


def test_blending_does_not_touch_the_stored_tiles():
    """diffusers blends tiles in place; decoding the same span twice must still give the same frames."""
    vae = load_vae(VAE, torch.float32)
    cache = reuse_vae_tiles(vae)
    assert reuse_vae_tiles(vae) is cache  # attaching twice keeps one cache
    latents = torch.randn((1, 16, 18, 2, 2), generator=torch.Generator().manual_seed(1))
    first = decode_latents(vae, latents)
    again = decode_latents(vae, latents)
    assert cache.hits == cache.misses == 6 and torch.equal(first, again)


@pytest.mark.parametrize(("mode", "compiled"), [("fast", True), ("exact", False), ("low-vram", False)])
def test_only_fast_mode_compiles_the_decoder_under_the_tile_cache(mode, compiled, monkeypatch, offline_cache):
    """Fast mode's decoder is torch.compiled (its rounding differs from eager's), and the tile cache runs the compiled one."""
    from fpgen import acceleration
    from fpgen.loading import Components
    from fpgen.hub import find_model
    from fpgen.runtime import RuntimePlan

    compiled_functions = []
    monkeypatch.setattr(acceleration.torch, "compile", lambda function: compiled_functions.append(function) or (lambda x: function(x) + 0))
    monkeypatch.setattr(RuntimePlan, "is_cuda", property(lambda self: True))  # the plan of a GPU, the tiny VAE on the CPU
    runtime = RuntimePlan(torch.device("cpu"), torch.float32, torch.float32, mode, "test", compile=True)
    vae = Components(find_model("framepack"), runtime).load_vae().vae
    assert len(compiled_functions) == compiled
    assert (vae.decoder.forward.run.__name__ == "<lambda>") == compiled  # the cache calls the compiled decoder
