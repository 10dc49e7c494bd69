"""A FramePack job from encoded inputs to frames, in two calls: ``encode`` then ``generate_frames``.

``encode`` runs every encoder once (pictures bucketed, each distinct prompt once). ``generate_frames``
is the section loop: each section packs its context from the latents made so far (the family's
context layout, ``fpgen.packing``), draws its noise from the job's one CPU generator, samples with
the family's sampler, decodes its span and hands the frames that are final to a sink. Models come
in as ``Components`` (whose phases carry out the memory policy); nothing here holds state between
jobs or branches on the family. A job can continue from sections finished earlier (``finished``):
their latents are put back, the generator is advanced past their noise and the overlap still
pending is decoded again, so the rest comes out exactly as without the break.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
import torch

from fpgen.buckets import resize_and_center_crop
from fpgen.conditioning import JobInputs, PromptEmbedding, encode_image, encode_latents, encode_prompt
from fpgen.config import Pictures
from fpgen.spec import Settings
from fpgen.decode import Pending, decode_latents, decode_span, pending_after, stitch
from fpgen.denoiser import Guidance, make_denoiser, pin_last_frame
from fpgen.families import Parts
from fpgen.events import FinishedSection, FrameSink, Listener, Result, SectionDone, SectionStarted, StepDone
from fpgen.geometry import LATENT_CHANNELS, latent_size, latent_to_frame, overlap_frames
from fpgen.loading import Components
from fpgen.packing import context_to, window_bounds
from fpgen.pixels import picture_to_pixels, to_pixels
from fpgen.plan import SectionPlan
from fpgen.transformer import Conditioning


def encode(components: Components, pictures: Pictures, texts: Sequence[str], negative: str | None, window: int) -> JobInputs:
    """Bucket the pictures and run every encoder once (each distinct prompt once; ``negative`` only for real CFG).

    Extending a video, its last frames become the history; with a family whose start latent comes
    from the video (the original model), that is its last frame, and ``pictures.start`` stays the
    picture SigLIP sees.
    """
    height, width = pictures.size
    image = resize_and_center_crop(pictures.start, height, width)
    sections = components.family.sections
    tail = pictures.tail.tail if pictures.tail is not None else None
    start = tail[sections.tail_frame] if tail is not None and sections.start_from_tail else image
    with components.encoding() as models:
        prompt = lambda text: encode_prompt(text, models.tokenizer, models.text_encoder, models.tokenizer_2, models.text_encoder_2)  # noqa: E731
        latent = lambda picture: encode_latents(models.vae, picture_to_pixels(resize_and_center_crop(picture, height, width)))  # noqa: E731
        prompts = {text: prompt(text) for text in dict.fromkeys(texts)}
        return JobInputs(
            image=image,
            start_latent=latent(start),
            image_embeds=encode_image(image, models.feature_extractor, models.image_encoder),
            positive=prompts[texts[0]],
            negative=prompt(negative) if negative is not None else None,
            prompts=prompts,
            end_latent=latent(pictures.end) if pictures.end is not None else None,
            prefix=encode_latents(models.vae, to_pixels(tail)) if tail is not None else None,
            lead=to_pixels(tail[-overlap_frames(window) :]) if tail is not None else None,
        )


def conditioning(prompt: PromptEmbedding, image_embeds: torch.Tensor, device, dtype) -> Conditioning:
    return Conditioning(prompt.embeds, prompt.mask, prompt.pooled, image_embeds).to(device, dtype)


def generate_frames(
    components: Components,
    inputs: JobInputs,
    plan: SectionPlan,
    settings: Settings,
    sink: FrameSink,
    on_event: Listener | None = None,
    finished: Sequence[FinishedSection] = (),
) -> Result:
    """Make the whole video: ``sink(frames, first_frame)`` receives every frame exactly once, in pieces.

    ``plan`` holds the sections and each one's prompt; ``finished`` are sections made earlier by the
    same job, in generation order. What differs between families (conditioning, denoiser, sampler,
    decode) comes from the family's ``Parts``.
    """
    emit = on_event or (lambda event: None)
    family, parts, device, dtype = components.family, components.family.parts(), components.runtime.device, components.runtime.transformer_dtype
    guidance = Guidance(settings.distilled_guidance, settings.cfg, settings.guidance_rescale)
    positives = {text: parts.conditioning(inputs.embedding(text), inputs.image_embeds, device, dtype) for text in dict.fromkeys(plan.prompts)}
    negative = parts.conditioning(inputs.negative, inputs.image_embeds, device, dtype) if inputs.negative is not None else None

    height, width = inputs.image.shape[:2]
    video = torch.zeros((1, LATENT_CHANNELS, plan.num_latents, *latent_size(height, width)))
    given = inputs.prefix if inputs.prefix is not None else inputs.start_latent
    video[:, :, : given.shape[2]] = given
    lead = Pending(inputs.lead, latent_to_frame(given.shape[2] - plan.window)) if inputs.lead is not None else None
    noise_shape = (1, LATENT_CHANNELS, plan.window, *latent_size(height, width))
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    parts.skip_encoding_noise(generator, inputs, plan.window)
    result = Result(plan, video, height, width)
    pending: Pending | None = None

    for section, done in zip(plan.sections, finished):
        parts.skip_section_noise(components, generator, noise_shape)  # the noise that section drew
        begin, end = window_bounds(section.slot, plan.window)
        video[:, :, begin:end] = done.latents
        result.transformer_passes.append(done.transformer_passes)
    if finished and len(finished) < plan.count:
        pending = parts.resume_pending(components, video, plan, len(finished))

    teacache = settings.teacache_threshold if settings.teacache else None
    tokens = plan.window * math.prod(latent_size(height, width)) // 4
    with components.denoising() as (transformer, blocks), components.step_cache(settings.steps, teacache):
        for section in plan.sections[len(finished) :]:
            noise = torch.randn(noise_shape, generator=generator)
            context = family.sections.context(plan, video, section, inputs.start_latent, inputs.end_latent)
            prompt = plan.prompt_of(section)
            emit(SectionStarted(section, context, prompt, positives[prompt]))
            blocks.reset_hooks()
            computed = blocks.computed
            denoise = parts.denoiser(transformer, blocks, positives[prompt], negative, context_to(context, device), guidance)
            if family.sections.pins_end and plan.is_last(section) and inputs.end_latent is not None:
                denoise = pin_last_frame(denoise, inputs.end_latent.to(device))
            on_step = lambda i, _x0, s=section: emit(StepDone(s, i + 1, settings.steps))  # noqa: E731
            latents = parts.sample(components, denoise, noise.to(device), settings.steps, tokens, on_step, generator)
            passes = blocks.computed - computed
            begin, end = window_bounds(section.slot, plan.window)
            video[:, :, begin:end] = latents.float().cpu()
            result.transformer_passes.append(passes)

            frames, first_frame, pending = parts.decode_section(components, video, plan, section, pending, lead)
            if frames.shape[2]:
                sink(frames, first_frame)
            emit(SectionDone(section, video[:, :, begin:end], passes, frames, first_frame))
    return result


def sample_flow(components: Components, denoise, noise: torch.Tensor, steps: int, tokens: int, on_step, generator=None) -> torch.Tensor:
    """FramePack's sampling: the family's shifted schedule for a window of ``tokens`` patch tokens, then its sampler."""
    family = components.family
    return family.sampler(denoise, noise, family.schedule(steps, tokens), on_step)


def decode_overlapping(components: Components, video: torch.Tensor, plan: SectionPlan, section, pending: Pending | None, lead: Pending | None):
    """FramePack's decode: the section's span (with a neighbouring window), cross-faded into what is pending."""
    span_begin, span_end = decode_span(plan, section)
    decoded = decode(components, video[:, :, span_begin:span_end])
    return stitch(pending, decoded, latent_to_frame(span_begin), plan, plan.is_last(section), lead)


def overlap_after(components: Components, video: torch.Tensor, plan: SectionPlan, done: int) -> Pending:
    """A resumed FramePack job: the overlap the last finished section left, decoded again."""
    span_begin, span_end = decode_span(plan, plan.sections[done - 1])
    return pending_after(decode(components, video[:, :, span_begin:span_end]), latent_to_frame(span_begin), plan)


def decode(components: Components, latents: torch.Tensor) -> torch.Tensor:
    with components.decoding() as vae:
        return decode_latents(vae, latents)


FRAMEPACK_PARTS = Parts(
    components=Components,
    encode=lambda components, pictures, texts, negative, settings: encode(components, pictures, texts, negative, settings.window),
    conditioning=conditioning,
    denoiser=make_denoiser,
    sample=sample_flow,
    decode_section=decode_overlapping,
    resume_pending=overlap_after,
    skip_encoding_noise=lambda generator, inputs, window: None,  # FramePack's encoders draw no noise
    skip_section_noise=lambda components, generator, shape: torch.randn(shape, generator=generator),
)
