"""A FramePack job from picture to frames: conditioning, the section loop, decoding and stitching.

The loop is explicit and small: each section packs its context from the latents made so far
(``fpgen.packing``), draws its noise from the job's one CPU generator, samples with UniPC
(``fpgen.sampling``), decodes its span and hands the frames that are final to a sink. Models come
in as arguments; nothing here holds state between jobs. A job can continue from sections finished
earlier (``finished``): their latents are put back, the generator is advanced past their noise and
the overlap still pending is decoded again, so the rest comes out exactly as without the break.

Beyond the official loop: timed prompts (``fpgen.prompts``), an end picture, and continuing a
given video (``fpgen.extend``), each entering through the section's packed context or conditioning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from fpgen.buckets import pick_bucket, resize_and_center_crop
from fpgen.conditioning import PromptEmbedding, encode_image, encode_latents, encode_prompt, image_to_vae_input
from fpgen.decode import Pending, decode_latents, decode_span, latent_to_frame, overlap_frames, pending_after, stitch
from fpgen.errors import InputError
from fpgen.extend import PAST_LATENTS
from fpgen.loading import Models
from fpgen.packing import PackedContext, context_to, pack_section, window_bounds
from fpgen.plan import Order, Section, SectionPlan, plan_sections, section_count
from fpgen.prompts import parse_prompts, section_prompts
from fpgen.sampling import get_schedule, sample_unipc
from fpgen.teacache import TeaCache
from fpgen.transformer import Conditioning, make_denoiser
from fpgen.video import to_pixels

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
        parse_prompts(self.prompt)
        return self

    def frame_size(self, image: np.ndarray) -> tuple[int, int]:
        return self.size or pick_bucket(image.shape[0], image.shape[1], self.resolution)

    def section_prompts(self) -> tuple[list[str], list[str]]:
        """Each section's prompt in time order (timed prompts snapped to section boundaries), and warnings."""
        return section_prompts(parse_prompts(self.prompt), section_count(self.seconds, self.window), self.window)


@dataclass(frozen=True)
class JobInputs:
    """The encoded pictures and prompts: computed once per job, reused by every section (and saved for a resume)."""

    image: np.ndarray  # bucketed uint8 (H, W, 3): the picture SigLIP sees
    start_latent: torch.Tensor  # (1, 16, 1, H/8, W/8) float32 CPU
    image_embeds: torch.Tensor
    positive: PromptEmbedding  # the prompt at the start of the video
    negative: PromptEmbedding | None  # None when real CFG is off
    prompts: dict[str, PromptEmbedding] = field(default_factory=dict)  # timed prompts: each distinct text once
    end_latent: torch.Tensor | None = None  # --end-image
    prefix: torch.Tensor | None = None  # --extend: latents of the given video's tail, time order
    lead: torch.Tensor | None = None  # --extend: its last 4*window-3 frames, (1, 3, T, H, W) in [-1, 1]

    def embedding(self, text: str) -> PromptEmbedding:
        return self.prompts[text] if self.prompts else self.positive


@dataclass(frozen=True)
class StepDone:
    section: Section
    step: int  # 1-based
    steps: int


@dataclass(frozen=True)
class SectionStarted:
    """What a section is conditioned on, just before it is sampled."""

    section: Section
    context: PackedContext  # the packed history, its RoPE indices, and any end or extension frames
    prompt: str
    conditioning: Conditioning


@dataclass(frozen=True)
class SectionDone:
    section: Section
    latents: torch.Tensor  # the section's window, float32 CPU
    transformer_passes: int
    frames: torch.Tensor  # frames that became final, (1, 3, T, H, W)
    first_frame: int  # their position in the video


@dataclass(frozen=True)
class FinishedSection:
    """A section made before the job was interrupted: its window's latents."""

    latents: torch.Tensor
    transformer_passes: int


Event = StepDone | SectionStarted | SectionDone
FrameSink = Callable[[torch.Tensor, int], None]


@dataclass
class Result:
    plan: SectionPlan
    latents: torch.Tensor  # the whole video's latents in time order, start latent (or an extended video's tail) first
    height: int
    width: int
    transformer_passes: list[int] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return self.plan.num_frames


def encode_prompts(models: Models, texts: list[str], negative: str | None) -> tuple[dict[str, PromptEmbedding], PromptEmbedding | None]:
    """Each distinct prompt encoded once, and the negative one if real CFG needs it.

    A function of its own so that no local name still holds the Llama when the caller releases it
    (streaming hooks tie it into reference cycles that only a collection after that frees).
    """
    with models.use("text_encoder", "text_encoder_2") as (llama, clip):
        encode = (models.tokenizer, llama, models.tokenizer_2, clip)
        return {text: encode_prompt(text, *encode) for text in dict.fromkeys(texts)}, (encode_prompt(negative, *encode) if negative is not None else None)


def prepare_inputs(
    models: Models, image: np.ndarray, settings: Settings, end_image: np.ndarray | None = None, tail: np.ndarray | None = None
) -> JobInputs:
    """Bucket the pictures and run every encoder once (each distinct prompt once).

    ``tail`` (extending a video) holds its last frames, already at the video's size: their latents
    become the history, and with the original model the last one is the start picture; ``image``
    stays the picture SigLIP sees.
    """
    height, width = tail.shape[1:3] if tail is not None else settings.frame_size(image)
    image = resize_and_center_crop(image, height, width)
    texts, _ = settings.section_prompts()
    prompts, negative = encode_prompts(models, texts, settings.negative_prompt if settings.cfg != 1.0 else None)
    if models.mode.mode == "low-vram":
        models.release("text_encoder")  # the 8B Llama leaves host memory before the 13B transformer loads
    start = tail[-1] if tail is not None and models.order == "inverted" else image
    with models.use("vae", "image_encoder") as (vae, siglip):

        def latent(picture: np.ndarray) -> torch.Tensor:
            return encode_latents(vae, image_to_vae_input(resize_and_center_crop(picture, height, width)))

        return JobInputs(
            image=image,
            start_latent=latent(start),
            image_embeds=encode_image(image, models.feature_extractor, siglip),
            positive=prompts[texts[0]],
            negative=negative,
            prompts=prompts,
            end_latent=latent(end_image) if end_image is not None else None,
            prefix=encode_latents(vae, to_pixels(tail)) if tail is not None else None,
            lead=to_pixels(tail[-overlap_frames(settings.window) :]) if tail is not None else None,
        )


def conditioning(prompt: PromptEmbedding, image_embeds: torch.Tensor, device, dtype) -> Conditioning:
    return Conditioning(prompt.embeds, prompt.mask, prompt.pooled, image_embeds).to(device, dtype)


def add_clean_frames(context: PackedContext, latents: torch.Tensor, indices: torch.Tensor) -> PackedContext:
    """Extra full-resolution context frames at RoPE frame ``indices`` (the transformer takes any number)."""
    layout = replace(context.indices, clean=torch.cat([context.indices.clean, indices]))
    return replace(context, indices=layout, clean=torch.cat([context.clean, latents.to(context.clean)], dim=2))


def section_context(plan: SectionPlan, video: torch.Tensor, section: Section, inputs: JobInputs) -> PackedContext:
    """The packed history of a section, with an end picture or an extended video's frames where they belong.

    End picture: with the original model it is the first generated section's nearest future frame
    (its 1x history slot); with F1 it is shown one frame after the last section's window (and that
    window's last frame is pinned to it while sampling, see ``pin_last_frame``). Extending with the
    original model: the given video's last latents sit just before the start latent, at negative
    RoPE indices, in every section; with F1 they simply are the history.
    """
    if plan.order == "inverted":
        future = inputs.end_latent if section.is_first else None
        context = pack_section(plan.order, video, section, plan.window, start=inputs.start_latent, future=future)
        if plan.offset:
            first_new = window_bounds(plan.offset, plan.window)[0]
            past = min(PAST_LATENTS, first_new - 1)
            context = add_clean_frames(context, video[:, :, first_new - past : first_new], torch.arange(-past, 0))
        return context
    context = pack_section(plan.order, video, section, plan.window, start=inputs.start_latent)
    if plan.is_last(section) and inputs.end_latent is not None:
        context = add_clean_frames(context, inputs.end_latent, context.indices.latents[-1:] + 1)
    return context


def pin_last_frame(denoise, latent: torch.Tensor):
    """A denoiser whose clean prediction always ends with ``latent`` (F1's end picture).

    UniPC steps from the clean predictions, so the pinned frame follows the exact flow-matching path
    from its noise to ``latent`` and the section's output ends with it, while the model makes every
    other frame of the window attend to it at every step.
    """

    def pinned(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x0 = denoise(x, sigma)
        return torch.cat([x0[:, :, :-1], latent.to(x0)], dim=2)

    return pinned


def sample_section(
    transformer,
    context: PackedContext,
    noise: torch.Tensor,
    positive: Conditioning,
    negative: Conditioning | None,
    settings: Settings,
    on_step: Callable[[int], None] | None = None,
    blocks=None,
    pin_last: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Denoise one window; returns its latents (float32, on the noise's device) and the transformer passes it took."""
    teacache = TeaCache(settings.steps, settings.teacache_threshold) if settings.teacache else None
    denoise = make_denoiser(
        transformer, positive, negative, context, settings.distilled_guidance, settings.cfg, settings.guidance_rescale, teacache, blocks
    )
    if pin_last is not None:
        denoise = pin_last_frame(denoise, pin_last.to(noise.device))
    _, _, frames, height, width = noise.shape
    sigmas = get_schedule(settings.steps, frames * height * width // 4)
    callback = (lambda i, _x0: on_step(i + 1)) if on_step else None
    latents = sample_unipc(denoise, noise, sigmas, callback)
    passes = teacache.computed if teacache else settings.steps
    return latents, passes * (2 if negative is not None else 1)


def decode(models: Models, latents: torch.Tensor) -> torch.Tensor:
    with models.use("vae") as (vae,):
        return decode_latents(vae, latents)


def job_plan(settings: Settings, order: Order, inputs: JobInputs) -> SectionPlan:
    """The sections to make; an extended video's tail counts as windows already there."""
    offset = (inputs.prefix.shape[2] - 1) // settings.window if inputs.prefix is not None else 0
    return plan_sections(section_count(settings.seconds, settings.window), settings.window, order, offset)


def generate_frames(
    models: Models,
    image: np.ndarray | None,
    settings: Settings,
    sink: FrameSink,
    on_event: Callable[[Event], None] | None = None,
    inputs: JobInputs | None = None,
    finished: Sequence[FinishedSection] = (),
) -> Result:
    """Make the whole video: ``sink(frames, first_frame)`` receives every frame exactly once, in pieces.

    ``inputs`` are the already encoded pictures and prompts (training's validation videos come from
    its cache; a resumed job from its folder); without them every encoder runs here on ``image``.
    ``finished`` are sections made earlier by the same job, in generation order.
    """
    settings.validate()
    emit = on_event or (lambda event: None)
    inputs = inputs or prepare_inputs(models, image, settings)
    device, dtype = models.placement.device, models.placement.transformer_dtype
    prompts, _ = settings.section_prompts()
    positives = {text: conditioning(inputs.embedding(text), inputs.image_embeds, device, dtype) for text in dict.fromkeys(prompts)}
    negative = conditioning(inputs.negative, inputs.image_embeds, device, dtype) if inputs.negative is not None else None

    plan = job_plan(settings, models.order, inputs)
    height, width = inputs.image.shape[:2]
    video = torch.zeros((1, LATENT_CHANNELS, plan.num_latents, height // 8, width // 8))
    given = inputs.prefix if inputs.prefix is not None else inputs.start_latent
    video[:, :, : given.shape[2]] = given
    lead = Pending(inputs.lead, latent_to_frame(given.shape[2] - plan.window)) if inputs.lead is not None else None
    noise_shape = (1, LATENT_CHANNELS, plan.window, height // 8, width // 8)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    result = Result(plan, video, height, width)
    pending: Pending | None = None

    for section, done in zip(plan.sections, finished):
        torch.randn(noise_shape, generator=generator)  # the noise that section drew
        begin, end = window_bounds(section.slot, plan.window)
        video[:, :, begin:end] = done.latents
        result.transformer_passes.append(done.transformer_passes)
    if finished and len(finished) < plan.count:
        span_begin, span_end = decode_span(plan, plan.sections[len(finished) - 1])
        decoded = decode(models, video[:, :, span_begin:span_end])
        pending = pending_after(decoded, latent_to_frame(span_begin), plan)

    for section in plan.sections[len(finished) :]:
        noise = torch.randn(noise_shape, generator=generator)
        context = section_context(plan, video, section, inputs)
        prompt = prompts[section.slot - plan.offset]
        emit(SectionStarted(section, context, prompt, positives[prompt]))
        pin = inputs.end_latent if plan.order == "forward" and plan.is_last(section) else None
        on_step = lambda step, s=section: emit(StepDone(s, step, settings.steps))  # noqa: E731
        latents, passes = sample_section(
            models.transformer, context_to(context, device), noise.to(device), positives[prompt], negative, settings, on_step, models.blocks, pin
        )
        begin, end = window_bounds(section.slot, plan.window)
        video[:, :, begin:end] = latents.float().cpu()
        result.transformer_passes.append(passes)

        span_begin, span_end = decode_span(plan, section)
        decoded = decode(models, video[:, :, span_begin:span_end])
        frames, first_frame, pending = stitch(pending, decoded, latent_to_frame(span_begin), plan, plan.is_last(section), lead)
        if frames.shape[2]:
            sink(frames, first_frame)
        emit(SectionDone(section, video[:, :, begin:end], passes, frames, first_frame))
    return result
