"""A FramePack job from picture to frames: conditioning, the section loop, decoding and stitching.

The loop is explicit and small: each section packs its context from the latents made so far
(``fpgen.packing``), draws its noise from the job's one CPU generator, samples with UniPC
(``fpgen.sampling``), decodes its span and hands the frames that are final to a sink. Models come
in as arguments; nothing here holds state between jobs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from fpgen.buckets import pick_bucket, resize_and_center_crop
from fpgen.conditioning import PromptEmbedding, encode_image, encode_latents, encode_prompt, image_to_vae_input
from fpgen.decode import Pending, decode_latents, decode_span, latent_to_frame, stitch
from fpgen.errors import InputError
from fpgen.loading import Models
from fpgen.packing import PackedContext, context_to, pack_section, window_bounds
from fpgen.plan import Section, SectionPlan, plan_sections, section_count
from fpgen.sampling import get_schedule, sample_unipc
from fpgen.teacache import TeaCache
from fpgen.transformer import Conditioning, make_denoiser

LATENT_CHANNELS = 16


@dataclass(frozen=True)
class Settings:
    """Everything that decides a job's output besides the picture and the model."""

    prompt: str = ""
    negative_prompt: str = ""
    seconds: float = 5.0
    seed: int = 31337
    steps: int = 25
    window: int = 9
    distilled_guidance: float = 10.0
    cfg: float = 1.0
    guidance_rescale: float = 0.0
    teacache: bool = False
    teacache_threshold: float = 0.15
    resolution: int = 640
    size: tuple[int, int] | None = None  # (height, width); overrides the bucket

    def validate(self) -> Settings:
        checks = [
            (math.isfinite(self.seconds) and self.seconds > 0, f"--seconds must be positive (got {self.seconds})", "e.g. --seconds 5"),
            (self.steps >= 1, f"--steps must be at least 1 (got {self.steps})", "the official default is 25"),
            (1 <= self.window <= 33, f"--window must be between 1 and 33 (got {self.window})", "the models were trained with 9"),
            (self.cfg >= 1.0, f"--cfg must be at least 1 (got {self.cfg})", "1 disables real CFG"),
            (0 <= self.guidance_rescale <= 1, f"--guidance-rescale must be within [0, 1] (got {self.guidance_rescale})", "0 disables it"),
            (self.distilled_guidance > 0, f"--distilled-guidance must be positive (got {self.distilled_guidance})", "the official default is 10"),
            (self.teacache_threshold > 0, f"--teacache-threshold must be positive (got {self.teacache_threshold})", "0.15 is the official value"),
            (0 <= self.seed < 2**63, f"--seed must be between 0 and 2^63-1 (got {self.seed})", "e.g. --seed 31337"),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise InputError(message, hint)
        return self

    def frame_size(self, image: np.ndarray) -> tuple[int, int]:
        return self.size or pick_bucket(image.shape[0], image.shape[1], self.resolution)


@dataclass(frozen=True)
class JobInputs:
    """The encoded picture and prompts: computed once per job, reused by every section."""

    image: np.ndarray  # bucketed uint8 (H, W, 3)
    start_latent: torch.Tensor  # (1, 16, 1, H/8, W/8) float32 CPU
    image_embeds: torch.Tensor
    positive: PromptEmbedding
    negative: PromptEmbedding | None  # None when real CFG is off


@dataclass(frozen=True)
class StepDone:
    section: Section
    step: int  # 1-based
    steps: int


@dataclass(frozen=True)
class SectionDone:
    section: Section
    latents: torch.Tensor  # the section's window, float32 CPU
    transformer_passes: int
    frames: torch.Tensor  # frames that became final, (1, 3, T, H, W)
    first_frame: int  # their position in the video


Event = StepDone | SectionDone
FrameSink = Callable[[torch.Tensor, int], None]


@dataclass
class Result:
    plan: SectionPlan
    latents: torch.Tensor  # the whole video's latents in time order, start latent first, float32 CPU
    height: int
    width: int
    transformer_passes: list[int] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return self.plan.num_frames


def prepare_inputs(models: Models, image: np.ndarray, settings: Settings) -> JobInputs:
    """Bucket the picture and run every encoder once."""
    height, width = settings.frame_size(image)
    image = resize_and_center_crop(image, height, width)
    with models.use("text_encoder", "text_encoder_2") as (llama, clip):
        encode = (models.tokenizer, llama, models.tokenizer_2, clip)
        positive = encode_prompt(settings.prompt, *encode)
        negative = encode_prompt(settings.negative_prompt, *encode) if settings.cfg != 1.0 else None
    if models.mode.mode == "low-vram":
        models.release("text_encoder")  # the 8B Llama leaves host memory before the 13B transformer loads
    with models.use("vae", "image_encoder") as (vae, siglip):
        start_latent = encode_latents(vae, image_to_vae_input(image))
        image_embeds = encode_image(image, models.feature_extractor, siglip)
    return JobInputs(image=image, start_latent=start_latent, image_embeds=image_embeds, positive=positive, negative=negative)


def conditioning(prompt: PromptEmbedding, image_embeds: torch.Tensor, device, dtype) -> Conditioning:
    return Conditioning(prompt.embeds, prompt.mask, prompt.pooled, image_embeds).to(device, dtype)


def sample_section(
    transformer,
    context: PackedContext,
    noise: torch.Tensor,
    positive: Conditioning,
    negative: Conditioning | None,
    settings: Settings,
    on_step: Callable[[int], None] | None = None,
    blocks=None,
) -> tuple[torch.Tensor, int]:
    """Denoise one window; returns its latents (float32, on the noise's device) and the transformer passes it took."""
    teacache = TeaCache(settings.steps, settings.teacache_threshold) if settings.teacache else None
    denoise = make_denoiser(
        transformer, positive, negative, context, settings.distilled_guidance, settings.cfg, settings.guidance_rescale, teacache, blocks
    )
    _, _, frames, height, width = noise.shape
    sigmas = get_schedule(settings.steps, frames * height * width // 4)
    callback = (lambda i, _x0: on_step(i + 1)) if on_step else None
    latents = sample_unipc(denoise, noise, sigmas, callback)
    passes = teacache.computed if teacache else settings.steps
    return latents, passes * (2 if negative is not None else 1)


def generate_frames(
    models: Models,
    image: np.ndarray,
    settings: Settings,
    sink: FrameSink,
    on_event: Callable[[Event], None] | None = None,
    inputs: JobInputs | None = None,
) -> Result:
    """Make the whole video: ``sink(frames, first_frame)`` receives every frame exactly once, in pieces.

    ``inputs`` are the already encoded picture and prompts (training's validation videos come from its
    cache); without them every encoder runs here.
    """
    settings.validate()
    emit = on_event or (lambda event: None)
    inputs = inputs or prepare_inputs(models, image, settings)
    device, dtype = models.placement.device, models.placement.transformer_dtype
    positive = conditioning(inputs.positive, inputs.image_embeds, device, dtype)
    negative = conditioning(inputs.negative, inputs.image_embeds, device, dtype) if inputs.negative is not None else None

    plan = plan_sections(section_count(settings.seconds, settings.window), settings.window, models.order)
    height, width = inputs.image.shape[:2]
    video = torch.zeros((1, LATENT_CHANNELS, plan.num_latents, height // 8, width // 8))
    video[:, :, :1] = inputs.start_latent
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    result = Result(plan, video, height, width)
    pending: Pending | None = None

    for section in plan.sections:
        noise = torch.randn((1, LATENT_CHANNELS, plan.window, height // 8, width // 8), generator=generator)
        context = context_to(pack_section(plan.order, video, section, plan.window), device)
        on_step = lambda step, s=section: emit(StepDone(s, step, settings.steps))  # noqa: E731
        latents, passes = sample_section(models.transformer, context, noise.to(device), positive, negative, settings, on_step, models.blocks)
        begin, end = window_bounds(section.slot, plan.window)
        video[:, :, begin:end] = latents.float().cpu()
        result.transformer_passes.append(passes)

        span_begin, span_end = decode_span(plan, section)
        with models.use("vae") as (vae,):
            decoded = decode_latents(vae, video[:, :, span_begin:span_end])
        frames, first_frame, pending = stitch(pending, decoded, latent_to_frame(span_begin), plan, plan.is_last(section))
        if frames.shape[2]:
            sink(frames, first_frame)
        emit(SectionDone(section, video[:, :, begin:end], passes, frames, first_frame))
    return result
