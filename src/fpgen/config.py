"""A job, worked out once: ``JobSpec`` (what the user asked for, ``fpgen.spec``) -> ``resolve`` -> ``Job`` (what will run).

``resolve`` does every check and decision before anything heavy:
pictures decoded (once), an extended video read (once), the model's files found, LoRAs read, the
runtime decided (once, with its reason), every path the job writes checked against the others and
against what is on disk, the settings completed with the family's defaults, the section plan and
each section's prompt. Below it nothing re-validates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fpgen.buckets import load_picture, pick_bucket
from fpgen.errors import InputError
from fpgen.extend import VideoTail, read_tail
from fpgen.families import Family
from fpgen.geometry import section_seconds, window_tokens
from fpgen.hub import ModelFiles, find_model
from fpgen.jobfolder import JobFolder, SavedJob, check_job_paths, find_job, job_dir
from fpgen.lora import Lora, LoraChoice, load_loras, lora_notes
from fpgen.metadata import sidecar_is_ours, sidecar_path
from fpgen.output import partial_path
from fpgen.plan import SectionPlan, plan_sections, snap_keyframes
from fpgen.prompts import describe, parse_prompts, section_prompts
from fpgen.registry import resolve_model
from fpgen.retime import NATIVE, FrameRate, output_rate
from fpgen.runtime import RuntimePlan, plan_runtime
from fpgen.spec import JobSpec, Settings, check_new_file
from fpgen.stepcache import DEFAULT_THRESHOLDS, StepCachePlan, calibration_key, read_calibration

MIN_INTERPOLATED = 32  # ffmpeg's minterpolate makes no frame from a smaller picture (its 16-pixel blocks need neighbours)


@dataclass(frozen=True)
class Pictures:
    """A job's pictures, decoded once: the start picture, an end picture, an extended video's last frames."""

    start: np.ndarray | None  # (H, W, 3) uint8, any size; None for text-to-video
    size: tuple[int, int]  # the video's (height, width)
    end: np.ndarray | None = None
    tail: VideoTail | None = None
    keyframes: tuple[tuple[int, np.ndarray], ...] = ()  # (section boundary counted from the new part's start, picture)
    notes: tuple[str, ...] = ()  # what reading them lost or changed (the CLI prints these)


@dataclass(frozen=True)
class Job:
    """A job ready to run: nothing below this re-checks it."""

    spec: JobSpec  # settings complete (the family's defaults filled in)
    model: ModelFiles
    runtime: RuntimePlan
    loras: tuple[tuple[Lora, LoraChoice], ...]
    plan: SectionPlan  # the sections and each one's prompt
    pictures: Pictures | None  # None when the job continues from its folder
    notes: tuple[str, ...] = ()  # warnings for the user (unused timed prompts, ...)
    saved: SavedJob | None = None  # the unfinished job in its folder, to continue
    overwrite: bool = False
    preview: bool = False
    step_cache: StepCachePlan = StepCachePlan()
    rate: FrameRate = NATIVE  # the output's frame rate (--fps, --interpolate)
    color_match: bool = False  # --color-match, decided (the family's default for the length where not given)

    @property
    def settings(self) -> Settings:
        return self.spec.settings

    @property
    def folder(self) -> JobFolder:
        return JobFolder(job_dir(self.spec.output))

    def describe(self) -> list[str]:
        """What the CLI prints before the job runs."""
        lines = [f"  prompt {line}" for line in describe(list(self.plan.prompts), self.model.spec.family.section_seconds(self.plan.window))] if len(set(self.plan.prompts)) > 1 else []
        new_frames = self.model.spec.family.frame_count(replace(self.plan, offset=0))
        lines += [f"  keyframe at {boundary * section_seconds(self.plan.window):.2f}s (the end of section {boundary})" for boundary, _ in (self.pictures.keyframes if self.pictures else ())]
        look = [f"output at {self.rate.describe()}"] if self.rate.output != self.rate.native else []
        look += ["colours matched to the start picture (--color-match)"] if self.color_match else []
        return lines + [f"{self.plan.count} section(s), {new_frames} new frames, {self.plan.order} order -> {self.spec.output}", *look]


def resolve(spec: JobSpec, overwrite: bool = False, preview: bool = False, loaded=None, picture: np.ndarray | None = None) -> Job:
    """Check and decide everything about ``spec`` before any model loads.

    ``loaded`` (``fpgen.loading.Components``) supplies the model, runtime and LoRAs of models
    already loaded; ``picture`` a start picture given as an array instead of ``spec.image``.
    """
    model = loaded.files.spec if loaded is not None else resolve_model(spec.model, spec.revision)
    if spec.image is None and spec.extend is None and picture is None and model.example is not None:
        spec = replace(spec, image=model.example)  # a shipped model's own picture: `fpgen generate --model demo` runs as it is
    spec, fast_notes = fast_without_step_cache(spec, model.family)
    check_family_inputs(spec, model.family, picture is not None)
    files = loaded.files if loaded is not None else find_model(spec.model, spec.model_dir, revision=spec.revision)
    family = files.spec.family
    settings = spec.settings.complete(family.defaults)
    local = files.spec.transformer.local  # a local folder is recorded absolute: the job stays valid from any directory
    recorded = str(local.absolute()) if local is not None and not files.spec.shipped else spec.model  # a shipped model by its name
    spec = replace(spec, settings=settings, model=recorded)
    folder = JobFolder(job_dir(spec.output))
    if folder.exists() and not overwrite and folder.options() == spec.options():
        return resolve_resume(folder.path, preview, loaded)
    check_outputs(spec, overwrite)
    loras = tuple(loaded.loras) if loaded is not None else tuple(load_loras((LoraChoice.parse(item) for item in spec.lora), family.lora_kind))
    runtime = loaded.runtime if loaded is not None else plan_runtime(spec.runtime_request, files.paths["transformer"], loras=bool(loras), picks_attention=family.picks_attention)
    pictures = read_pictures(spec, family, picture)
    offset = family.sections.tail.whole(pictures.tail.tail.shape[0], settings.window) if pictures.tail is not None else 0
    prompts, notes = section_prompts(parse_prompts(settings.prompt), family.section_count(settings.seconds, settings.window), family.section_seconds(settings.window))
    plan = plan_sections(len(prompts), settings.window, family.sections.name, offset, tuple(prompts), settings.prompt_blend)
    step_cache = plan_step_cache(spec, files, pictures.size)
    return Job(spec, files, runtime, loras, plan, pictures, (*fast_notes, *lora_notes(loras), *pictures.notes, *notes), None, overwrite, preview, step_cache, *decide_output(spec, family, pictures.start is not None, pictures.size))


def decide_output(spec: JobSpec, family: Family, has_picture: bool, size: tuple[int, int]) -> tuple[FrameRate, bool]:
    """The output's frame rate and whether colours are matched (the family's default for the video's length where not asked)."""
    color_match = spec.color_match if spec.color_match is not None else family.color_match_after is not None and spec.settings.seconds > family.color_match_after
    if color_match and not has_picture:
        raise InputError("--color-match matches colours to the start picture, and this job has none", "pass a start picture, or drop --color-match")
    rate = output_rate(family.fps, spec.fps, spec.interpolate)
    if rate.interpolates and min(size) < MIN_INTERPOLATED:
        raise InputError(f"--fps {rate.output} is motion-interpolated, which needs frames of at least {MIN_INTERPOLATED}x{MIN_INTERPOLATED} pixels", f"use a larger --size, or an --fps that divides {family.fps}")
    return rate, color_match


def fast_without_step_cache(spec: JobSpec, family: Family) -> tuple[JobSpec, tuple[str, ...]]:
    """``--fast`` brings TeaCache; a family without step caches (Helios) takes the rest of fast mode without it, and a note."""
    if not (spec.fast and spec.settings.step_cache == "teacache" and any(option == "step_cache" for option, _ in family.refuses)):
        return spec, ()
    note = f"{spec.model} has no step cache: --fast runs its FP8 matmuls and compiled VAE decoder without TeaCache"
    return replace(spec, settings=replace(spec.settings, step_cache="none", step_cache_threshold=None)), (note,)


def check_family_inputs(spec: JobSpec, family: Family, has_picture: bool) -> None:
    """Refuse, before any work, inputs the model family has no use for."""
    if spec.image is None and spec.extend is None and not has_picture and not family.text_to_video:
        raise InputError(f"missing IMAGE: {spec.model} makes videos from a start picture", "pass one (or --extend VIDEO, --from VIDEO, --resume JOB, --jobs FILE)")
    options = spec.options()
    for option, reason in family.refuses:
        names = option.split("+")  # "a+b": the two together
        if all(options[name] and options[name] != "none" for name in names):
            flags = ["IMAGE" if name == "image" else "--" + name.replace("_", "-") for name in names]
            raise InputError(f"{' with '.join(flags)}: {spec.model} {reason}", f"drop {' or '.join(flags)}")


def step_cache_key(spec: JobSpec, files: ModelFiles, size: tuple[int, int]) -> str:
    """The key of MagCache's ratios for a job (settings complete): its transformer, LoRAs and step schedule at ``size``."""
    settings = spec.settings
    sigmas = files.spec.family.schedule(settings.steps, window_tokens(settings.window, *size))
    return calibration_key(files.paths["transformer"], spec.lora, sigmas)


def plan_step_cache(spec: JobSpec, files: ModelFiles, size: tuple[int, int]) -> StepCachePlan:
    """The job's step cache with its threshold; MagCache's calibrated ratios read now (a one-line error when missing)."""
    kind, threshold = spec.settings.step_cache, spec.settings.step_cache_threshold
    if kind == "none":
        return StepCachePlan()
    threshold = DEFAULT_THRESHOLDS[kind] if threshold is None else threshold
    if kind != "magcache":
        return StepCachePlan(kind, threshold)
    loras = "".join(f" --lora {item}" for item in spec.lora)
    how_to = f"fpgen calibrate PICTURE -m {spec.model} --steps {spec.settings.steps} --window {spec.settings.window} --size {size[0]}x{size[1]}{loras}"
    return StepCachePlan(kind, threshold, read_calibration(step_cache_key(spec, files, size), spec.settings.steps, how_to))


def read_pictures(spec: JobSpec, family: Family, picture: np.ndarray | None = None) -> Pictures:
    """Every picture and video the job reads, decoded once, and the video's size.

    Text-to-video (no picture, no video) has no start picture: ``start`` is None and the size is
    ``--size`` or the family's default.
    """
    settings, sections = spec.settings, family.sections
    tail = read_tail(spec.extend, sections.tail, settings.window, settings.size, settings.resolution) if spec.extend is not None else None
    read = {name: load_picture(path) for name, path in (("start", spec.image), ("end", spec.end_image)) if path is not None}
    start = read["start"].pixels if "start" in read else picture if picture is not None else tail.tail[sections.tail_frame] if tail is not None else None
    end = read["end"].pixels if "end" in read else start if spec.loop else None  # a loop ends where it starts
    size = tuple(tail.tail.shape[1:3]) if tail is not None else settings.size or family.defaults.size or pick_bucket(start.shape[0], start.shape[1], settings.resolution)
    keyframes, notes = read_keyframes(spec, family, end is not None)
    if keyframes and keyframes[-1][0] == family.section_count(settings.seconds, settings.window):  # a keyframe at the video's end is its end picture
        end, keyframes = keyframes[-1][1], keyframes[:-1]
    notes += [note for picture in read.values() for note in picture.notes]
    if start is not None and (start.shape[0] < size[0] or start.shape[1] < size[1]):
        notes.append(f"the start picture ({start.shape[1]}x{start.shape[0]}) is upscaled to {size[1]}x{size[0]}; a larger picture gives a sharper video")
    return Pictures(start, size, end, tail, keyframes=tuple(keyframes), notes=tuple(notes))


def read_keyframes(spec: JobSpec, family: Family, has_end: bool) -> tuple[list[tuple[int, np.ndarray]], list[str]]:
    """The ``--keyframe`` pictures decoded, each at the section boundary its time snaps to (in time order), and notes."""
    settings, given = spec.settings, spec.keyframes
    boundaries, notes = snap_keyframes([seconds for seconds, _ in given], family.section_count(settings.seconds, settings.window), settings.window, has_end)
    pictures = [load_picture(path) for _, path in given]
    notes += [note for picture in pictures for note in picture.notes]
    return sorted(zip(boundaries, (picture.pixels for picture in pictures)), key=lambda item: item[0]), notes


def resolve_resume(path: Path, preview: bool = False, loaded=None) -> Job:
    """The unfinished job in ``path`` (its folder, or the output it was started with), checked before any model loads."""
    with find_job(Path(path)).claim() as folder:  # held while the folder is checked, repaired and read
        found = folder.repair()
        saved = folder.load()
    spec = JobSpec.from_options(saved.options)
    files = loaded.files if loaded is not None else find_model(spec.model, spec.model_dir, revision=spec.revision)
    family = files.spec.family
    if saved.order != family.sections.name:
        raise InputError(f"the job was made with the {saved.order} section order, these models use {family.sections.name}", f"load the job's model ({spec.model})")
    spec = replace(spec, settings=spec.settings.complete(family.defaults))
    if spec.output.exists() or not sidecar_is_ours(spec.output):
        taken = spec.output if spec.output.exists() else sidecar_path(spec.output)
        raise InputError(f"{taken} exists, so the job in {folder.path} cannot finish there", "move or rename that file, then run the same --resume again")
    check_output_file(spec.output, False)
    loras = tuple(loaded.loras) if loaded is not None else tuple(load_loras((LoraChoice.parse(item) for item in spec.lora), family.lora_kind))
    runtime = loaded.runtime if loaded is not None else plan_runtime(spec.runtime_request, files.paths["transformer"], loras=bool(loras), picks_attention=family.picks_attention)
    settings = spec.settings
    prompts, notes = section_prompts(parse_prompts(settings.prompt), family.section_count(settings.seconds, settings.window), family.section_seconds(settings.window))
    prefix = saved.inputs.prefix
    offset = (prefix.shape[2] - 1) // settings.window if prefix is not None else 0
    plan = plan_sections(len(prompts), settings.window, family.sections.name, offset, tuple(prompts), settings.prompt_blend)
    damage = (f"{found.damage}: it and the later sections will be made again",) if found.damage else ()
    step_cache = plan_step_cache(spec, files, saved.inputs.image.shape[:2])
    return Job(spec, files, runtime, loras, plan, None, (*lora_notes(loras), *damage, *notes), saved, False, preview, step_cache, *decide_output(spec, family, True, saved.inputs.image.shape[:2]))


def check_output_file(output: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that is not an MP4, exists already, or cannot be written."""
    check_new_file(output, ".mp4", "video.mp4", overwrite)
    if not overwrite and not sidecar_is_ours(output):
        raise InputError(f"{sidecar_path(output)} exists and is not fpgen's metadata", "choose another -o/--output, or pass --overwrite")


def check_outputs(spec: JobSpec, overwrite: bool) -> None:
    """Every path the job writes, checked against what is on disk and against each other."""
    check_output_file(spec.output, overwrite)
    check_job_paths(spec.output, overwrite)
    folder = JobFolder(job_dir(spec.output))
    if folder.path.exists():
        with folder.claim(overwrite):  # a run holding this output is refused now, not once the models are loaded
            pass
    if folder.exists() and not overwrite:
        raise InputError(f"{folder.path} holds an unfinished job for this output with other settings", f"continue it with: fpgen generate --resume {folder.path}, or pass --overwrite to start over")
    if spec.save_latents is None:
        return
    latents = spec.save_latents
    if latents.suffix != ".safetensors":
        raise InputError(f"--save-latents {latents} must end in .safetensors", "e.g. --save-latents video.safetensors")
    taken = {spec.output: "the output", sidecar_path(spec.output): "the output's metadata", partial_path(spec.output): "the partial video"}
    if latents in taken or folder.path in latents.parents:
        raise InputError(f"--save-latents {latents} is {taken.get(latents, 'inside the job folder')}", "choose another --save-latents path")
    if latents.exists() and not overwrite:
        raise InputError(f"{latents} already exists", "choose another --save-latents path, or pass --overwrite")
