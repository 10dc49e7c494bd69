"""The Python API: load a model, then make videos with it.

    import fpgen
    models = fpgen.load_models("framepack")
    video = fpgen.generate_video(models, "start.png", "out.mp4", fpgen.Settings(prompt="a cat walks", seconds=5))
    fpgen.api.resume_video(models, "out.mp4")  # after an interruption: finish the job in out.mp4.job/

Each call goes the CLI's way: ``fpgen.config.resolve`` works the job out once, ``fpgen.run.run_job``
runs it on the loaded ``Components``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fpgen.config import resolve, resolve_resume
from fpgen.events import Listener
from fpgen.hub import ModelFiles, find_model
from fpgen.loading import Components
from fpgen.lora import Lora, LoraChoice, load_loras
from fpgen.run import VideoResult, run_job
from fpgen.runtime import plan_runtime
from fpgen.spec import JobSpec, RuntimeRequest, Settings

__all__ = ["Components", "JobSpec", "ModelFiles", "Settings", "VideoResult", "find_model", "generate_video", "load_models", "resume_video", "run_job"]


def load_models(
    model: str | ModelFiles = "framepack",
    model_dir: Path | None = None,
    runtime: RuntimeRequest | None = None,
    loras: Sequence[LoraChoice | tuple[Lora, LoraChoice]] = (),
    **request,
) -> Components:
    """Load every model a job needs; ``model`` is a name (see ``find_model``) or files already found.

    The runtime (device, dtype, mode) follows ``runtime`` or the same fields as keywords
    (``device="cpu"``, ``fast=True``, ``vram_budget=8``, ``compile=False``...); ``models.runtime``
    says what was picked and why. ``loras`` are merged into the transformer's weights as it loads.
    """
    files = model if isinstance(model, ModelFiles) else find_model(model, model_dir)
    adapters = load_loras(loras, files.spec.family.lora_kind)
    return Components(files, plan_runtime(runtime or RuntimeRequest(**request), files.paths["transformer"], loras=bool(adapters), picks_attention=files.spec.family.picks_attention), adapters).load()


def generate_video(
    models: Components,
    image: str | Path | np.ndarray | None,
    output: str | Path,
    settings: Settings,
    on_event: Listener | None = None,
    **options,
) -> VideoResult:
    """Generate a video from ``image`` (a path or uint8 RGB array) into ``output`` (an MP4 that exists only once it is complete).

    ``options`` are further ``fpgen generate`` options: ``end_image``, ``keyframe`` (``TIME:IMAGE`` strings), ``extend`` (then ``image``
    may be None), ``crf``, ``save_latents``, and ``overwrite`` and ``preview``. The job is kept in
    ``<output>.job/`` until the output is complete; ``resume_video`` finishes an interrupted one.
    """
    overwrite, preview = options.pop("overwrite", False), options.pop("preview", False)
    named = Path(image) if isinstance(image, (str, Path)) else None
    spec = JobSpec.from_options({**options, "output": output, "image": named, "model": models.files.spec.name})
    spec = JobSpec(**{**spec.__dict__, "settings": settings})
    job = resolve(spec, overwrite, preview, loaded=models, picture=None if named else image)
    return run_job(models, job, on_event)


def resume_video(models: Components, job: str | Path, on_event: Listener | None = None, preview: bool = False) -> VideoResult:
    """Finish an interrupted job (its folder, or the output it was started with) with its saved settings."""
    return run_job(models, resolve_resume(Path(job), preview, loaded=models), on_event)
