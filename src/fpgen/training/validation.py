"""Validation videos during training: the engine on the model being trained, inputs from the cache."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fpgen.buckets import load_image, resize_and_center_crop
from fpgen.conditioning import JobInputs
from fpgen.engine import generate_frames
from fpgen.geometry import section_count
from fpgen.loading import Components
from fpgen.output import SegmentedMp4
from fpgen.plan import plan_sections
from fpgen.spec import Settings
from fpgen.tensorfile import load_tensors
from fpgen.training.cache import CachedStart, cached_prompt
from fpgen.training.config import TrainConfig


def validation_video(components: Components, start: CachedStart, config: TrainConfig, path: Path) -> Path:
    """Generate the held prompt and picture with the current weights (no text encoder or SigLIP is loaded)."""
    picture = resize_and_center_crop(load_image(config.validation_image), *start.size)
    image, _ = load_tensors(start.image)
    inputs = JobInputs(picture, image["start_latent"], image["image_embeds"], cached_prompt(load_tensors(start.text)[0]), None)
    settings = Settings(prompt=config.validation_prompt, seconds=config.validation_seconds, steps=config.validation_steps, window=config.window, seed=config.seed)
    settings = settings.complete(components.family.defaults)
    count = section_count(settings.seconds, settings.window)
    plan = plan_sections(count, settings.window, components.family.sections.name, prompts=(settings.prompt,) * count)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as segments:
        sink = SegmentedMp4(Path(segments))
        generate_frames(components, inputs, plan, settings, sink)
        return sink.finish(path)
