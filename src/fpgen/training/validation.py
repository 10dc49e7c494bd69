"""Validation videos during training: the generation API on the model being trained, inputs from the cache."""

from __future__ import annotations

from pathlib import Path

import torch

from fpgen.acceleration import ModeChoice
from fpgen.buckets import load_image, resize_and_center_crop
from fpgen.devices import Placement
from fpgen.loading import Models
from fpgen.pipeline import JobInputs, Settings
from fpgen.tensorfile import load_tensors
from fpgen.training.cache import CachedStart, cached_prompt
from fpgen.training.config import TrainConfig


def validation_video(
    transformer: torch.nn.Module, vae: torch.nn.Module, start: CachedStart, config: TrainConfig, files, placement: Placement, path: Path
) -> Path:
    """Generate the held prompt and picture with the current weights (no text encoder or SigLIP is loaded)."""
    from fpgen.api import generate_video

    picture = resize_and_center_crop(load_image(config.validation_image), *start.size)
    image, _ = load_tensors(start.image)
    inputs = JobInputs(picture, image["start_latent"], image["image_embeds"], cached_prompt(load_tensors(start.text)[0]), None)
    mode = ModeChoice("exact", "the model being trained")
    models = Models(files.paths, files.spec.order, placement, mode, compile=False).provide(transformer=transformer, vae=vae)
    settings = Settings(
        prompt=config.validation_prompt, seconds=config.validation_seconds, steps=config.validation_steps, window=config.window,
        size=start.size, seed=config.seed,
    )  # fmt: skip
    return generate_video(models, picture, path, settings, overwrite=True, inputs=inputs).output
