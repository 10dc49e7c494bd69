"""Model families as data: what the engine needs to know about a FramePack-style model.

A family names its components, its section order and context layout (``fpgen.packing``), its
sampler and its defaults. The engine reads these fields and branches on nothing else, so a new
family is one more description here (plus its own components), not a new path through the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fpgen.packing import PackedContext, forward_context, inverted_context
from fpgen.plan import Order, Section, SectionPlan
from fpgen.sampling import get_schedule, sample_unipc
from fpgen.spec import Defaults

ContextBuilder = Callable[[SectionPlan, torch.Tensor, Section, torch.Tensor, torch.Tensor | None], PackedContext]


@dataclass(frozen=True)
class SectionOrder:
    """Which way sections are made and how each sees the video so far."""

    name: Order  # recorded in job folders and metadata
    context: ContextBuilder  # (plan, video latents, section, start latent, end latent) -> packed context
    pins_end: bool  # the last window's last frame is pinned to the end picture while sampling
    tail_frame: int  # extending a video: the frame of it that stands for the start picture
    start_from_tail: bool  # extending: the start latent is that frame even when a picture is given


INVERTED = SectionOrder("inverted", inverted_context, pins_end=False, tail_frame=-1, start_from_tail=True)
FORWARD = SectionOrder("forward", forward_context, pins_end=True, tail_frame=0, start_from_tail=False)


@dataclass(frozen=True)
class Family:
    name: str
    sections: SectionOrder
    components: tuple[str, ...] = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "feature_extractor", "image_encoder", "vae", "transformer")
    schedule: Callable[[int, int], torch.Tensor] = get_schedule  # (steps, window tokens) -> sigmas
    sampler: Callable = sample_unipc  # (denoise, noise, sigmas, callback) -> latents
    defaults: Defaults = Defaults()


FRAMEPACK = Family("framepack", INVERTED)
FRAMEPACK_F1 = Family("framepack-f1", FORWARD)
FAMILIES = {family.name: family for family in (FRAMEPACK, FRAMEPACK_F1)}


def family_for_order(order: Order) -> Family:
    """The family of a checkpoint known only by its section order (a local folder, a repo id)."""
    return FRAMEPACK_F1 if order == "forward" else FRAMEPACK
