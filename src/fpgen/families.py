"""Model families as data: what the engine needs to know about a FramePack-style model.

A family names its components, its section order and context layout (``fpgen.packing``), its
sampler and its defaults, and brings its own code for what differs between families (``Parts``:
encoders, the denoiser and sampler, the decode). The engine reads these fields and branches on
nothing else, so a new family is one more description here (plus its own components), not a new
path through the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from fpgen.extend import FORWARD_TAIL, HELIOS_TAIL, INVERTED_TAIL, TailLayout
from fpgen.framepack import FRAMEPACK_PARTS
from fpgen.geometry import FPS, latents_to_frames, section_count, section_seconds
from fpgen.helios import HELIOS_PARTS, HELIOS_PYRAMID_PARTS, HELIOS_ZERO_STAR_PARTS
from fpgen.packing import PackedContext, forward_context, helios_context, inverted_context
from fpgen.parts import Parts
from fpgen.plan import Order, Section, SectionPlan
from fpgen.sampling import get_schedule, sample_unipc

@dataclass(frozen=True)
class Defaults:
    """Settings a job takes from its model family unless it sets them."""

    steps: int = 25
    window: int = 9
    distilled_guidance: float = 10.0
    cfg: float = 1.0  # real classifier-free guidance
    size: tuple[int, int] | None = None  # (height, width) without --size; None: the bucket nearest the picture



ContextBuilder = Callable[[SectionPlan, torch.Tensor, Section, torch.Tensor, torch.Tensor | None], PackedContext]


@dataclass(frozen=True)
class SectionOrder:
    """Which way sections are made and how each sees the video so far."""

    name: Order  # recorded in job folders and metadata
    context: ContextBuilder  # (plan, video latents, section, start latent, end latent) -> packed context
    pins_end: bool  # the last window's last frame is pinned to the end picture while sampling
    tail_frame: int  # extending a video: the frame of it that stands for the start picture
    start_from_tail: bool  # extending: the start latent is that frame even when a picture is given
    tail: TailLayout  # extending: which of the video's last frames are encoded, and how the join is made


INVERTED = SectionOrder("inverted", inverted_context, pins_end=False, tail_frame=-1, start_from_tail=True, tail=INVERTED_TAIL)
FORWARD = SectionOrder("forward", forward_context, pins_end=True, tail_frame=0, start_from_tail=False, tail=FORWARD_TAIL)
HELIOS_FORWARD = SectionOrder("forward", helios_context, pins_end=False, tail_frame=0, start_from_tail=False, tail=HELIOS_TAIL)


def planned_frames(plan: SectionPlan) -> int:
    return plan.num_frames


@dataclass(frozen=True)
class Family:
    name: str
    sections: SectionOrder
    components: tuple[str, ...] = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "feature_extractor", "image_encoder", "vae", "transformer")
    schedule: Callable[[int, int], torch.Tensor] = get_schedule  # (steps, window tokens) -> sigmas
    sampler: Callable = sample_unipc  # (denoise, noise, sigmas, callback) -> latents
    defaults: Defaults = Defaults()
    parts: Parts = FRAMEPACK_PARTS
    fps: int = FPS
    section_count: Callable[[float, int], int] = section_count  # (seconds, window) -> sections
    section_seconds: Callable[[int], float] = section_seconds  # window -> seconds one section adds (timed prompts snap to these)
    frame_count: Callable[[SectionPlan], int] = planned_frames  # frames of a planned video (FramePack: its latents, decoded overlapping)
    text_to_video: bool = False  # without a picture it makes a video from the prompt alone (else that is an error)
    color_match_after: float | None = None  # --color-match is on by default for videos longer than this (seconds); None: only when asked
    refuses: tuple[tuple[str, str], ...] = ()  # (job option, or "a+b" for two together, why this family cannot take it)
    lora_kind: str = "FramePack"  # the LoRAs it takes (``fpgen.lora.LORA_KINDS``)
    trainable: bool = True  # ``fpgen finetune`` can train it (its training cache and samples are FramePack's)
    picks_attention: bool = True  # its blocks take the runtime's attention backend (``fpgen.attention``); else SDPA


def helios_section_count(seconds: float, window: int) -> int:
    """Helios' chunks: enough whole chunks of ``4*window - 3`` frames to cover ``seconds`` at 24 fps (HeliosPipeline's count)."""
    return max(1, math.ceil(round(seconds * HELIOS_FPS) / latents_to_frames(window)))


def helios_section_seconds(window: int) -> float:
    """A Helios chunk adds ``4*window - 3`` frames at 24 fps."""
    return latents_to_frames(window) / HELIOS_FPS


def helios_frame_count(plan: SectionPlan) -> int:
    """Helios decodes every chunk on its own: ``4*window - 3`` frames each."""
    return (plan.offset + plan.count) * latents_to_frames(plan.window)


HELIOS_FPS = 24
HELIOS_DEFAULTS = Defaults(steps=50, window=9, cfg=5.0, size=(384, 640))
HELIOS_REFUSES = (
    ("end_image", "has no end-frame mechanism"),
    ("image+extend", "continues a video from its own first frame (HeliosPipeline takes a picture or a video, not both)"),
    ("loop", "has no end-frame mechanism to close a loop with"),
    ("keyframe", "has no end-frame mechanism, which keyframes use"),
    ("step_cache", "has no step cache (TeaCache's calibration is HunyuanVideo's)"),
)
HELIOS_COMPONENTS = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")


def helios_family(name: str, defaults: Defaults = HELIOS_DEFAULTS, parts: Parts = HELIOS_PARTS) -> Family:
    """A Helios checkpoint: F1's context layout, UMT5 prompts, the Wan VAE, text-to-video without a picture, 24 fps."""
    return Family(
        name, HELIOS_FORWARD, HELIOS_COMPONENTS, defaults=defaults, parts=parts, fps=HELIOS_FPS,
        section_count=helios_section_count, section_seconds=helios_section_seconds, frame_count=helios_frame_count, text_to_video=True, refuses=HELIOS_REFUSES, lora_kind="Helios", trainable=False, picks_attention=False,
    )  # fmt: skip


FRAMEPACK = Family("framepack", INVERTED)
DEMO = Family("demo", INVERTED, defaults=Defaults(distilled_guidance=1.0, size=(128, 128)))  # trained at 128x128 with guidance 1 (demo/README.md)
FRAMEPACK_F1 = Family("framepack-f1", FORWARD, color_match_after=30.0)  # F1's colours drift over long videos (peers.md: FramePack #535, #703)
HELIOS = helios_family("helios")
HELIOS_MID = helios_family("helios-mid", replace(HELIOS_DEFAULTS, steps=10), HELIOS_ZERO_STAR_PARTS)  # pyramid stages with CFG-zero*
HELIOS_DISTILLED = helios_family("helios-distilled", replace(HELIOS_DEFAULTS, steps=1, cfg=1.0), HELIOS_PYRAMID_PARTS)  # pyramid stages, DMD scheduler


def family_for_order(order: Order) -> Family:
    """The family of a checkpoint known only by its section order (a local folder, a repo id)."""
    return FRAMEPACK_F1 if order == "forward" else FRAMEPACK
