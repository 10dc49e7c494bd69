"""The VAE decode shared over two gloo processes (fpgen.vae_split): the one-process frames, half the decoder calls each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import HUB

from fpgen.decode import decode_latents, decode_span
from fpgen.loading import load_vae
from fpgen.parallel import free_port, leaving_group
from fpgen.plan import plan_sections
from fpgen.vae_reuse import reuse_vae_tiles
from fpgen.vae_split import share_vae_decode

VAE = HUB / "hunyuanvideo-community/HunyuanVideo/vae"
PLAN = plan_sections(4, 9, "inverted")  # the official 4-section job: decodes of 18 latents, the last of 19
CASES = {"temporal tiles": 2, "spatial tiles too (low-vram)": 4}  # latents' height and width; 4 with 24-pixel tiles every 16: 2x2 spatial tiles


def video(size: int) -> torch.Tensor:
    return torch.randn((1, 16, PLAN.num_latents, size, size), generator=torch.Generator().manual_seed(0))


def tiny_vae(case: str):
    vae = load_vae(VAE, torch.float32)
    if CASES[case] > 2:
        vae.enable_tiling(tile_sample_min_height=24, tile_sample_min_width=24, tile_sample_stride_height=16, tile_sample_stride_width=16)
    return vae


def decode_plan(vae, cache, size: int) -> tuple[list[torch.Tensor], list[int]]:
    """Every section's decode of the plan, and the decoder calls each made in this process."""
    calls, run = [], cache.run
    cache.run = lambda tile_input: calls.append(cache.decodes) or run(tile_input)
    frames = [decode_latents(vae, video(size)[:, :, begin:end]) for begin, end in (decode_span(PLAN, section) for section in PLAN.sections)]
    return frames, [calls.count(decode) for decode in range(1, len(frames) + 1)]


def decode_in_group(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    with leaving_group():
        for case, size in CASES.items():
            vae = tiny_vae(case)
            cache = share_vae_decode(vae)
            frames, calls = decode_plan(vae, cache, size)
            torch.save({"frames": frames, "calls": calls, "hits": cache.hits, "misses": cache.misses}, out / f"{case}-{rank}.pt")


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae_split")
    mp.spawn(decode_in_group, (free_port(), out), nprocs=2)
    return out


@pytest.mark.parametrize("case", CASES)
def test_two_processes_share_the_decode_of_one(split_runs, case):
    """Both processes end with the one-process frames bit for bit; each made half the decoder calls, and reuse still skips the repeated tiles."""
    vae = tiny_vae(case)
    cache = reuse_vae_tiles(vae)
    alone, calls = decode_plan(vae, cache, CASES[case])
    first, second = (torch.load(split_runs / f"{case}-{rank}.pt") for rank in (0, 1))
    for split in (first, second):
        assert all(torch.equal(a, b) for a, b in zip(split["frames"], alone, strict=True))
        assert (split["hits"], split["misses"]) == (cache.hits, cache.misses)
    assert [a + b for a, b in zip(first["calls"], second["calls"])] == calls  # no tile decoded twice
    assert first["calls"] == [(n + 1) // 2 for n in calls] and second["calls"] == [n // 2 for n in calls]
    spatial = (CASES[case] // 2) ** 2
    assert calls == [spatial * tiles for tiles in (3, 3, 4, 7)]  # spans of 9, 18, 18 and 19 latents; 3 then 2 temporal tiles reused
