"""Conditioning: the Llama prompt embedding, CLIP pooled text, SigLIP image tokens and the start latent.

Each encoder runs in its own dtype on its own device; the results are handed to the transformer as
``fpgen.transformer.Conditioning`` after a cast. The prompt template and its 95-token crop are
HunyuanVideo's; a tokenizer that splits the template differently would silently feed the wrong
tokens, so ``check_prompt_template`` refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fpgen.errors import ModelMissingError
from fpgen.plan import Section, SectionPlan

PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
PROMPT_CROP = 95  # tokens of the template before the prompt: BOS, the system part and the user header
MAX_PROMPT_TOKENS = 256
PROMPT_PAD_LENGTH = 512
CLIP_LENGTH = 77


@dataclass(frozen=True)
class PromptEmbedding:
    embeds: torch.Tensor  # (1, 512, D) Llama hidden_states[-3] of the prompt tokens, zero-padded
    mask: torch.Tensor  # (1, 512) bool
    pooled: torch.Tensor  # (1, P) CLIP-L pooler output
    tokens: int  # real prompt tokens used (template and padding excluded)
    truncated: bool  # the prompt was longer than MAX_PROMPT_TOKENS and was cut


def check_prompt_template(tokenizer) -> None:
    """Refuse a Llama tokenizer for which the template's prefix is not exactly PROMPT_CROP tokens."""
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    count = len(tokenizer(prefix)["input_ids"])
    if count != PROMPT_CROP:
        raise ModelMissingError(
            f"the Llama tokenizer splits HunyuanVideo's prompt template into {count} tokens instead of {PROMPT_CROP}",
            "this tokenizer would give wrong conditioning; use hunyuanvideo-community/HunyuanVideo's tokenizer loaded with AutoTokenizer",
        )


@torch.no_grad()
def encode_prompt(prompt: str, tokenizer, text_encoder, tokenizer_2, text_encoder_2) -> PromptEmbedding:
    """Encode a prompt as the official FramePack demo does (Llama hidden state -3, CLIP-L pooled)."""
    device = text_encoder.device
    llama = tokenizer(
        [PROMPT_TEMPLATE.format(prompt)],
        padding="max_length",
        max_length=MAX_PROMPT_TOKENS + PROMPT_CROP,
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    length = int(llama.attention_mask.sum())
    hidden = text_encoder(
        input_ids=llama.input_ids.to(device),
        attention_mask=llama.attention_mask.to(device),
        output_hidden_states=True,
    ).hidden_states[-3][:, PROMPT_CROP:length]
    tokens = hidden.shape[1]
    embeds = hidden.new_zeros((1, PROMPT_PAD_LENGTH, hidden.shape[2]))
    embeds[:, :tokens] = hidden
    mask = torch.zeros((1, PROMPT_PAD_LENGTH), dtype=torch.bool, device=hidden.device)
    mask[:, :tokens] = True
    untruncated = len(tokenizer(PROMPT_TEMPLATE.format(prompt))["input_ids"])

    clip = tokenizer_2([prompt], padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt")
    pooled = text_encoder_2(clip.input_ids.to(text_encoder_2.device), output_hidden_states=False).pooler_output
    return PromptEmbedding(embeds, mask, pooled, tokens, untruncated > MAX_PROMPT_TOKENS + PROMPT_CROP)


@torch.no_grad()
def encode_image(image: np.ndarray, feature_extractor, image_encoder) -> torch.Tensor:
    """SigLIP's last hidden state of the bucketed uint8 picture, through the PIL preprocessing."""
    pixels = feature_extractor.preprocess(images=image, return_tensors="pt")["pixel_values"]
    pixels = pixels.to(device=image_encoder.device, dtype=image_encoder.dtype)
    return image_encoder(pixel_values=pixels).last_hidden_state


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """VAE posterior mean times the scaling factor, in float32 on the CPU (deterministic, unlike a sample)."""
    posterior = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return (posterior.mean * vae.config.scaling_factor).float().cpu()


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
    keyframes: dict[int, torch.Tensor] = field(default_factory=dict)  # --keyframe latents by section boundary (from the new part's start)
    prefix: torch.Tensor | None = None  # --extend: latents of the given video's tail, time order
    lead: torch.Tensor | None = None  # --extend: its last 4*window-3 frames, (1, 3, T, H, W) in [-1, 1]
    noise_state: torch.Tensor | None = None  # the job generator's state after encoding drew from it (families whose encoders draw noise)

    def embedding(self, text: str) -> PromptEmbedding:
        return self.prompts[text] if self.prompts else self.positive

    def arrival(self, plan: SectionPlan, section: Section) -> torch.Tensor | None:
        """The latent a section arrives at: the keyframe at its end boundary, or the end picture's for the video's last section."""
        boundary = section.slot - plan.offset + 1
        return self.end_latent if boundary == plan.count else self.keyframes.get(boundary)


def blend_embeddings(first: PromptEmbedding, second: PromptEmbedding, weight: float) -> PromptEmbedding:
    """``weight`` of ``second`` and the rest of ``first`` (both zero-padded to the same length; the mask covers either's tokens)."""
    if weight == 1.0:
        return second
    mix = lambda a, b: torch.lerp(a.float(), b.float(), weight).to(a.dtype)  # noqa: E731
    return PromptEmbedding(mix(first.embeds, second.embeds), first.mask | second.mask, mix(first.pooled, second.pooled), max(first.tokens, second.tokens), first.truncated or second.truncated)
