"""A job and its folder: what to make (``JobSpec``), and what is made so far (``JobFolder``).

A job's settings are one flat mapping whose keys are ``fpgen generate``'s option names, so the same
mapping is what a batch file line holds, what a video's metadata records for ``--from``, and what
the job folder keeps for ``--resume``.

The folder ``<output>.job/`` next to the output holds ``job.json`` (the settings), ``inputs.safetensors``
(the encoded pictures and prompts), ``sections/NNNN.safetensors`` (each finished section's latents,
written once its frames are on disk: a section file means the section is done) and ``segments/``
(the final frames as MP4 pieces). That is everything needed to continue the job after a crash and
get the video an uninterrupted run gives.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fpgen import __version__
from fpgen.buckets import parse_size
from fpgen.conditioning import PromptEmbedding
from fpgen.errors import DiskFullError, InputError, Interrupted, OutOfMemoryError
from fpgen.lora import LoraChoice
from fpgen.pipeline import Event, FinishedSection, JobInputs, SectionDone, Settings
from fpgen.plan import Order
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


def job_dir(output: Path) -> Path:
    return output.with_name(output.name + ".job")


def _prompt_tensors(prefix: str, prompt: PromptEmbedding) -> dict[str, torch.Tensor]:
    return {f"{prefix}.embeds": prompt.embeds, f"{prefix}.mask": prompt.mask, f"{prefix}.pooled": prompt.pooled}


def _prompt_from(tensors: dict, prefix: str, tokens: int, truncated: bool) -> PromptEmbedding:
    return PromptEmbedding(tensors[f"{prefix}.embeds"], tensors[f"{prefix}.mask"], tensors[f"{prefix}.pooled"], tokens, truncated)


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file aside and rename it, so a file that exists is complete."""
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(partial), metadata)
    os.replace(partial, path)


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as file:
        return {k: file.get_tensor(k) for k in file.keys()}, file.metadata() or {}


def save_inputs(path: Path, inputs: JobInputs) -> None:
    tensors = {"image": torch.from_numpy(inputs.image), "start_latent": inputs.start_latent, "image_embeds": inputs.image_embeds}
    tensors |= _prompt_tensors("positive", inputs.positive)
    texts = list(inputs.prompts)
    for i, text in enumerate(texts):
        tensors |= _prompt_tensors(f"prompt.{i}", inputs.prompts[text])
    if inputs.negative is not None:
        tensors |= _prompt_tensors("negative", inputs.negative)
    tensors |= {name: getattr(inputs, name) for name in ("end_latent", "prefix", "lead") if getattr(inputs, name) is not None}
    described = {"positive": inputs.positive, **({"negative": inputs.negative} if inputs.negative else {})}
    described |= {f"prompt.{i}": inputs.prompts[t] for i, t in enumerate(texts)}
    metadata = {"texts": json.dumps(texts), "tokens": json.dumps({k: [p.tokens, p.truncated] for k, p in described.items()})}
    _save(path, tensors, metadata)


def load_inputs(path: Path) -> JobInputs:
    tensors, metadata = _load(path)
    tokens = json.loads(metadata["tokens"])

    def prompt(prefix: str) -> PromptEmbedding | None:
        return _prompt_from(tensors, prefix, *tokens[prefix]) if prefix in tokens else None

    texts = json.loads(metadata["texts"])
    return JobInputs(
        image=tensors["image"].numpy(),
        start_latent=tensors["start_latent"],
        image_embeds=tensors["image_embeds"],
        positive=prompt("positive"),
        negative=prompt("negative"),
        prompts={text: prompt(f"prompt.{i}") for i, text in enumerate(texts)},
        end_latent=tensors.get("end_latent"),
        prefix=tensors.get("prefix"),
        lead=tensors.get("lead"),
    )


@dataclass(frozen=True)
class SavedJob:
    options: dict
    order: Order
    frame_offset: int  # frames of an extended video that come before the job's own frame 0
    inputs: JobInputs
    finished: list[FinishedSection]


class JobFolder:
    """``<output>.job/``: a job's settings, inputs, finished sections and segments."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.job_file = self.path / "job.json"
        self.inputs_file = self.path / "inputs.safetensors"
        self.sections_dir = self.path / "sections"
        self.segments_dir = self.path / "segments"

    def exists(self) -> bool:
        return self.job_file.is_file()

    def options(self) -> dict:
        return json.loads(self.job_file.read_text())["job"]

    def create(self, options: dict, inputs: JobInputs, order: Order, frame_offset: int = 0) -> None:
        """Start a job: inputs first, the settings last (the folder counts as a job once ``job.json`` exists)."""
        self.sections_dir.mkdir(parents=True, exist_ok=True)
        save_inputs(self.inputs_file, inputs)
        record = {"fpgen": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "order": order, "frame_offset": frame_offset, "job": options}
        partial = self.job_file.with_name("job.json.partial")
        partial.write_text(json.dumps(record, indent=1))
        os.replace(partial, self.job_file)

    def section_file(self, index: int) -> Path:
        return self.sections_dir / f"{index:04d}.safetensors"

    def record(self, event: Event) -> None:
        """An event listener: save each finished section (its frames are already written)."""
        if isinstance(event, SectionDone):
            _save(self.section_file(event.section.index), {"latents": event.latents}, {"transformer_passes": str(event.transformer_passes)})

    def done(self) -> int:
        count = 0
        while self.section_file(count).is_file():
            count += 1
        return count

    def load(self) -> SavedJob:
        if not self.exists():
            raise InputError(f"{self.path} is not a job folder (no job.json)", "pass the .job folder next to an unfinished output, or that output's path")
        record = json.loads(self.job_file.read_text())
        finished = []
        for index in range(self.done()):
            tensors, metadata = _load(self.section_file(index))
            finished.append(FinishedSection(tensors["latents"], int(metadata["transformer_passes"])))
        return SavedJob(record["job"], record["order"], record["frame_offset"], load_inputs(self.inputs_file), finished)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def find_job(path: Path) -> JobFolder:
    """The job folder of ``path``: the folder itself, or the output file the job was started with."""
    path = Path(path).expanduser().absolute()
    folder = JobFolder(path if path.suffix == ".job" or (path / "job.json").is_file() else job_dir(path))
    if not folder.exists():
        raise InputError(f"no unfinished job at {path}", "pass the output file of an interrupted job, or its .job folder")
    return folder


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
