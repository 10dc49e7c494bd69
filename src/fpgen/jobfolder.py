"""A job's folder ``<output>.job/``: what is made so far, enough to continue after a crash.

It holds ``job.json`` (the settings), ``inputs.safetensors`` (the encoded pictures and prompts),
``sections/NNNN.safetensors`` (each finished section's latents, written once its frames are on disk: a
section file means the section is done) and ``segments/`` (the final frames as MP4 pieces). That is
everything needed to continue the job after a crash and get the video an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fpgen._version import __version__
from fpgen.conditioning import JobInputs, PromptEmbedding
from fpgen.errors import InputError
from fpgen.events import Event, FinishedSection, SectionDone
from fpgen.plan import Order
from fpgen.tensorfile import load_tensors, save_tensors


def job_dir(output: Path) -> Path:
    return output.with_name(output.name + ".job")


def _prompt_tensors(prefix: str, prompt: PromptEmbedding) -> dict[str, torch.Tensor]:
    return {f"{prefix}.embeds": prompt.embeds, f"{prefix}.mask": prompt.mask, f"{prefix}.pooled": prompt.pooled}


def _prompt_from(tensors: dict, prefix: str, tokens: int, truncated: bool) -> PromptEmbedding:
    return PromptEmbedding(tensors[f"{prefix}.embeds"], tensors[f"{prefix}.mask"], tensors[f"{prefix}.pooled"], tokens, truncated)


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
    save_tensors(path, tensors, metadata)


def load_inputs(path: Path) -> JobInputs:
    tensors, metadata = load_tensors(path)
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
            save_tensors(self.section_file(event.section.index), {"latents": event.latents}, {"transformer_passes": str(event.transformer_passes)})

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
            tensors, metadata = load_tensors(self.section_file(index))
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
