"""What the user asked for, as data: ``Settings`` and ``JobSpec`` (a job as ``fpgen generate`` options).

``JobSpec`` is one flat mapping whose keys are ``fpgen generate``'s option names, so the same mapping
is what a batch-file line holds, what a video's metadata records for ``--from`` and what a job folder
keeps for ``--resume``. Building one checks every value given (imports nothing heavy, so a bad
argument is reported before torch loads); ``fpgen.config.resolve`` works the rest out.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fpgen.buckets import parse_size
from fpgen.errors import InputError
from fpgen.geometry import FULL_HISTORY, section_count
from fpgen.prompts import parse_prompts

if TYPE_CHECKING:
    from fpgen.families import Defaults


MAX_SECTIONS = 10_000  # about 50 minutes at the default window; a job folder keeps one file per section
MAX_PROMPT_CHARS = 100_000  # far beyond the 256 tokens the text encoder reads; bounds metadata and job files
MAX_PIXELS = 4096 * 4096  # a frame size beyond this is impossible, not merely out of memory
STEP_CACHES = ("teacache", "magcache", "fbcache", "none")  # the caches fpgen.stepcache implements, named here without torch
LEGACY_OPTIONS = ("teacache", "teacache_threshold")  # older videos' and batch files' names for --step-cache teacache and its threshold
MAX_FPS = 240
MAX_INTERPOLATE = 8  # minterpolate's cost grows with every frame it makes


@dataclass(frozen=True)
class RuntimeRequest:
    """What the command line asks of the runtime (``fpgen generate``'s options of the same names)."""

    device: str = "auto"
    dtype: str = "auto"
    fast: bool = False
    low_vram: bool = False
    vram_budget: float | None = None
    compile: bool = True
    ram_budget: float | None = None
    quantize: str | None = None  # int8, fp8, nf4 or auto


QUANTIZE_CHOICES = ("int8", "fp8", "nf4", "auto")


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
    step_cache: str = "none"  # teacache, magcache, fbcache or none (fpgen.stepcache)
    step_cache_threshold: float | None = None  # None: the cache's own default
    prompt_blend: int = 0  # sections over which a timed prompt change blends into the next prompt (0: it switches at once)
    resolution: int = 640
    size: tuple[int, int] | None = None  # (height, width); overrides the bucket
    history: tuple[int, int, int] = FULL_HISTORY  # frames kept in the 1x, 2x, 4x history slots (fpgen.packing.limit_history)

    def complete(self, defaults: Defaults) -> Settings:
        """These settings with the family's defaults where they are unset (the limits that depend on them checked)."""
        unset = {name: getattr(defaults, name) for name in ("steps", "window", "distilled_guidance", "cfg") if getattr(self, name) is None}
        completed = replace(self, **unset)
        _check(completed.limits())
        return completed

    def validate(self) -> Settings:
        """Check every value that is set (those left to the family are checked by ``complete``)."""
        checks = [
            (math.isfinite(self.seconds) and self.seconds > 0, f"--seconds must be positive (got {self.seconds})", "e.g. --seconds 5"),
            (self.steps is None or self.steps >= 1, f"--steps must be at least 1 (got {self.steps})", "the official default is 25"),
            (self.window is None or 1 <= self.window <= 33, f"--window must be between 1 and 33 (got {self.window})", "the models were trained with 9"),
            (self.cfg is None or self.cfg >= 1.0, f"--cfg must be at least 1 (got {self.cfg})", "1 disables real CFG"),
            (0 <= self.guidance_rescale <= 1, f"--guidance-rescale must be within [0, 1] (got {self.guidance_rescale})", "0 disables it"),
            (self.distilled_guidance is None or self.distilled_guidance > 0, f"--distilled-guidance must be positive (got {self.distilled_guidance})", "the official default is 10"),
            (self.step_cache in STEP_CACHES, f"unknown --step-cache {self.step_cache!r}", f"use one of {', '.join(STEP_CACHES)}"),
            (self.step_cache_threshold is None or self.step_cache_threshold >= 0, f"--step-cache-threshold must be at least 0 (got {self.step_cache_threshold})", "0 skips nothing; higher skips more"),
            (0 <= self.seed < 2**63, f"--seed must be between 0 and 2^63-1 (got {self.seed})", "e.g. --seed 31337"),
            (0 <= self.prompt_blend <= MAX_SECTIONS, f"--prompt-blend must be between 0 and {MAX_SECTIONS} sections (got {self.prompt_blend})", "e.g. --prompt-blend 4; 0 switches at once"),
        ]
        _check(checks)
        _check(self.limits())
        parse_prompts(self.prompt)
        return self

    def limits(self) -> list[tuple[bool, str, str]]:
        """Bounds that keep a job possible: its length (once the window is known), prompt and frame size."""
        return [
            (self.window is None or section_count(self.seconds, self.window) <= MAX_SECTIONS, f"--seconds {self.seconds:g} is more than {MAX_SECTIONS} sections", "make long videos in parts with --extend"),
            (len(self.prompt) + len(self.negative_prompt) <= MAX_PROMPT_CHARS, f"the prompt is {len(self.prompt)} characters; at most {MAX_PROMPT_CHARS}", "the text encoder reads its first 256 tokens"),
            (self.size is None or self.size[0] * self.size[1] <= MAX_PIXELS, f"--size {self.size and 'x'.join(map(str, self.size))} is larger than 4096x4096 pixels", "use a smaller --size"),
        ]


def parse_history(text: str | list | tuple) -> tuple[int, int, int]:
    """``--history N1,N2,N4``: frames kept in the 1x, 2x and 4x history slots, each at most the official 1, 2, 16."""
    try:
        values = tuple(int(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= top for v, top in zip(values, FULL_HISTORY)):
        raise InputError(f"--history must be three counts N1,N2,N4 within 0..1, 0..2 and 0..16 (got {text!r})", "1,2,16 is the official packing; 1,0,0 keeps only the nearest frame")
    return values


def _check(checks: list[tuple[bool, str, str]]) -> None:
    for ok, message, hint in checks:
        if not ok:
            raise InputError(message, hint)


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
    keyframe: tuple[str, ...] = ()  # TIME:IMAGE, paths absolute
    device: str = "auto"
    dtype: str = "auto"
    fast: bool = False
    low_vram: bool = False
    compile: bool = True
    vram_budget: float | None = None
    ram_budget: float | None = None
    quantize: str | None = None
    crf: int = 16
    save_latents: Path | None = None
    fps: int | None = None  # the output's frame rate; None: the model family's
    interpolate: int = 1  # the output's frame rate as a multiple of the family's
    color_match: bool | None = None  # None: the family's default for the video's length
    loop: bool = False

    def __post_init__(self):
        if not 0 <= self.crf <= 51:
            raise InputError(f"--crf must be between 0 and 51 (got {self.crf})", "16 is the official default; lower is better quality")
        _check(self.output_checks())
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            raise InputError(f"unknown --quantize {self.quantize!r}", "use " + ", ".join(QUANTIZE_CHOICES))
        for path in (self.image, self.end_image, self.extend, *(parse_keyframe(item)[1] for item in self.keyframe)):
            if path is not None and not path.exists():
                raise InputError(f"{'image' if path != self.extend else 'video'} not found: {path}", "check the path")

    def output_checks(self) -> list[tuple[bool, str, str]]:
        """``--fps``, ``--interpolate`` and ``--loop`` against each other (the family's rate is checked by ``fpgen.config``)."""
        return [
            (self.fps is None or 1 <= self.fps <= MAX_FPS, f"--fps must be between 1 and {MAX_FPS} (got {self.fps})", "e.g. --fps 15 (drops every other frame) or --fps 24 (interpolated)"),
            (1 <= self.interpolate <= MAX_INTERPOLATE, f"--interpolate must be between 1 and {MAX_INTERPOLATE} (got {self.interpolate})", "--interpolate 2 doubles the frame rate"),
            (self.fps is None or self.interpolate == 1, "--fps and --interpolate cannot be combined", "give the rate you want with --fps alone (--interpolate 2 is --fps 60 at 30 native)"),
            (not (self.loop and self.end_image is not None), "--loop ends the video on its start picture, so it takes no --end-image", "drop --end-image (or --loop)"),
            (not (self.loop and self.extend is not None), "--loop cannot be combined with --extend: the extended video's first frame is not part of the job", "loop the first video, or drop --loop"),
        ]

    @property
    def keyframes(self) -> list[tuple[float, Path]]:
        """The ``--keyframe`` pictures as (seconds, path), in the order given."""
        return [parse_keyframe(item) for item in self.keyframe]

    @property
    def runtime_request(self) -> RuntimeRequest:
        return RuntimeRequest(self.device, self.dtype, self.fast, self.low_vram, self.vram_budget, self.compile, self.ram_budget, self.quantize)

    def models_key(self) -> tuple:
        """What decides the models a job needs: jobs with equal keys share loaded models."""
        return (self.model, self.model_dir, self.revision, self.lora, self.runtime_request)

    def options(self) -> dict:
        """The flat, JSON-ready form: option name -> value (paths absolute, size as ``HxW``)."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
        flat.update({name: getattr(self.settings, name) for name in SETTINGS_FIELDS})
        flat["size"] = "x".join(map(str, self.settings.size)) if self.settings.size else None
        flat["history"] = ",".join(map(str, self.settings.history))
        flat["lora"] = list(self.lora)
        flat["keyframe"] = list(self.keyframe)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in flat.items()}

    @classmethod
    def option_names(cls) -> set[str]:
        return {f.name for f in fields(cls)} - {"settings"} | set(SETTINGS_FIELDS) | set(LEGACY_OPTIONS)

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
        if "history" in values:
            values["history"] = parse_history(values["history"])
        if "lora" in values:
            values["lora"] = tuple(_absolute_lora(item) for item in ([values["lora"]] if isinstance(values["lora"], str) else values["lora"]))
        _step_cache_from_legacy(values)
        if values.get("step_cache") is None:  # --fast picks TeaCache unless asked otherwise
            values["step_cache"] = "teacache" if values.get("fast") else "none"
        if "keyframe" in values:
            values["keyframe"] = tuple(_absolute_keyframe(item) for item in ([values["keyframe"]] if isinstance(values["keyframe"], str) else values["keyframe"]))
        return cls(settings=Settings(**{k: values.pop(k) for k in SETTINGS_FIELDS if k in values}).validate(), **values)


def check_new_file(output: Path, suffix: str, example: str, overwrite: bool) -> None:
    """Refuse, before any work, an output path that is not a ``suffix`` file, exists already (unless
    ``overwrite``) or lies where nothing can be written; ``example`` is a file name to suggest."""
    if output.suffix.lower() != suffix:
        raise InputError(f"output {output} must end in {suffix}", f"e.g. -o {example}")
    if output.is_dir():
        raise InputError(f"output {output} is a folder", f"name {'an' if suffix == '.mp4' else 'a'} {suffix} file with -o/--output")
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists", "choose another -o/--output, or pass --overwrite")
    parent = next((p for p in (output.parent, *output.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write into {output.parent}", "choose an -o/--output in a folder you can write")


def _step_cache_from_legacy(values: dict) -> None:
    """``teacache``/``teacache_threshold`` (older videos, batch files) as ``step_cache``/``step_cache_threshold``."""
    teacache, threshold = values.pop("teacache", None), values.pop("teacache_threshold", None)
    if teacache is not None:
        named = "teacache" if teacache else "none"
        if values.get("step_cache", named) != named:
            raise InputError(f"{'--teacache' if teacache else '--no-teacache'} and --step-cache {values['step_cache']} disagree", "give only --step-cache")
        values["step_cache"] = named
    if threshold is not None and values.get("step_cache") == "teacache":
        values.setdefault("step_cache_threshold", threshold)


def _absolute_lora(text: str) -> str:
    from fpgen.lora import LoraChoice  # only for jobs with LoRAs: it needs torch

    choice = LoraChoice.parse(text)
    return f"{choice.path.expanduser().absolute()}:{choice.scale:g}"


def parse_keyframe(text: str) -> tuple[float, Path]:
    """``TIME:IMAGE`` (``3:pose.png`` or ``3s:pose.png``) as (seconds, path)."""
    time, sep, path = str(text).partition(":")
    try:
        seconds = float(time.strip().removesuffix("s").removesuffix("S"))
    except ValueError:
        seconds = math.nan
    if not sep or not path or not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"--keyframe {text!r} is not TIME:IMAGE", "give the seconds into the video and a picture, e.g. --keyframe 2.4:pose.png")
    return seconds, Path(path)


def _absolute_keyframe(text: str) -> str:
    seconds, path = parse_keyframe(text)
    return f"{seconds:.10g}:{path.expanduser().absolute()}"
