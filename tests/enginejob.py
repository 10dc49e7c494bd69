"""Tests drive the engine the way ``fpgen.run`` does: resolve a job, encode it, generate its frames."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fpgen.config import resolve
from fpgen.spec import JobSpec, Settings
from fpgen.engine import generate_frames
from fpgen.framepack import encode


def prepare(models, image: Path | np.ndarray, settings: Settings, end: np.ndarray | None = None, **options):
    """``(job, inputs)`` for a job on the loaded ``models``; ``end`` an end picture, ``options`` further JobSpec fields."""
    named = Path(image) if isinstance(image, (str, Path)) else None
    spec = JobSpec(Path("unused.mp4").absolute(), settings, image=named, model=models.files.spec.name, **options)
    job = resolve(spec, overwrite=True, loaded=models, picture=None if named else image)
    job = replace(job, pictures=replace(job.pictures, end=end))
    negative = job.settings.negative_prompt if job.settings.cfg != 1.0 else None
    return job, encode(models, job.pictures, job.plan.prompts, negative, job.settings.window)


def make_frames(models, image, settings: Settings, sink=lambda frames, first: None, on_event=None, **options):
    """The engine's result for a job, frames handed to ``sink``."""
    job, inputs = prepare(models, image, settings, **options)
    return generate_frames(models, inputs, job.plan, job.settings, sink, on_event, step_cache=job.step_cache)
