"""TeaCache as the official FramePack applies it: skip the transformer blocks while their input barely moves.

Each call measures the relative L1 change of block 0's modulated input, rescales it with a polynomial
fitted for HunyuanVideo, and accumulates it; while the sum stays under the threshold the blocks are
skipped and the last residual (blocks' output minus input, image stream only) is reused. The first
and last call of a section always compute. One ``TeaCache`` lives for one section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Rescale polynomial for HunyuanVideo, highest power first (from the official implementation).
RESCALE_COEFFICIENTS = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)


def rescale(distance: float) -> float:
    result = 0.0
    for coefficient in RESCALE_COEFFICIENTS:
        result = result * distance + coefficient
    return result


@dataclass
class TeaCache:
    num_steps: int
    threshold: float = 0.15
    calls: int = 0
    computed: int = 0
    accumulated: float = 0.0
    previous_input: torch.Tensor | None = field(default=None, repr=False)
    residual: torch.Tensor | None = field(default=None, repr=False)

    def should_compute(self, modulated_input: torch.Tensor) -> bool:
        """Decide for this call and advance the counter (wrapping at ``num_steps``, as the official code does)."""
        step = self.calls % self.num_steps
        if step == 0 or step == self.num_steps - 1 or self.previous_input is None:
            compute, self.accumulated = True, 0.0
        else:
            previous = self.previous_input
            change = ((modulated_input - previous).abs().mean() / previous.abs().mean()).item()
            self.accumulated += rescale(change)
            compute = self.accumulated >= self.threshold
            if compute:
                self.accumulated = 0.0
        self.previous_input = modulated_input
        self.calls += 1
        self.computed += int(compute)
        return compute


class TeaCacheHook:
    """TeaCache on a ``BlockStack``: skips the blocks while block 0's modulated input barely moves.

    Attach with ``blocks.hooks.append(TeaCacheHook(transformer, steps, threshold))``; the engine's
    ``reset_hooks`` at each section gives every section its own ``TeaCache`` as the official code does.
    """

    def __init__(self, transformer, steps: int, threshold: float = 0.15):
        self.transformer, self.steps, self.threshold = transformer, steps, threshold
        self.reset()

    def reset(self) -> None:
        self.cache = TeaCache(self.steps, self.threshold)

    def __call__(self, run, hidden, context, temb, attention_mask, rope) -> torch.Tensor:
        modulated = self.transformer.transformer_blocks[0].norm1(hidden, emb=temb)[0]
        if not self.cache.should_compute(modulated):
            return hidden + self.cache.residual
        out = run(hidden, context, temb, attention_mask, rope)
        self.cache.residual = out - hidden
        return out
