"""A job: what to make (``JobSpec``); its folder is ``fpgen.jobfolder``.

A job's settings are one flat mapping whose keys are ``fpgen generate``'s option names, so the same
mapping is what a batch file line holds, what a video's metadata records for ``--from``, and what
the job folder keeps for ``--resume``.
"""

from __future__ import annotations

import difflib
import errno
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from fpgen.buckets import parse_size
from fpgen.errors import DiskFullError, InputError, Interrupted, OutOfMemoryError
from fpgen.lora import LoraChoice
from fpgen.jobfolder import JobFolder
from fpgen.pipeline import Settings
from fpgen.registry import MODELS

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

    def models_key(self) -> tuple:
        """What decides the models a job needs: jobs with equal keys share loaded models."""
        return (self.model, self.model_dir, self.revision, self.lora, self.device, self.dtype, self.fast, self.low_vram, self.compile, self.vram_budget)

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
        settings = Settings(**{k: values.pop(k) for k in SETTINGS_FIELDS if k in values})
        return cls(settings=settings.validate(), **values)


def _absolute_lora(text: str) -> str:
    choice = LoraChoice.parse(text)
    return f"{choice.path.expanduser().absolute()}:{choice.scale:g}"


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's out-of-memory error, Python's, or the CPU allocator's."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error))


def stopped_error(error: BaseException, folder: JobFolder, count: int, partial: Path | None) -> Exception | None:
    """The user-facing error for a job that stopped early (None: not a kind we explain; let it through)."""
    kept = f"partial video: {partial}; " if partial else ""
    where = f"{folder.done()}/{count} sections done"
    resume = f"continue with: fpgen generate --resume {folder.path}"
    if isinstance(error, KeyboardInterrupt):
        return Interrupted(f"interrupted ({where})", kept + resume)
    if is_out_of_memory(error):
        return OutOfMemoryError(f"out of memory ({where}): {str(error).splitlines()[0][:200]}", kept + "free memory (or use a smaller --size), then " + resume)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return DiskFullError(f"the disk is full ({where})", kept + "free some space, then " + resume)
    return None
