"""Helios (PKU-YuanGroup, diffusers' ``HeliosPipeline``): the parts of its family that differ from FramePack's.

Helios is Wan2.1 finetuned with FramePack-F1's packed history, so the engine's section loop, the F1
context layout (``fpgen.packing.helios_context``) and the job machinery are shared; this module
brings what is Helios' own: UMT5 prompts, the Wan VAE with its per-channel latent normalisation,
the history noise on a start picture, the transformer called with its three history slots, the
repo's ``HeliosScheduler`` stepping each chunk, and a decode of every chunk on its own.

Seed and noise convention (the one ``HeliosPipeline`` has, with one CPU generator seeded ``--seed``):
with a picture, encoding draws first (the picture's VAE posterior sample, the posterior sample of the
picture repeated over one chunk, then uniform sigma and Gaussian noise for each of the two), then
every chunk draws its noise (1, 16, window, H/8, W/8) in time order. Text-to-video draws only the
chunk noise. Continuing a video (``--extend``, the pipeline's ``video=``), encoding draws the first
frame's posterior sample, one for every whole chunk of the video, the first frame's sigma and noise,
then per chunk a sigma per latent frame and its noise (``video_latents``). The engine continues the
generator from the state encoding left (``JobInputs.noise_state``), so a resumed job and a fresh one
see the same chunk noise.
"""

from __future__ import annotations

import gc
import html
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from fpgen.acceleration import compile_blocks, compile_decoder, float8_linears
from fpgen.buckets import resize_and_center_crop
from fpgen.conditioning import JobInputs, PromptEmbedding
from fpgen.denoiser import guided_velocity
from fpgen.errors import ModelMissingError
from fpgen.extend import VideoTail
from fpgen.framepack import skip_section_noise
from fpgen.parts import Parts
from fpgen.geometry import LATENT_CHANNELS, latent_size, latents_to_frames
from fpgen.loading import Components, all_but_blocks_to
from fpgen.lora import apply_loras
from fpgen.offload import on_device, release_cached_memory, stream_module_layers
from fpgen.packing import PackedContext, window_bounds
from fpgen.pixels import picture_to_pixels, to_pixels

MAX_PROMPT_TOKENS = 512  # HeliosPipeline's max_sequence_length
ZERO_INIT_STEPS = 1  # CFG-zero*: the first stage's steps 0..1 predict zero velocity (HeliosPyramidPipeline's zero_steps)
HISTORY_NOISE = (0.111, 0.135)  # sigma range of the noise put on the start picture's latents (image and video defaults)


def clean_prompt(text: str) -> str:
    """HeliosPipeline's prompt cleaning (HTML entities, runs of whitespace), without ftfy's mojibake repair."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


@torch.no_grad()
def encode_umt5(text: str, tokenizer, text_encoder) -> PromptEmbedding:
    """UMT5's last hidden state of the prompt's tokens, zero past them, padded to 512 (HeliosPipeline's embedding)."""
    cleaned = clean_prompt(text)
    tokens = tokenizer([cleaned], padding="max_length", max_length=MAX_PROMPT_TOKENS, truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    length = int(tokens.attention_mask.sum())
    hidden = text_encoder(tokens.input_ids.to(text_encoder.device), tokens.attention_mask.to(text_encoder.device)).last_hidden_state.float().cpu()
    embeds = torch.zeros_like(hidden)
    embeds[:, :length] = hidden[:, :length]
    truncated = len(tokenizer(cleaned).input_ids) > MAX_PROMPT_TOKENS
    return PromptEmbedding(embeds, tokens.attention_mask.bool(), torch.zeros(0), length, truncated)


def latent_statistics(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """The Wan VAE's per-channel latent mean and inverse std, shaped to broadcast over (B, C, T, H, W)."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    return torch.tensor(vae.config.latents_mean).view(shape), 1.0 / torch.tensor(vae.config.latents_std).view(shape)


@dataclass(frozen=True)
class HistoryDraws:
    """What encoding a start picture draws from the job's generator, in HeliosPipeline's order."""

    image_eps: torch.Tensor  # the picture's posterior sample
    chunk_eps: torch.Tensor  # the posterior sample of the picture repeated over one chunk
    image_sigma: torch.Tensor
    image_noise: torch.Tensor
    history_sigma: torch.Tensor
    history_noise: torch.Tensor

    @staticmethod
    def take(generator: torch.Generator, latent_hw: tuple[int, int], window: int) -> HistoryDraws:
        one = (1, LATENT_CHANNELS, 1, *latent_hw)
        image_eps = torch.randn(one, generator=generator)
        chunk_eps = torch.randn((1, LATENT_CHANNELS, window, *latent_hw), generator=generator)
        low, high = HISTORY_NOISE
        draws = [image_eps, chunk_eps]
        for _ in range(2):
            draws += [torch.rand(1, generator=generator) * (high - low) + low, torch.randn(one, generator=generator)]
        return HistoryDraws(*draws)


def posterior_sample(vae, pixels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The VAE posterior's sample ``mean + std * eps``, normalised per channel, float32 on the CPU."""
    posterior = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    mean, inverse_std = latent_statistics(vae)
    sample = posterior.mean.float().cpu() + posterior.std.float().cpu() * eps
    return (sample - mean) * inverse_std


def noised(latents: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return sigma * noise + (1 - sigma) * latents


@torch.no_grad()
def picture_latents(vae, picture: np.ndarray, draws: HistoryDraws, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start latent, history seed): the picture's noised latent, and the last latent of the picture held for a chunk, noised."""
    pixels = picture_to_pixels(picture)
    image = posterior_sample(vae, pixels, draws.image_eps)
    held = posterior_sample(vae, pixels.repeat(1, 1, latents_to_frames(window), 1, 1), draws.chunk_eps)[:, :, -1:]
    return noised(image, draws.image_sigma, draws.image_noise), noised(held, draws.history_sigma, draws.history_noise)


def last_draws(draw, total: int, kept: int) -> list:
    """``total`` draws in order, keeping only the last ``kept`` (the others are dropped as they are drawn)."""
    drawn = []
    for i in range(total):
        value = draw()
        if i >= total - kept:
            drawn.append(value)
    return drawn


def video_latents(vae, tail: VideoTail, generator: torch.Generator, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start latent, history): a video's first frame and last whole chunks, encoded and noised as HeliosPipeline's ``video=``.

    The pipeline encodes every whole chunk of the video (the last ``4*window - 3``-frame chunks, one
    by one) and draws for each; only the last ones (``tail.tail``) reach the 19-latent history, so
    the earlier chunks' draws are taken and dropped, which keeps the generator in step. The history
    has a zero latent first (the history seed slot, zero as in text-to-video).
    """
    chunk = latents_to_frames(window)
    total, kept = tail.frames // chunk, len(tail.tail) // chunk
    hw = latent_size(*tail.tail.shape[1:3])
    one, chunk_shape = (1, LATENT_CHANNELS, 1, *hw), (1, LATENT_CHANNELS, window, *hw)
    low, high = HISTORY_NOISE
    first_eps = torch.randn(one, generator=generator)
    chunk_eps = last_draws(lambda: torch.randn(chunk_shape, generator=generator), total, kept)
    first_sigma, first_noise = torch.rand(1, generator=generator) * (high - low) + low, torch.randn(one, generator=generator)
    frame_sigmas = lambda: (torch.rand(window, generator=generator) * (high - low) + low).view(1, 1, window, 1, 1)  # noqa: E731
    chunk_noise = last_draws(lambda: (frame_sigmas(), torch.randn(chunk_shape, generator=generator)), total, kept)
    first = noised(posterior_sample(vae, picture_to_pixels(tail.first), first_eps), first_sigma, first_noise)
    chunks = [
        noised(posterior_sample(vae, to_pixels(tail.tail[i * chunk : (i + 1) * chunk]), eps), sigma, noise)
        for i, (eps, (sigma, noise)) in enumerate(zip(chunk_eps, chunk_noise))
    ]
    return first, torch.cat([torch.zeros(one), *chunks], dim=2)


def encode(components: Components, pictures, texts, negative: str | None, settings) -> JobInputs:
    """Prompts through UMT5 (each distinct one once); a start picture or a video's tail through the Wan VAE with history noise.

    Text-to-video has no picture: the start latent and the history seed are zeros (see
    ``fpgen.packing.helios_context``) and the "picture" is a black frame of the video's size. The
    generator's state after the encoding draws is kept, so that every chunk's noise follows them.
    """
    height, width = pictures.size
    hw = latent_size(height, width)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    with components.encoding() as models:
        prompts = {text: encode_umt5(text, models.tokenizer, models.text_encoder) for text in dict.fromkeys(texts)}
        negative_embedding = encode_umt5(negative, models.tokenizer, models.text_encoder) if negative is not None else None
        if pictures.tail is not None:
            image = pictures.tail.first
            start, history = video_latents(models.vae, pictures.tail, generator, settings.window)
        elif pictures.start is None:
            image = np.zeros((height, width, 3), dtype=np.uint8)
            start = history = torch.zeros((1, LATENT_CHANNELS, 1, *hw))
        else:
            image = resize_and_center_crop(pictures.start, height, width)
            start, history = picture_latents(models.vae, image, HistoryDraws.take(generator, hw, settings.window), settings.window)
    return JobInputs(image, start, torch.zeros(0), prompts[texts[0]], negative_embedding, prompts, prefix=history, noise_state=generator.get_state())


def skip_encoding_noise(generator: torch.Generator, inputs: JobInputs, window: int) -> None:
    """Continue the job's generator from where encoding left it (a resumed job and a fresh one see the same chunk noise)."""
    generator.set_state(inputs.noise_state)


def conditioning(prompt: PromptEmbedding, image_embeds: torch.Tensor, device, dtype) -> torch.Tensor:
    """Helios is conditioned on the UMT5 embedding alone (no pooled text, no image tokens)."""
    return prompt.embeds.to(device, dtype)


class TransformerPasses:
    """Helios' stand-in for FramePack's block stack: it counts transformer passes (all computed); no step cache hooks in."""

    def __init__(self):
        self.calls = self.computed = 0

    def reset_hooks(self) -> None:
        """Nothing to reset: Helios runs no step cache."""


def history_inputs(context: PackedContext, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The packed F1 context as HeliosTransformer3DModel's short (start + 1x), mid (2x) and long (4x) history."""
    layout = context.indices
    return {
        "indices_hidden_states": layout.latents[None],
        "indices_latents_history_short": layout.clean[None],
        "indices_latents_history_mid": layout.clean_2x[None],
        "indices_latents_history_long": layout.clean_4x[None],
        "latents_history_short": context.clean.to(dtype),
        "latents_history_mid": context.clean_2x.to(dtype),
        "latents_history_long": context.clean_4x.to(dtype),
    }


def optimal_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CFG-zero*'s per-row projection of the conditional prediction onto the unconditional one."""
    rows, ndim = positive.shape[0], positive.ndim
    positive, negative = positive.float().reshape(rows, -1), negative.float().reshape(rows, -1)
    scale = (positive * negative).sum(dim=1, keepdim=True) / ((negative**2).sum(dim=1, keepdim=True) + 1e-8)
    return scale.view(rows, *([1] * (ndim - 1)))


def zero_star_velocity(positive: torch.Tensor, negative: torch.Tensor, cfg: float) -> torch.Tensor:
    """CFG-zero*: guidance from the unconditional prediction scaled to the conditional one."""
    scaled = negative * optimal_scale(positive, negative).to(positive.dtype)
    return scaled + cfg * (positive - scaled)


def make_velocity(transformer, passes: TransformerPasses, positive: torch.Tensor, negative: torch.Tensor | None, context: PackedContext, guidance, zero_star: bool = False):
    """The transformer as ``f(x, timestep, zero_init) -> flow velocity`` with real CFG (``--cfg``; 1 runs no negative pass).

    With ``zero_star`` (Helios-Mid) the guidance is CFG-zero*, and ``zero_init`` steps (the first
    ones of a chunk) predict zero velocity, as HeliosPyramidPipeline does.
    """
    dtype = transformer.dtype
    history = history_inputs(context, dtype)
    run_negative = guidance.cfg != 1.0 and negative is not None

    def forward(x: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        passes.calls += 1
        passes.computed += 1
        return transformer(hidden_states=x.to(dtype), timestep=timestep, encoder_hidden_states=prompt, **history, return_dict=False)[0]

    def velocity(x: torch.Tensor, timestep: torch.Tensor, zero_init: bool = False) -> torch.Tensor:
        positive_v = forward(x, timestep, positive)
        if not run_negative:
            return positive_v
        negative_v = forward(x, timestep, negative)
        if not zero_star:
            return guided_velocity(positive_v, negative_v, guidance.cfg, 0.0)
        return positive_v * 0.0 if zero_init else zero_star_velocity(positive_v, negative_v, guidance.cfg)

    return velocity


def flux_shift(tokens: int, config) -> float:
    """The resolution-dependent shift exponent mu, from the scheduler config's line (Flux's calculate_shift)."""
    base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    low, high = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (high - low) / (top - base)
    return tokens * slope + low - slope * base


def sample_chunk(components: Components, velocity, noise: torch.Tensor, steps: int, tokens: int, on_step, generator=None) -> torch.Tensor:
    """One chunk with a fresh ``HeliosScheduler`` from the repo's config: ``steps`` sigmas from 0.999 down, shifted for ``tokens``."""
    scheduler = scheduler_from(components.scheduler_config)
    sigmas = np.linspace(0.999, 0.0, steps + 1)[:-1]
    scheduler.set_timesteps(steps, device=noise.device, sigmas=sigmas, mu=flux_shift(tokens, components.scheduler_config))
    latents = noise
    for i, t in enumerate(scheduler.timesteps):
        latents = scheduler.step(velocity(latents, t.expand(latents.shape[0])), t, latents, generator=generator, return_dict=False)[0]
        on_step(i, latents)
    return latents


SCHEDULERS = ("HeliosScheduler", "HeliosDMDScheduler")  # the scheduler classes a Helios repo may name


def scheduler_from(config):
    """A fresh scheduler of the class the repo's config names (only Helios' own two are accepted)."""
    import diffusers

    name = config.get("_class_name", "HeliosScheduler")
    if name not in SCHEDULERS:
        raise ModelMissingError(f"the scheduler config names {name}, not a Helios scheduler", "download the model again: fpgen download MODEL")
    return getattr(diffusers, name).from_config(config)


def per_frame(latents: torch.Tensor, resize) -> torch.Tensor:
    """Apply a 2-D resize to every latent frame of (B, C, T, H, W)."""
    b, c, t = latents.shape[:3]
    frames = resize(latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, *latents.shape[-2:]))
    return frames.reshape(b, t, c, *frames.shape[-2:]).permute(0, 2, 1, 3, 4)


def halve(latents: torch.Tensor) -> torch.Tensor:
    """Half the spatial size, bilinear, times 2 (the pyramid's first stages start from the full-size noise shrunk)."""
    return per_frame(latents, lambda x: F.interpolate(x, size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear") * 2)


def double(latents: torch.Tensor) -> torch.Tensor:
    return per_frame(latents, lambda x: F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="nearest"))


def block_noise(shape: tuple[int, ...], gamma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise correlated within every 2x2 patch (covariance (1+gamma)I - gamma), against the upsampling's block artifacts.

    The factor is computed in float64: at Helios' gamma of 1/3 the covariance is singular but for a
    1e-8 jitter that float32 cannot hold, and float32 Cholesky (diffusers') then fails on some CPUs.
    """
    b, c, t, h, w = shape
    covariance = torch.eye(4, dtype=torch.float64) * (1 + gamma) - torch.ones(4, 4, dtype=torch.float64) * gamma + torch.eye(4, dtype=torch.float64) * 1e-8
    z = torch.randn(b * c * t * (h // 2) * (w // 2), 4, generator=generator)
    noise = z @ torch.linalg.cholesky(covariance).float().T
    return noise.view(b, c, t, h // 2, w // 2, 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(shape)


def renoise(latents: torch.Tensor, scheduler, stage: int, generator: torch.Generator) -> torch.Tensor:
    """Upsample a stage's result and mix in block noise to the next stage's starting noise level."""
    gamma, signal = scheduler.config.gamma, 1 - scheduler.ori_start_sigmas[stage]
    alpha = 1 / (math.sqrt(1 + 1 / gamma) * (1 - signal) + signal)
    beta = alpha * (1 - signal) / math.sqrt(gamma)
    upsampled = double(latents)
    return alpha * upsampled + beta * block_noise(tuple(upsampled.shape), gamma, generator).to(upsampled)


def sample_pyramid(components: Components, velocity, noise: torch.Tensor, steps: int, tokens: int, on_step, generator=None) -> torch.Tensor:
    """One chunk through the scheduler's resolution stages (HeliosPyramidPipeline): ``steps`` steps per stage.

    The noise is shrunk to the first stage's size; every later stage starts from the previous one's
    result upsampled and renoised. A DMD scheduler (Helios-Distilled) steps back towards each
    stage's starting point.
    """
    config = components.scheduler_config
    scheduler = scheduler_from(config)
    dmd = type(scheduler).__name__ == "HeliosDMDScheduler"
    latents = noise
    for _ in range(config["stages"] - 1):
        latents = halve(latents)
    done = 0
    for stage in range(config["stages"]):
        shifted = flux_shift(math.prod(latents.shape[-3:]) // 4, config)
        scheduler.set_timesteps(steps, stage, device=noise.device, mu=shifted)
        if stage > 0:
            latents = renoise(latents, scheduler, stage, generator)
        start = latents
        for i, t in enumerate(scheduler.timesteps):
            v = velocity(latents, t.expand(latents.shape[0]).to(torch.int64), zero_init=stage == 0 and i <= ZERO_INIT_STEPS)
            extra = {"cur_sampling_step": i, "dmd_noisy_tensor": start, "dmd_sigmas": scheduler.sigmas, "dmd_timesteps": scheduler.timesteps, "all_timesteps": scheduler.timesteps} if dmd else {}
            latents = scheduler.step(v, t, latents, generator=generator, return_dict=False, **extra)[0]
            on_step(done, latents)
            done += 1
    return latents


def pyramid_steps(components: Components, steps: int) -> int:
    """A pyramid chunk takes ``steps`` steps in each of its resolution stages."""
    return steps * components.scheduler_config["stages"]


def skip_pyramid_noise(components: Components, generator: torch.Generator, shape: tuple[int, ...]) -> None:
    """Advance the generator past one pyramid chunk: its noise, then the block noise of every stage after the first."""
    torch.randn(shape, generator=generator)
    stages, gamma = components.scheduler_config["stages"], components.scheduler_config["gamma"]
    *lead, height, width = shape
    for stage in range(1, stages):  # the first stage is the noise halved stages-1 times; each later one doubles it
        block_noise((*lead, (height >> (stages - 1)) << stage, (width >> (stages - 1)) << stage), gamma, generator)


@torch.no_grad()
def decode_chunk(components: Components, video: torch.Tensor, plan, section, pending, lead):
    """A chunk's latents decoded on their own (as HeliosPipeline does): ``4*window - 3`` frames, none pending."""
    begin, end = window_bounds(section.slot, plan.window)
    with components.decoding() as vae:
        mean, inverse_std = latent_statistics(vae)
        latents = video[:, :, begin:end] / inverse_std + mean
        frames = vae.decode(latents.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0].cpu()
    return frames, section.slot * latents_to_frames(plan.window), None


class HeliosComponents(Components):
    """Helios' models: UMT5 and its tokenizer, the Wan VAE, HeliosTransformer3DModel and the scheduler's config.

    Low-vram: UMT5 and the transformer stream layer by layer from host memory (diffusers' group
    offloading, ``fpgen.offload.stream_module_layers``), UMT5 is dropped when encoding ends, before
    the transformer loads (the two never share host memory), and the VAE decodes in tiles. Fast (CUDA):
    FP8 matmuls in the blocks and a compiled VAE decoder, as FramePack's fast mode (Helios has no step cache).
    """

    @property
    def low_vram(self) -> bool:
        return self.runtime.mode == "low-vram"

    def load_encoders(self) -> HeliosComponents:
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(self.paths["tokenizer"])
        self.text_encoder = UMT5EncoderModel.from_pretrained(self.paths["text_encoder"], dtype=self.runtime.encoder_dtype, use_safetensors=True)
        self.text_encoder = self.text_encoder.to("cpu" if self.low_vram else self._resident).eval().requires_grad_(False)
        if self.low_vram:
            stream_module_layers(self.text_encoder.encoder, self.runtime.device)  # UMT5's stack, which runs every weight forward uses
        return self.load_vae()

    def load_vae(self) -> HeliosComponents:
        from diffusers import AutoencoderKLWan, HeliosScheduler

        self.scheduler_config = HeliosScheduler.load_config(self.paths["scheduler"])
        vae = AutoencoderKLWan.from_pretrained(self.paths["vae"], torch_dtype=self.runtime.encoder_dtype, use_safetensors=True)
        if self.runtime.offload_encoders:
            vae.enable_tiling()
        if self.runtime.is_cuda and self.runtime.compile and self.runtime.mode == "fast":
            compile_decoder(vae)
        self.vae = vae.to(self._resident).eval().requires_grad_(False)
        return self

    def load_transformer(self) -> HeliosComponents:
        from diffusers import HeliosTransformer3DModel

        fast = self.runtime.is_cuda and self.runtime.mode == "fast"
        resident = "cpu" if self.low_vram or fast else self.runtime.device
        model = HeliosTransformer3DModel.from_pretrained(self.paths["transformer"], torch_dtype=self.runtime.transformer_dtype, use_safetensors=True)
        model = model.to(resident).eval().requires_grad_(False)
        apply_loras(model, self.loras)
        if fast:  # as FramePack's: the blocks arrive on the GPU converted to FP8, one at a time
            all_but_blocks_to(model, self.runtime.device)
            float8_linears(model, self.runtime.device)
        if self.low_vram:
            stream_module_layers(model, self.runtime.device)
        elif self.runtime.is_cuda and self.runtime.compile:  # as FramePack's blocks (streamed blocks run eager: their hooks would break the graphs)
            compile_blocks(model, match_eager_rounding=not fast)
        return self.use_transformer(model)

    def use_transformer(self, model: torch.nn.Module) -> HeliosComponents:
        self.transformer, self.blocks = model, TransformerPasses()
        return self

    @contextmanager
    def encoding(self) -> Iterator:
        if self.text_encoder is None:
            self.load_encoders()
        streamed = self.low_vram
        with on_device(self.text_encoder, self.runtime.device, self.runtime.offload_encoders and not streamed), self._visit(self.vae):
            yield self
        if streamed:  # UMT5 leaves host memory before the transformer loads
            self.text_encoder = None
            gc.collect()
            release_cached_memory(self.runtime.device)


def nothing_pending(components, video, plan, done):
    """Every chunk decodes on its own: a resumed job blends into nothing."""
    return None


HELIOS_PARTS = Parts(
    components=HeliosComponents,
    encode=encode,
    conditioning=conditioning,
    denoiser=make_velocity,
    sample=sample_chunk,
    decode_section=decode_chunk,
    resume_pending=nothing_pending,
    skip_encoding_noise=skip_encoding_noise,
    skip_section_noise=skip_section_noise,
)

HELIOS_PYRAMID_PARTS = replace(HELIOS_PARTS, sample=sample_pyramid, skip_section_noise=skip_pyramid_noise, section_steps=pyramid_steps)
HELIOS_ZERO_STAR_PARTS = replace(HELIOS_PYRAMID_PARTS, denoiser=partial(make_velocity, zero_star=True))
