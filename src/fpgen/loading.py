"""Load FramePack's models (diffusers transformer and VAE, transformers encoders) from local folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fpgen.conditioning import check_prompt_template
from fpgen.devices import Placement
from fpgen.plan import Order
from fpgen.transformer import use_float32_head


@dataclass
class Models:
    """Every model a FramePack job needs, placed and in eval mode."""

    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module
    tokenizer: object
    tokenizer_2: object
    image_encoder: torch.nn.Module
    feature_extractor: object
    order: Order
    placement: Placement


def siglip_processor_class():
    """The PIL implementation of SigLIP's preprocessing, which the official results were made with."""
    import transformers

    return getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor


def load_tokenizers(paths: dict[str, Path]):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    check_prompt_template(tokenizer)
    return tokenizer, AutoTokenizer.from_pretrained(paths["tokenizer_2"])


def load_transformer(path: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(path, torch_dtype=dtype)
    use_float32_head(model)
    return model.to(device).eval().requires_grad_(False)


def load_vae(path: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo.from_pretrained(path, torch_dtype=dtype).to(device).eval().requires_grad_(False)


def load_models(paths: dict[str, Path], order: Order, placement: Placement) -> Models:
    from transformers import CLIPTextModel, LlamaModel, SiglipVisionModel

    device, dtype = placement.device, placement.encoder_dtype
    tokenizer, tokenizer_2 = load_tokenizers(paths)

    def encoder(cls, name):
        return cls.from_pretrained(paths[name], dtype=dtype).to(device).eval().requires_grad_(False)

    return Models(
        transformer=load_transformer(paths["transformer"], placement.transformer_dtype, device),
        vae=load_vae(paths["vae"], dtype, device),
        text_encoder=encoder(LlamaModel, "text_encoder"),
        text_encoder_2=encoder(CLIPTextModel, "text_encoder_2"),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        image_encoder=encoder(SiglipVisionModel, "image_encoder"),
        feature_extractor=siglip_processor_class().from_pretrained(paths["feature_extractor"]),
        order=order,
        placement=placement,
    )
