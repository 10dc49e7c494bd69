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

from collections.abc import Sequence
import torch

from fpgen.conditioning import JobInputs, blend_embeddings
from fpgen.spec import Settings
from fpgen.decode import Pending
from fpgen.denoiser import Guidance, pin_last_frame
from fpgen.events import FinishedSection, FrameSink, Listener, Result, SectionDone, SectionStarted, StepDone
from fpgen.geometry import LATENT_CHANNELS, latent_size, latent_to_frame, window_tokens
from fpgen.loading import Components
from fpgen.packing import context_to, limit_history, window_bounds
from fpgen.plan import SectionPlan
from fpgen.stepcache import StepCachePlan


def generate_frames(
    components: Components,
    inputs: JobInputs,
    plan: SectionPlan,
    settings: Settings,
    sink: FrameSink,
    on_event: Listener | None = None,
    finished: Sequence[FinishedSection] = (),
    step_cache: StepCachePlan = StepCachePlan(),
) -> Result:
    """Make the whole video: ``sink(frames, first_frame)`` receives every frame exactly once, in pieces.

    ``plan`` holds the sections and each one's prompt; ``finished`` are sections made earlier by the
    same job, in generation order; ``step_cache`` may skip transformer passes. What differs between
    families (conditioning, denoiser, sampler, decode) comes from the family's ``Parts``.
    """
    emit = on_event or (lambda event: None)
    family, parts, device, dtype = components.family, components.family.parts, components.runtime.device, components.runtime.transformer_dtype
    guidance = Guidance(settings.distilled_guidance, settings.cfg, settings.guidance_rescale)
    mixes = dict.fromkeys(plan.prompt_mix(section) for section in plan.sections)
    positives = {mix: parts.conditioning(blend_embeddings(inputs.embedding(mix[0]), inputs.embedding(mix[1]), mix[2]), inputs.image_embeds, device, dtype) for mix in mixes}
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
        result.transformer_calls.append(done.transformer_calls)
    if finished and len(finished) < plan.count:
        pending = parts.resume_pending(components, video, plan, len(finished))

    tokens = window_tokens(plan.window, height, width)
    section_steps = parts.section_steps(components, settings.steps)
    with components.denoising() as (transformer, blocks), components.step_cache(step_cache, settings.steps):
        for section in plan.sections[len(finished) :]:
            noise = torch.randn(noise_shape, generator=generator)
            arrival = inputs.arrival(plan, section)
            context = limit_history(family.sections.context(plan, video, section, inputs.start_latent, arrival), settings.history, family.sections.name)
            prompt = plan.prompt_of(section)
            positive = positives[plan.prompt_mix(section)]
            emit(SectionStarted(section, context, prompt, positive))
            blocks.reset_hooks()
            computed, calls = blocks.computed, blocks.calls
            denoise = parts.denoiser(transformer, blocks, positive, negative, context_to(context, device), guidance)
            if family.sections.pins_end and arrival is not None:
                denoise = pin_last_frame(denoise, arrival.to(device))
            on_step = lambda i, _x0, s=section: emit(StepDone(s, i + 1, section_steps))  # noqa: E731
            latents = parts.sample(components, denoise, noise.to(device), settings.steps, tokens, on_step, generator)
            passes, calls = blocks.computed - computed, blocks.calls - calls
            begin, end = window_bounds(section.slot, plan.window)
            video[:, :, begin:end] = latents.float().cpu()
            result.transformer_passes.append(passes)
            result.transformer_calls.append(calls)

            frames, first_frame, pending = parts.decode_section(components, video, plan, section, pending, lead)
            if frames.shape[2]:
                sink(frames, first_frame)
            emit(SectionDone(section, video[:, :, begin:end], passes, frames, first_frame, calls))
    return result
