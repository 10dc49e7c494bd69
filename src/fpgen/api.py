"""The Python API the CLI calls: load a model, then make videos with it.

    import fpgen
    models = fpgen.load_models("framepack")
    video = fpgen.generate_video(models, "start.png", "out.mp4", fpgen.Settings(prompt="a cat walks", seconds=5))
    fpgen.api.resume_video(models, "out.mp4")  # after an interruption: finish the job in out.mp4.job/
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from fpgen.buckets import load_image
from fpgen.devices import choose_placement
from fpgen.errors import InputError
from fpgen.extend import check_extendable, head_frames, read_tail
from fpgen.hub import locate_model
from fpgen.acceleration import choose_mode
from fpgen.jobfolder import JobFolder, find_job, job_dir
from fpgen.jobs import JobSpec, stopped_error
from fpgen.loading import Models, load_models as load_from_paths, transformer_parameter_bytes
from fpgen.lora import Lora, LoraChoice, load_loras
from fpgen.metadata import describe_video, mp4_tags, sidecar_is_ours, sidecar_path, write_sidecar
from fpgen.output import SegmentedMp4, partial_path
from fpgen.pipeline import Event, JobInputs, Result, Settings, generate_frames, job_plan, prepare_inputs
from fpgen.plan import FPS, Order
from fpgen.registry import ModelSpec, resolve_model


@dataclass(frozen=True)
class ModelFiles:
    spec: ModelSpec
    paths: dict[str, Path]


def find_model(model: str = "framepack", model_dir: Path | None = None, order: Order | None = None, revision: str | None = None) -> ModelFiles:
    """Resolve a model name and find its files (HF cache, a ``--local-dir`` folder, or a local transformer folder).

    Never touches the network; ``revision`` picks the transformer's branch, tag or commit in the HF cache.
    """
    spec = resolve_model(model, order, revision)
    return ModelFiles(spec, locate_model(spec, Path(model_dir) if model_dir else None))


def load_models(
    model: str | ModelFiles = "framepack",
    model_dir: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    order: Order | None = None,
    fast: bool = False,
    low_vram: bool = False,
    vram_budget: float | None = None,
    compile: bool = True,
    loras: Sequence[LoraChoice | tuple[Lora, LoraChoice]] = (),
) -> Models:
    """Load every model a job needs; ``model`` is a name (see ``find_model``) or files already found.

    The mode (exact, fast, low-vram) follows ``fast``/``low_vram`` and the GPU's memory (or
    ``vram_budget`` in GiB); ``models.mode`` says which was picked and why. ``compile=False`` skips
    torch.compile (for machines without Triton, or to start faster). ``loras`` (``LoraChoice``, or
    already read by ``fpgen.lora.load_loras``) are merged into the transformer's weights as it
    loads, each at its scale; their files are read before any model loads.
    """
    placement = choose_placement(device, dtype)
    files = model if isinstance(model, ModelFiles) else find_model(model, model_dir, order)
    adapters = load_loras(loras)
    transformer_bytes = transformer_parameter_bytes(files.paths["transformer"], placement.transformer_dtype) if placement.is_cuda else 0
    mode = choose_mode(placement, transformer_bytes, fast, low_vram, vram_budget)
    return load_from_paths(files.paths, files.spec.order, placement, mode, compile, vram_budget, adapters)


@dataclass(frozen=True)
class VideoResult:
    output: Path
    frames: int
    height: int
    width: int
    seconds: float
    elapsed: float
    result: Result
    resumed_sections: int = 0  # sections that were already done when this run started


def default_output(seed: int, folder: Path = Path("outputs")) -> Path:
    """A new file under ./outputs named from the local time and the seed."""
    stamp = time.strftime("%y%m%d_%H%M%S")
    path, n = folder / f"{stamp}_{seed}.mp4", 1
    while path.exists():
        path, n = folder / f"{stamp}_{seed}_{n}.mp4", n + 1
    return path


def check_output(output: Path, overwrite: bool, crf: int) -> None:
    """Refuse, before any work, an output that is not an MP4, exists already, or a CRF libx264 does not take."""
    if not 0 <= crf <= 51:
        raise InputError(f"--crf must be between 0 and 51 (got {crf})", "16 is the official default; lower is better quality")
    if output.suffix.lower() != ".mp4":
        raise InputError(f"output {output} must end in .mp4", "e.g. -o video.mp4")
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists", "choose another -o/--output, or pass --overwrite")
    if not overwrite and not sidecar_is_ours(output):
        raise InputError(f"{sidecar_path(output)} exists and is not fpgen's metadata", "choose another -o/--output, or pass --overwrite")


def check_job(spec: JobSpec, overwrite: bool = False) -> ModelFiles:
    """Everything about a job that can be checked before any model loads; returns the model's files."""
    if spec.image is None and spec.extend is None:
        raise InputError("no start picture", "pass an IMAGE, or --extend VIDEO")
    for picture in (spec.image, spec.end_image):
        if picture is not None:
            load_image(picture)
    if spec.extend is not None:
        check_extendable(spec.extend, spec.settings.window)
    for item in spec.lora:
        if not LoraChoice.parse(item).path.is_file():
            raise InputError(f"LoRA not found: {LoraChoice.parse(item).path}", "check the --lora path")
    check_output(spec.output, overwrite, spec.crf)
    if spec.save_latents is not None and spec.save_latents.exists() and not overwrite:
        raise InputError(f"{spec.save_latents} already exists", "choose another --save-latents path, or pass --overwrite")
    folder = JobFolder(job_dir(spec.output))
    if folder.exists() and not overwrite and folder.options() != spec.options():
        raise InputError(f"{folder.path} holds an unfinished job for this output with other settings", f"continue it with: fpgen generate --resume {folder.path}, or pass --overwrite to start over")
    placement = choose_placement(spec.device, spec.dtype)
    if not placement.is_cuda:
        choose_mode(placement, 0, spec.fast, spec.low_vram, spec.vram_budget)  # refuses GPU-only options
    return find_model(spec.model, spec.model_dir, revision=spec.revision)


def read_job_loras(spec: JobSpec) -> list[tuple[Lora, LoraChoice]]:
    """Read ``spec``'s LoRA files before any model loads, so a bad one fails fast."""
    return load_loras(LoraChoice.parse(item) for item in spec.lora)


def load_job_models(spec: JobSpec, files: ModelFiles | None = None, loras: list[tuple[Lora, LoraChoice]] | None = None) -> Models:
    """The models ``spec`` needs (``loras`` as ``read_job_loras`` read them, or read here)."""
    loras = read_job_loras(spec) if loras is None else loras
    files = files or find_model(spec.model, spec.model_dir, revision=spec.revision)
    return load_models(
        files, device=spec.device, dtype=spec.dtype, fast=spec.fast, low_vram=spec.low_vram, vram_budget=spec.vram_budget, compile=spec.compile, loras=loras
    )


def generate_video(
    models: Models,
    image: str | Path | np.ndarray | None,
    output: str | Path,
    settings: Settings,
    crf: int = 16,
    save_latents: str | Path | None = None,
    overwrite: bool = False,
    on_event: Callable[[Event], None] | None = None,
    inputs: JobInputs | None = None,
    *,
    end_image: str | Path | None = None,
    extend: str | Path | None = None,
    preview: bool = False,
    options: dict | None = None,
) -> VideoResult:
    """Generate a video from ``image`` (a path or uint8 RGB array) into ``output`` (an MP4 that exists only once it is complete).

    ``end_image`` is the picture to arrive at; ``extend`` a video to continue (then ``image`` is
    optional, see ``fpgen.extend``). The job is kept in ``<output>.job/`` until the output is
    complete, so an interrupted run can be continued with ``resume_video``; with ``preview`` the
    MP4 of what is made so far is kept next to the output after every section. ``options`` is the
    job as ``fpgen generate`` options, recorded in the video's metadata.
    """
    output = Path(output)
    check_output(output, overwrite, crf)
    settings.validate()
    folder = JobFolder(job_dir(output))
    if folder.exists() and not overwrite:
        raise InputError(f"{folder.path} holds an unfinished job for this output", f"continue it with: fpgen generate --resume {folder.path}, or pass --overwrite to start over")
    picture = load_image(image) if isinstance(image, (str, Path)) else image
    end = load_image(end_image) if end_image is not None else None
    tail = read_tail(Path(extend), models.order, settings.window, settings.size, settings.resolution) if extend is not None else None
    if picture is None and tail is None and inputs is None:
        raise InputError("no start picture", "pass an IMAGE, or --extend VIDEO")
    if picture is None and tail is not None:
        picture = tail.first if models.order == "forward" else tail.last
    inputs = inputs or prepare_inputs(models, picture, settings, end, tail.tail if tail is not None else None)
    if options is None:
        named = image if isinstance(image, (str, Path)) else None
        options = JobSpec(output, settings, named, end_image, extend, crf=crf, save_latents=save_latents).options()

    folder.remove()
    output.parent.mkdir(parents=True, exist_ok=True)
    frame_offset = tail.frame_offset if tail is not None else 0
    sink = SegmentedMp4(folder.segments_dir, crf, partial_path(output) if preview else None, frame_offset)
    if tail is not None:  # before the job exists: a resumed job always has the given video's frames
        sink.write(head_frames(tail, settings.window), 0)
    folder.create(options, inputs, models.order, frame_offset)
    return _complete(models, folder, options, settings, inputs, sink, output, save_latents, on_event, [])


def resume_video(models: Models, job: str | Path, on_event: Callable[[Event], None] | None = None, preview: bool = False) -> VideoResult:
    """Finish an interrupted job (its folder, or the output it was started with) with its saved settings.

    The result is the video, latents and ``save_latents`` file an uninterrupted run would have made.
    """
    folder = find_job(Path(job))
    saved = folder.load()
    spec = JobSpec.from_options(saved.options)
    if saved.order != models.order:
        raise InputError(f"the job was made with the {saved.order} section order, these models use {models.order}", f"load the job's model ({spec.model})")
    check_output(spec.output, False, spec.crf)
    sink = SegmentedMp4(folder.segments_dir, spec.crf, partial_path(spec.output) if preview else None, saved.frame_offset)
    return _complete(models, folder, saved.options, spec.settings, saved.inputs, sink, spec.output, spec.save_latents, on_event, saved.finished)


def run_job(models: Models, spec: JobSpec, on_event: Callable[[Event], None] | None = None, overwrite: bool = False, preview: bool = False) -> VideoResult:
    """Make the video ``spec`` describes; an unfinished job with exactly these settings is continued instead of restarted."""
    folder = JobFolder(job_dir(spec.output))
    if folder.exists() and not overwrite and folder.options() == spec.options():
        return resume_video(models, folder.path, on_event, preview)
    return generate_video(
        models, spec.image, spec.output, spec.settings, spec.crf, spec.save_latents, overwrite, on_event,
        end_image=spec.end_image, extend=spec.extend, preview=preview, options=spec.options(),
    )  # fmt: skip


def _complete(models, folder: JobFolder, options: dict, settings: Settings, inputs: JobInputs, sink: SegmentedMp4, output: Path, save_latents, on_event, finished) -> VideoResult:
    """Run (or continue) the sections, then join, describe and clean up; a stop leaves a partial video and the folder."""
    started = time.perf_counter()
    count = job_plan(settings, models.order, inputs).count

    def listen(event: Event) -> None:
        folder.record(event)
        if on_event is not None:
            on_event(event)

    try:
        result = generate_frames(models, None, settings, sink, listen, inputs, finished)
    except BaseException as error:
        explained = stopped_error(error, folder, count, sink.write_partial(partial_path(output)))
        if explained is None:
            raise
        raise explained from error
    frames = sink.frame_offset + result.num_frames
    description = describe_video(options, models.order, frames, result.height, result.width, result.plan.count, result.transformer_passes, time.perf_counter() - started)
    if save_latents is not None:
        save_file({"latents": result.latents.float().contiguous()}, str(save_latents))
    sink.finish(output, mp4_tags(description))
    write_sidecar(output, description)
    folder.remove()
    partial_path(output).unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    return VideoResult(output, frames, result.height, result.width, frames / FPS, elapsed, result, len(finished))
