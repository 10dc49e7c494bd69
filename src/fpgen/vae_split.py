"""One decode over several processes: each decodes its share of the VAE's tiles, and all blend them alike.

Under ``--gpus N`` every process decodes every section (the processes stay in step by running the
same job), so without this each GPU repeats the others' decoder work. diffusers decodes a long span
in temporal tiles of 5 latents every 3 (with spatial tiling, each of those in spatial tiles), and the
tiles are independent until they are blended. diffusers' loop cannot be stopped between decoding and
blending, so a shared decode runs diffusers' ``_decode`` twice: a rehearsal whose stand-in decoder
records the tiles' inputs and returns zeros of the right shape (blending zeros costs little next to
the decoder), then the real pass, whose decoder hands back the outputs made in between. The tile
cache (``vae_reuse``) answers the tiles it holds; the others are dealt round-robin to the processes,
each decodes its own, and one all_gather gives every process all of them. Every process blends the
bits the one-process decode would, and every cache ends up holding the same tiles, so the processes
keep agreeing on which tiles to decode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from fpgen.vae_reuse import TileCache, reuse_vae_tiles


def decoded_shape(vae, tile_input: torch.Tensor) -> torch.Size:
    """The decoder's output shape for one tile (diffusers' own arithmetic: T latents make 4(T-1)+1 frames)."""
    batch, _, frames, height, width = tile_input.shape
    time, space = vae.temporal_compression_ratio, vae.spatial_compression_ratio
    return torch.Size((batch, vae.config.out_channels, (frames - 1) * time + 1, height * space, width * space))


@contextmanager
def decoder_replaced(vae, forward: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    kept = vae.decoder.forward
    vae.decoder.forward = forward
    try:
        yield
    finally:
        vae.decoder.forward = kept


def decoder_inputs(vae, z: torch.Tensor) -> list[torch.Tensor]:
    """The tiles diffusers' decode of ``z`` hands the decoder, in its order: a rehearsal with a stand-in decoder."""
    inputs = []

    def stand_in(tile_input: torch.Tensor) -> torch.Tensor:
        inputs.append(tile_input)
        return tile_input.new_zeros(decoded_shape(vae, tile_input))

    with decoder_replaced(vae, stand_in):
        type(vae)._decode(vae, z)
    return inputs


def gather_shares(own: list[torch.Tensor], shapes: list[torch.Size], like: torch.Tensor, world: int, group=None) -> list[torch.Tensor]:
    """All tiles, in order, from each process's round-robin share (``own``: this one's, shaped ``shapes[rank::world]``).

    One all_gather of every share flattened and padded to the longest (gloo and NCCL gather equal sizes).
    """
    sizes = [[shape.numel() for shape in shapes[rank::world]] for rank in range(world)]
    longest = max(map(sum, sizes))
    flat = torch.cat([*(tile.flatten() for tile in own), like.new_zeros(longest - sum(tile.numel() for tile in own))])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat, group=group)
    shares = [iter(buffer.split([*share, longest - sum(share)])) for buffer, share in zip(gathered, sizes)]
    return [next(shares[index % world]).view(shape) for index, shape in enumerate(shapes)]


def share_vae_decode(vae, group=None) -> TileCache:
    """Make ``vae``'s decodes share their tiles over ``group``'s processes (default: the default group); returns its tile cache."""
    cache = reuse_vae_tiles(vae)
    rank, world = dist.get_rank(group), dist.get_world_size(group)

    def decode_misses(misses: list[torch.Tensor]) -> list[torch.Tensor]:
        own = [cache.run(tile_input) for tile_input in misses[rank::world]]
        return gather_shares(own, [decoded_shape(vae, tile_input) for tile_input in misses], misses[0], world, group)

    def decode_shared(z: torch.Tensor, return_dict: bool = True):
        inputs = decoder_inputs(vae, z)
        cache.next_decode()
        outputs = iter(cache.decode_all(inputs, decode_misses))
        with decoder_replaced(vae, lambda tile_input: next(outputs)):
            return type(vae)._decode(vae, z, return_dict=return_dict)

    vae._decode = decode_shared
    return cache
