"""A job, worked out once: ``JobSpec`` (what the user asked for) -> ``resolve`` -> ``Job`` (what will run).

``JobSpec`` is one flat mapping whose keys are ``fpgen generate``'s option names, so the same mapping
is what a batch-file line holds, what a video's metadata records for ``--from``, and what a job
folder keeps for ``--resume``. ``resolve`` does every check and decision before anything heavy:
pictures decoded (once), an extended video read (once), the model's files found, LoRAs read, the
runtime decided (once, with its reason), every path the job writes checked against the others and
against what is on disk, the settings completed with the family's defaults, the section plan and
each section's prompt. Below it nothing re-validates.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from fpgen.buckets import load_image, parse_size, pick_bucket
from fpgen.errors import InputError
from fpgen.extend import VideoTail, read_tail
from fpgen.families import Defaults, Family
from fpgen.geometry import section_count, whole_sections
from fpgen.hub import ModelFiles, find_model
from fpgen.jobfolder import JobFolder, SavedJob, find_job, job_dir
from fpgen.lora import Lora, LoraChoice, load_loras
from fpgen.metadata import sidecar_is_ours, sidecar_path
from fpgen.output import partial_path
from fpgen.plan import SectionPlan, plan_sections
from fpgen.prompts import describe, parse_prompts, section_prompts
from fpgen.registry import MODELS, resolve_model
from fpgen.runtime import RuntimePlan, RuntimeRequest, plan_runtime

MAX_SECTIONS = 10_000  # about 50 minutes at the default window; a job folder keeps one file per section
MAX_PROMPT_CHARS = 100_000  # far beyond the 256 tokens the text encoder reads; bounds metadata and job files
MAX_PIXELS = 4096 * 4096  # a frame size beyond this is impossible, not merely out of memory


@dataclass(frozen=True)
class Settings:
    """Everything that decides a job's output besides the pictures and the model.

    ``steps``, ``window``, ``distilled_guidance`` and ``cfg`` left at None take the model family's defaults.
    """

    prompt: str = ""
    negative_prompt: str = ""
    seconds: float = 5.0
    seed: int = 31337
    steps: int | None = None
    window: int | None = None
    distilled_guidance: float | None = None
    cfg: float | None = None
    guidance_rescale: float = 0.0
    teacache: bool = False
    teacache_threshold: float = 0.15
    resolution: int = 640
    size: tuple[int, int] | None = None  # (height, width); overrides the bucket

    def complete(self, defaults: Defaults) -> Settings:
        """These settings with the family's defaults where they are unset, checked."""
        unset = {name: getattr(defaults, name) for name in ("steps", "window", "distilled_guidance", "cfg") if getattr(self, name) is None}
        return replace(self, **unset).validate()

    def validate(self) -> Settings:
        checks = [
            (math.isfinite(self.seconds) and self.seconds > 0, f"--seconds must be positive (got {self.seconds})", "e.g. --seconds 5"),
            (self.steps >= 1, f"--steps must be at least 1 (got {self.steps})", "the official default is 25"),
            (1 <= self.window <= 33, f"--window must be between 1 and 33 (got {self.window})", "the models were trained with 9"),
            (self.cfg >= 1.0, f"--cfg must be at least 1 (got {self.cfg})", "1 disables real CFG"),
            (0 <= self.guidance_rescale <= 1, f"--guidance-rescale must be within [0, 1] (got {self.guidance_rescale})", "0 disables it"),
            (self.distilled_guidance > 0, f"--distilled-guidance must be positive (got {self.distilled_guidance})", "the official default is 10"),
            (self.teacache_threshold > 0, f"--teacache-threshold must be positive (got {self.teacache_threshold})", "0.15 is the official value"),
            (0 <= self.seed < 2**63, f"--seed must be between 0 and 2^63-1 (got {self.seed})", "e.g. --seed 31337"),
            (section_count(self.seconds, self.window) <= MAX_SECTIONS, f"--seconds {self.seconds:g} is more than {MAX_SECTIONS} sections", "make long videos in parts with --extend"),
            (len(self.prompt) + len(self.negative_prompt) <= MAX_PROMPT_CHARS, f"the prompt is {len(self.prompt)} characters; at most {MAX_PROMPT_CHARS}", "the text encoder reads its first 256 tokens"),
            (self.size is None or self.size[0] * self.size[1] <= MAX_PIXELS, f"--size {self.size and 'x'.join(map(str, self.size))} is larger than 4096x4096 pixels", "use a smaller --size"),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise InputError(message, hint)
        parse_prompts(self.prompt)
        return self


SETTINGS_FIELDS = tuple(f.name for f in fields(Settings))
PATH_OPTIONS = ("output", "image", "end_image", "extend", "model_dir", "save_latents")


@dataclass(frozen=True)
class JobSpec:
    """One video to make: everything that decides it, as ``fpgen generate`` options."""

    output: Path
    settings: Settings = field(default_factory=Settings)
    image: Path | None = None
    end_image: Path | None = None
    extend: Path | None = None
    model: str = "framepack"
    model_dir: Path | None = None
    revision: str | None = None
    lora: tuple[str, ...] = ()  # PATH:SCALE, paths absolute
    device: str = "auto"
    dtype: str = "auto"
    fast: bool = False
    low_vram: bool = False
    compile: bool = True
    vram_budget: float | None = None
    crf: int = 16
    save_latents: Path | None = None

    @property
    def runtime_request(self) -> RuntimeRequest:
        return RuntimeRequest(self.device, self.dtype, self.fast, self.low_vram, self.vram_budget, self.compile)

    def models_key(self) -> tuple:
        """What decides the models a job needs: jobs with equal keys share loaded models."""
        return (self.model, self.model_dir, self.revision, self.lora, self.runtime_request)

    def options(self) -> dict:
        """The flat, JSON-ready form: option name -> value (paths absolute, size as ``HxW``)."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
        flat.update({name: getattr(self.settings, name) for name in SETTINGS_FIELDS})
        flat["size"] = "x".join(map(str, self.settings.size)) if self.settings.size else None
        flat["lora"] = list(self.lora)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in flat.items()}

    @classmethod
    def option_names(cls) -> set[str]:
        return {f.name for f in fields(cls)} - {"settings"} | set(SETTINGS_FIELDS)

    @classmethod
    def from_options(cls, options: dict) -> JobSpec:
        """Build a job from option values; an unknown option name is an error naming the closest known one."""
        known = cls.option_names()
        for name in options:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                raise InputError(f"unknown option {name!r}", f"did you mean {close[0]!r}?" if close else "see fpgen generate --help")
        if not options.get("output"):
            raise InputError("the job has no output", "give it an output path ending in .mp4")
        values = {k: v for k, v in options.items() if v is not None}
        for name in PATH_OPTIONS:
            if name in values:
                values[name] = Path(values[name]).expanduser().absolute()
        if "size" in values:
            values["size"] = parse_size(values["size"]) if isinstance(values["size"], str) else tuple(values["size"])
        if "lora" in values:
            values["lora"] = tuple(_absolute_lora(item) for item in ([values["lora"]] if isinstance(values["lora"], str) else values["lora"]))
        if values.get("teacache") is None:  # TeaCache is on with --fast unless asked otherwise
            values["teacache"] = bool(values.get("fast"))
        model = values.get("model")
        if model and model not in MODELS and Path(model).expanduser().is_dir():  # a local folder: valid from any directory
            values["model"] = str(Path(model).expanduser().absolute())
        return cls(settings=Settings(**{k: values.pop(k) for k in SETTINGS_FIELDS if k in values}), **values)


def _absolute_lora(text: str) -> str:
    choice = LoraChoice.parse(text)
    return f"{choice.path.expanduser().absolute()}:{choice.scale:g}"


@dataclass(frozen=True)
class Pictures:
    """A job's pictures, decoded once: the start picture, an end picture, an extended video's last frames."""

    start: np.ndarray | None  # (H, W, 3) uint8, any size; None for text-to-video
    size: tuple[int, int]  # the video's (height, width)
    end: np.ndarray | None = None
    tail: VideoTail | None = None


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

    @property
    def settings(self) -> Settings:
        return self.spec.settings

    @property
    def folder(self) -> JobFolder:
        return JobFolder(job_dir(self.spec.output))

    def describe(self) -> list[str]:
        """What the CLI prints before the job runs."""
        lines = [f"  prompt {line}" for line in describe(list(self.plan.prompts), self.plan.window)] if len(set(self.plan.prompts)) > 1 else []
        new_frames = self.model.spec.family.frame_count(replace(self.plan, offset=0))
        return lines + [f"{self.plan.count} section(s), {new_frames} new frames, {self.plan.order} order -> {self.spec.output}"]


def resolve(spec: JobSpec, overwrite: bool = False, preview: bool = False, loaded=None, picture: np.ndarray | None = None) -> Job:
    """Check and decide everything about ``spec`` before any model loads.

    ``loaded`` (``fpgen.loading.Components``) supplies the model, runtime and LoRAs of models
    already loaded; ``picture`` a start picture given as an array instead of ``spec.image``.
    """
    check_family_inputs(spec, loaded.family if loaded is not None else resolve_model(spec.model, spec.revision).family, picture is not None)
    files = loaded.files if loaded is not None else find_model(spec.model, spec.model_dir, revision=spec.revision)
    family = files.spec.family
    settings = spec.settings.complete(family.defaults)
    spec = replace(spec, settings=settings)
    folder = JobFolder(job_dir(spec.output))
    if folder.exists() and not overwrite and folder.options() == spec.options():
        return resolve_resume(folder.path, preview, loaded)
    check_outputs(spec, overwrite)
    loras = tuple(loaded.loras) if loaded is not None else tuple(load_loras(LoraChoice.parse(item) for item in spec.lora))
    runtime = loaded.runtime if loaded is not None else plan_runtime(spec.runtime_request, files.paths["transformer"])
    pictures = read_pictures(spec, family, picture)
    offset = whole_sections(pictures.tail.tail.shape[0], settings.window) if pictures.tail is not None else 0
    prompts, notes = section_prompts(parse_prompts(settings.prompt), family.section_count(settings.seconds, settings.window), settings.window)
    plan = plan_sections(len(prompts), settings.window, family.sections.name, offset, tuple(prompts))
    return Job(spec, files, runtime, loras, plan, pictures, tuple(notes), None, overwrite, preview)


def check_family_inputs(spec: JobSpec, family: Family, has_picture: bool) -> None:
    """Refuse, before any work, inputs the model family has no use for."""
    if spec.image is None and spec.extend is None and not has_picture and not family.text_to_video:
        raise InputError(f"missing IMAGE: {spec.model} makes videos from a start picture", "pass one (or --extend VIDEO, --from VIDEO, --resume JOB, --jobs FILE)")
    options = spec.options()
    for option, reason in family.refuses:
        if options[option]:
            flag = "--" + option.replace("_", "-")
            raise InputError(f"{flag}: {spec.model} {reason}", f"drop {flag}" + (" (with --fast, add --no-teacache)" if option == "teacache" else ""))


def read_pictures(spec: JobSpec, family: Family, picture: np.ndarray | None = None) -> Pictures:
    """Every picture and video the job reads, decoded once, and the video's size.

    Text-to-video (no picture, no video) has no start picture: ``start`` is None and the size is
    ``--size`` or the family's default.
    """
    settings, sections = spec.settings, family.sections
    tail = read_tail(spec.extend, sections.name, settings.window, settings.size, settings.resolution) if spec.extend is not None else None
    start = load_image(spec.image) if spec.image is not None else picture
    if start is None and tail is not None:
        start = tail.tail[sections.tail_frame]
    end = load_image(spec.end_image) if spec.end_image is not None else None
    size = tuple(tail.tail.shape[1:3]) if tail is not None else settings.size or family.defaults.size or pick_bucket(start.shape[0], start.shape[1], settings.resolution)
    return Pictures(start, size, end, tail)


def resolve_resume(path: Path, preview: bool = False, loaded=None) -> Job:
    """The unfinished job in ``path`` (its folder, or the output it was started with), checked before any model loads."""
    folder = find_job(Path(path))
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
    check_output_file(spec.output, False, spec.crf)
    runtime = loaded.runtime if loaded is not None else plan_runtime(spec.runtime_request, files.paths["transformer"])
    loras = tuple(loaded.loras) if loaded is not None else tuple(load_loras(LoraChoice.parse(item) for item in spec.lora))
    settings = spec.settings
    prompts, notes = section_prompts(parse_prompts(settings.prompt), family.section_count(settings.seconds, settings.window), settings.window)
    prefix = saved.inputs.prefix
    offset = (prefix.shape[2] - 1) // settings.window if prefix is not None else 0
    plan = plan_sections(len(prompts), settings.window, family.sections.name, offset, tuple(prompts))
    return Job(spec, files, runtime, loras, plan, None, tuple(notes), saved, False, preview)


def check_output_file(output: Path, overwrite: bool, crf: int) -> None:
    """Refuse, before any work, an output that is not an MP4, exists already, cannot be written, or a CRF libx264 does not take."""
    if not 0 <= crf <= 51:
        raise InputError(f"--crf must be between 0 and 51 (got {crf})", "16 is the official default; lower is better quality")
    if output.suffix.lower() != ".mp4":
        raise InputError(f"output {output} must end in .mp4", "e.g. -o video.mp4")
    if output.is_dir():
        raise InputError(f"output {output} is a folder", "name an .mp4 file with -o/--output")
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists", "choose another -o/--output, or pass --overwrite")
    if not overwrite and not sidecar_is_ours(output):
        raise InputError(f"{sidecar_path(output)} exists and is not fpgen's metadata", "choose another -o/--output, or pass --overwrite")
    parent = next((p for p in (output.parent, *output.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write into {output.parent}", "choose an -o/--output in a folder you can write")


def check_outputs(spec: JobSpec, overwrite: bool) -> None:
    """Every path the job writes, checked against what is on disk and against each other."""
    check_output_file(spec.output, overwrite, spec.crf)
    folder = JobFolder(job_dir(spec.output))
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
