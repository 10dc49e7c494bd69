"""FramePack's own code for the engine's loop: its encoders, conditioning, sampler call and overlapping decode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fpgen.buckets import resize_and_center_crop
from fpgen.conditioning import JobInputs, PromptEmbedding, encode_image, encode_latents, encode_prompt
from fpgen.decode import Pending, decode_latents, decode_span, pending_after, stitch
from fpgen.denoiser import make_denoiser
from fpgen.geometry import latent_to_frame, overlap_frames
from fpgen.loading import Components
from fpgen.parts import Parts
from fpgen.pixels import picture_to_pixels, to_pixels
from fpgen.plan import SectionPlan
from fpgen.transformer import Conditioning

if TYPE_CHECKING:
    from fpgen.config import Pictures


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
            keyframes={boundary: latent(picture) for boundary, picture in pictures.keyframes},
            prefix=encode_latents(models.vae, to_pixels(tail)) if tail is not None else None,
            lead=to_pixels(tail[-overlap_frames(window) :]) if tail is not None else None,
        )


def conditioning(prompt: PromptEmbedding, image_embeds: torch.Tensor, device, dtype) -> Conditioning:
    return Conditioning(prompt.embeds, prompt.mask, prompt.pooled, image_embeds).to(device, dtype)


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


def encode_job(components: Components, pictures: Pictures, texts: Sequence[str], negative: str | None, settings) -> JobInputs:
    return encode(components, pictures, texts, negative, settings.window)


def no_encoding_noise(generator: torch.Generator, inputs: JobInputs, window: int) -> None:
    """FramePack's encoders draw no noise (the start latent is the posterior mean)."""


def skip_section_noise(components: Components, generator: torch.Generator, shape: tuple[int, ...]) -> None:
    torch.randn(shape, generator=generator)


FRAMEPACK_PARTS = Parts(
    components=Components,
    encode=encode_job,
    conditioning=conditioning,
    denoiser=make_denoiser,
    sample=sample_flow,
    decode_section=decode_overlapping,
    resume_pending=overlap_after,
    skip_encoding_noise=no_encoding_noise,
    skip_section_noise=skip_section_noise,
)
