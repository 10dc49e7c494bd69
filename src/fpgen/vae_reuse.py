"""Decode each VAE tile once: reuse the decoder's output for a tile whose input was decoded before.

diffusers decodes long spans in temporal tiles of 5 latents every 3 (``_temporal_tiled_decode``).
Consecutive sections decode overlapping spans (``decode.decode_span``): the inverted loop decodes
``[new window, previous window]``, forward ``[previous window, new window]``, so two tiles of each
section are bit for bit two tiles of the section before (tiles 9 and 12 of section k are tiles 0
and 3 of section k-1 inverted, and the other way round forward): about a third of the decoder's
work. The decoder is deterministic for a given input, so returning the stored output changes no
bit of the video.

The cache sits on the VAE (the decoder's ``forward`` and the VAE's ``_decode`` are wrapped on the
instance), so the engine decodes as before. It holds the tiles of the current and the previous
decode only: nothing older can match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality, shape, dtype and device included (``torch.equal`` alone raises on a dtype mismatch)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


@dataclass
class Tile:
    decode: int  # the decode call that last used it
    input: torch.Tensor
    output: torch.Tensor


@dataclass
class TileCache:
    """Decoder outputs keyed by their exact input, kept for one decode call after their last use.

    ``store`` is where outputs wait between sections (None: where the decoder made them; the CPU
    keeps GPU memory free in the low-vram mode). Outputs are handed out as copies: diffusers blends
    tiles in place.
    """

    run: Callable[[torch.Tensor], torch.Tensor]
    store: torch.device | None = None
    tiles: list[Tile] = field(default_factory=list)
    decodes: int = 0
    hits: int = 0
    misses: int = 0

    def next_decode(self) -> None:
        self.decodes += 1
        self.tiles = [tile for tile in self.tiles if tile.decode >= self.decodes - 1]

    def __call__(self, tile_input: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # training through the decoder: nothing to reuse
            return self.run(tile_input)
        return self.decode_all([tile_input], lambda inputs: [self.run(x) for x in inputs])[0]

    def decode_all(self, inputs: list[torch.Tensor], decode_misses: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> list[torch.Tensor]:
        """The decoder outputs of ``inputs``: stored ones reused, the others made by ``decode_misses`` in one call (``vae_split`` shares them out)."""
        found = [next((tile for tile in self.tiles if same_tensor(tile.input, x)), None) for x in inputs]
        misses = [x for x, tile in zip(inputs, found) if tile is None]
        made = iter(decode_misses(misses) if misses else ())
        outputs = []
        for x, tile in zip(inputs, found):
            if tile is None:
                output = next(made)
                self.tiles.append(Tile(self.decodes, x, output.to(self.store or output.device, copy=True)))
            else:
                tile.decode, output = self.decodes, tile.output.to(x.device, copy=True)
            outputs.append(output)
        self.hits += len(inputs) - len(misses)
        self.misses += len(misses)
        return outputs


def reuse_vae_tiles(vae, store: torch.device | None = None) -> TileCache:
    """Attach a ``TileCache`` to ``vae`` (an ``AutoencoderKLHunyuanVideo``) once; returns it (its counts show the reuse)."""
    if isinstance(vae.decoder.forward, TileCache):
        return vae.decoder.forward
    cache = TileCache(vae.decoder.forward, store)
    vae.decoder.forward = cache
    decode = vae._decode

    def decode_with_cache(z: torch.Tensor, return_dict: bool = True):
        cache.next_decode()
        return decode(z, return_dict=return_dict)

    vae._decode = decode_with_cache
    return cache
