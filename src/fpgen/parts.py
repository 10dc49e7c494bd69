"""The code a model family brings to the engine's one section loop (its description is ``fpgen.families``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def same_steps(components, steps: int) -> int:
    return steps


@dataclass(frozen=True)
class Parts:
    """The code a family brings to the engine's one section loop (see ``fpgen.framepack.FRAMEPACK_PARTS``)."""

    components: type  # the ``fpgen.loading.Components`` (sub)class that loads and lends the models
    encode: Callable  # (components, pictures, texts, negative, settings) -> JobInputs
    conditioning: Callable  # (prompt embedding, image embeds, device, dtype) -> what the denoiser is conditioned on
    denoiser: Callable  # (transformer, blocks, positive, negative, context, guidance) -> the sampler's model function
    sample: Callable  # (components, denoiser, noise, steps, tokens, on_step, generator) -> latents
    decode_section: Callable  # (components, video, plan, section, pending, lead) -> (frames, first frame, pending)
    resume_pending: Callable  # (components, video, plan, sections done) -> what the next section's decode blends into
    skip_encoding_noise: Callable  # (generator, inputs, window): advance the job's generator past what encoding drew from it
    skip_section_noise: Callable  # (components, generator, noise shape): advance it past what one section drew (resuming)
    section_steps: Callable = same_steps  # (components, --steps) -> sampler steps (progress events) one section takes
