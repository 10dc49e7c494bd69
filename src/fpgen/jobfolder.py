"""A job's folder ``<output>.job/``: what is made so far, enough to continue after a crash.

It holds ``job.json`` (the settings), ``inputs.safetensors`` (the encoded pictures and prompts),
``sections/NNNN.safetensors`` (each finished section's latents, written once its frames are on disk: a
section file means the section is done, and its metadata names the segment it wrote) and
``segments/`` (the final frames as MP4 pieces). That is everything needed to continue the job after
a crash and get the video an uninterrupted run gives.

Ownership, in the order an orchestrator uses it:

- ``check_job_paths(output, overwrite)`` (the resolve step, before any work; every line of a
  batch): refuses a ``.job`` path fpgen did not make (no ``job.json`` nor ``lock.json``, or a file
  fpgen never writes there), even with ``overwrite``, and a ``<stem>.partial.mp4`` that the job
  folder does not note as its own unless ``overwrite`` (then the job takes it over).
- ``with JobFolder(job_dir(output)).claim(overwrite) as folder:`` checks the paths again and holds
  the job for one process: ``fcntl.flock`` on ``lock.json``, which the OS releases however the
  process ends (crash, SIGKILL), so a stale lock never blocks. A second run on the same output
  gets an ``InputError`` at once naming the holder (pid, host, since when). The lock is taken
  before anything in the folder is loaded, cleared or written. ``lock.json`` also notes the partial
  video the job owns. An empty ``.job`` folder counts as fpgen's: there is nothing in it to lose.
- ``folder.repair()`` (a resume, before models load): ``job.json`` and the inputs must be readable
  (else an ``InputError`` that says to start over with ``--overwrite``); the finished sections are
  kept up to the first one whose file is damaged or whose segment is missing or of another length,
  and that one and every later one are dropped with their segments, to be made again.
- ``folder.clear()`` (start over, the lock kept) and ``folder.remove()`` (the job is done) delete
  only the files fpgen writes here, by name, and the partial video only when the folder notes it
  as its own; a folder holding anything else is refused before anything is deleted.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

import torch

from fpgen._version import __version__
from fpgen.conditioning import JobInputs, PromptEmbedding
from fpgen.errors import InputError
from fpgen.events import Event, FinishedSection, SectionDone
from fpgen.mp4 import read_track
from fpgen.output import partial_path, segment_name
from fpgen.plan import Order
from fpgen.retime import kept_count
from fpgen.tensorfile import DamagedFileError, load_tensors, save_tensors


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
    tensors |= {name: getattr(inputs, name) for name in ("end_latent", "prefix", "lead", "noise_state") if getattr(inputs, name) is not None}
    tensors |= {f"keyframe.{boundary}": latent for boundary, latent in inputs.keyframes.items()}
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
        keyframes={int(name.split(".")[1]): latent for name, latent in tensors.items() if name.startswith("keyframe.")},
        prefix=tensors.get("prefix"),
        lead=tensors.get("lead"),
        noise_state=tensors.get("noise_state"),
    )


@dataclass(frozen=True)
class SavedJob:
    options: dict
    order: Order
    frame_offset: int  # frames of an extended video that come before the job's own frame 0
    inputs: JobInputs
    finished: list[FinishedSection]


LOCK = "lock.json"
JOB_FILES = {"job.json", "job.json.partial", "inputs.safetensors", "inputs.safetensors.partial", "joined.mp4", "interpolated.mp4", LOCK}
SECTION_FILE = re.compile(r"(\d{4,})\.safetensors(\.partial)?")
SEGMENT_FILE = re.compile(r"\d{8,}(\.partial)?\.mp4")
START_OVER = "start the job over: run the fpgen generate command that began it again, with --overwrite (--resume cannot mend this)"


@dataclass(frozen=True)
class JobCheck:
    """What ``JobFolder.check`` found: how many finished sections are intact, and what is wrong after them."""

    sections: int  # finished sections, in generation order, whose file and segment are intact
    damage: str | None = None  # the first damaged section and why (None: every finished section is intact)


class JobFolder:
    """``<output>.job/``: a job's settings, inputs, finished sections and segments."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.job_file = self.path / "job.json"
        self.inputs_file = self.path / "inputs.safetensors"
        self.sections_dir = self.path / "sections"
        self.segments_dir = self.path / "segments"
        self.lock_file = self.path / LOCK

    def exists(self) -> bool:
        return self.job_file.is_file()

    def options(self) -> dict:
        return self._record()["job"]

    def create(self, options: dict, inputs: JobInputs, order: Order, frame_offset: int = 0, frame_step: int = 1) -> None:
        """Start a job: inputs first, the settings last (the folder counts as a job once ``job.json`` exists).

        ``frame_step``: segments keep every ``frame_step``-th video frame (``--fps`` dropping frames).
        """
        self.sections_dir.mkdir(parents=True, exist_ok=True)
        save_inputs(self.inputs_file, inputs)
        record = {"fpgen": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "order": order, "frame_offset": frame_offset, "frame_step": frame_step, "job": options}
        partial = self.job_file.with_name("job.json.partial")
        partial.write_text(json.dumps(record, indent=1))
        os.replace(partial, self.job_file)

    def section_file(self, index: int) -> Path:
        return self.sections_dir / f"{index:04d}.safetensors"

    def record(self, event: Event) -> None:
        """An event listener: save each finished section, naming the segment its frames went to (a section whose segment
        a crash cut short is made again on resume: ``check``)."""
        if isinstance(event, SectionDone):
            written = {"first_frame": str(event.first_frame), "frames": str(event.frames.shape[2])}
            save_tensors(self.section_file(event.section.index), {"latents": event.latents}, {"transformer_passes": str(event.transformer_passes), "transformer_calls": str(event.transformer_calls)} | written)

    def done(self) -> int:
        count = 0
        while self.section_file(count).is_file():
            count += 1
        return count

    def load(self) -> SavedJob:
        """The job as saved; ``repair`` first, so that every section loaded is intact."""
        if not self.exists():
            raise InputError(f"{self.path} is not a job folder (no job.json)", "pass the .job folder next to an unfinished output, or that output's path")
        record = self._record()
        finished = []
        for index in range(self.done()):
            tensors, metadata = load_tensors(self.section_file(index))
            passes = int(metadata["transformer_passes"])
            finished.append(FinishedSection(tensors["latents"], passes, int(metadata.get("transformer_calls", passes))))  # folders older than the count: taken as nothing skipped
        return SavedJob(record["job"], record["order"], record["frame_offset"], self._inputs(), finished)

    def _record(self) -> dict:
        """``job.json``, or an error that says the job cannot go on (the settings are gone)."""
        try:
            record = json.loads(self.job_file.read_text())
            if not _is_job_record(record):
                raise ValueError("not a job record")
            return record
        except (OSError, ValueError) as error:
            raise InputError(f"{self.job_file} is damaged ({type(error).__name__}): the job's settings cannot be read", START_OVER) from None

    def _inputs(self) -> JobInputs:
        try:
            return load_inputs(self.inputs_file)
        except (OSError, DamagedFileError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{self.inputs_file} is missing or damaged ({type(error).__name__}): the job's encoded inputs are gone", START_OVER) from None

    # ownership: what fpgen made here, the lock, and removing only that

    @property
    def output(self) -> Path:
        """The video this job makes: the folder's name without ``.job`` (or, for a renamed folder, what ``job.json`` says)."""
        if self.path.name.endswith(".job"):
            return self.path.with_name(self.path.name.removesuffix(".job"))
        return Path(self.options()["output"])

    def foreign_entries(self) -> list[Path]:
        """What is in the folder that fpgen never writes there (a user's files)."""
        found = [p for p in self.path.iterdir() if p.name not in JOB_FILES | {"sections", "segments"}]
        for folder, pattern in ((self.sections_dir, SECTION_FILE), (self.segments_dir, SEGMENT_FILE)):
            if folder.is_dir():
                found += [p for p in folder.iterdir() if not (pattern.fullmatch(p.name) and p.is_file())]
            elif folder.exists():
                found.append(folder)
        return found

    def is_ours(self) -> bool:
        """Recognisably made by fpgen (``job.json`` or fpgen's lock file, and nothing fpgen does not write), or empty: nothing to lose."""
        if not self.path.is_dir() or self.foreign_entries():
            return False
        return self.job_file.is_file() or self.lock_file.is_file() or not any(self.path.iterdir())

    def owned_partial(self) -> Path | None:
        """The partial video this folder notes as fpgen's (None: it notes none, or the note is unreadable)."""
        noted = _read_json(self.lock_file).get("partial_video")
        return Path(noted) if isinstance(noted, str) else None

    @contextmanager
    def claim(self, overwrite: bool = False) -> Iterator[JobFolder]:
        """Hold this job for the ``with`` block: check its paths, then create the folder (or take the existing one) locked.

        Another process holding it is an ``InputError`` at once, naming it. The lock is released when
        the block ends, or by the OS when the process dies, even by SIGKILL.
        """
        check_job_paths(self.output, overwrite)
        for _ in range(10):  # each retry means another run removed the folder meanwhile
            self.path.mkdir(parents=True, exist_ok=True)
            handle = self._lock()
            if handle is not None:
                break
        else:
            raise InputError(f"{self.path} keeps being removed by other fpgen runs", "run one job per output at a time")
        try:
            _write_owner(handle, partial_path(self.output))
            yield self
        finally:
            handle.close()

    def _lock(self) -> IO | None:
        """Lock the folder (None: it was removed while we looked, try again)."""
        try:
            if not self.is_ours():
                _refuse_foreign(self)
            handle = self.lock_file.open("a+")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise InputError(f"{self.path} is in use by {_holder(self.lock_file)}", "wait for that run to finish (or stop it); one job per output at a time") from None
        if not _is_open(self.lock_file, handle):
            handle.close()  # the holder finished and removed the lock file between our open and our lock
            return None
        return handle

    def clear(self) -> None:
        """Start over: delete what fpgen wrote here and the partial video it notes as its own; the folder and its lock stay.

        A folder that is not recognisably fpgen's is refused before anything is deleted.
        """
        if not self.is_ours():
            _refuse_foreign(self)
        owned = self.owned_partial()
        for folder in (self.sections_dir, self.segments_dir):
            for path in folder.glob("*"):
                path.unlink(missing_ok=True)
        for name in JOB_FILES - {LOCK}:
            (self.path / name).unlink(missing_ok=True)
        if owned is not None:
            owned.unlink(missing_ok=True)

    def remove(self) -> None:
        """The job is done: ``clear``, then the lock file and the folder.

        The lock file goes last, so a run trying this job is told it is in use until the job is gone.
        """
        if not self.path.exists():
            return
        self.clear()
        for folder in (self.sections_dir, self.segments_dir):
            with suppress(FileNotFoundError):
                folder.rmdir()
        self.lock_file.unlink(missing_ok=True)
        with suppress(OSError):  # another run took the folder meanwhile: it is theirs now
            self.path.rmdir()

    # a damaged job: what is intact, what must be made again

    def check(self) -> JobCheck:
        """Read what a resume needs, before any model loads; the sections are intact up to the first damaged one.

        ``job.json`` or the inputs unreadable: an ``InputError`` (the job cannot go on; start over).
        A section whose file cannot be read, or whose segment is missing or not as long as it
        recorded, is reported: it and the sections after it have to be made again (``truncate``).
        """
        record = self._record()
        self._inputs()
        head = _head_segment(record)
        if head is not None and _segment_frames(self.segments_dir / head) is None:
            raise InputError(f"{self.segments_dir / head} (the extended video's own frames) is missing or damaged", START_OVER)
        for index in range(self.done()):
            problem = self._section_problem(index, record)
            if problem is not None:
                return JobCheck(index, f"section {index + 1} of {self.path} {problem}")
        return JobCheck(self.done())

    def _section_problem(self, index: int, record: dict) -> str | None:
        """What is wrong with a finished section's file or its segment (None: intact)."""
        try:
            tensors, metadata = load_tensors(self.section_file(index))
        except DamagedFileError:
            return f"is damaged ({self.section_file(index).name} cannot be read)"
        incomplete = f"is incomplete ({self.section_file(index).name} lacks its latents or does not say which segment it wrote)"
        if "latents" not in tensors or not metadata.get("transformer_passes", "").isdigit():
            return incomplete
        try:
            written = _written_segment(metadata, record)
        except (KeyError, ValueError):
            return incomplete
        if written is None:
            return None
        name, expected = written
        frames = _segment_frames(self.segments_dir / name)
        if frames != expected:
            return f"lost its frames ({name} is {'missing or damaged' if frames is None else f'{frames} frames, not {expected}'})"
        return None

    def truncate(self, sections: int) -> None:
        """Keep the first ``sections`` finished sections; drop the later ones and every segment not theirs, so they are made again."""
        record = self._record()
        keep = {_head_segment(record)} - {None}
        for index in range(sections):
            written = _written_segment(load_tensors(self.section_file(index))[1], record)
            keep |= {written[0]} if written else set()
        for path in self.sections_dir.glob("*"):
            match = SECTION_FILE.fullmatch(path.name)
            if match is None or int(match[1]) >= sections:
                path.unlink()
        for path in self.segments_dir.glob("*"):
            if path.name not in keep:
                path.unlink()

    def repair(self) -> JobCheck:
        """``check``, then drop what is damaged (``truncate``): the result says what will be made again, for a warning."""
        found = self.check()
        if found.damage is not None:
            self.truncate(found.sections)
        return found


def check_job_paths(output: Path, overwrite: bool) -> None:
    """Refuse, before any work, a job folder or partial video at ``output``'s paths that fpgen did not make.

    A ``.job`` path that is not recognisably fpgen's is refused even with ``overwrite`` (its files
    are the user's and fpgen would mix its own into them); a partial video the job folder does not
    note as its own is replaced only with ``overwrite``.
    """
    folder = JobFolder(job_dir(Path(output)))
    if folder.path.exists() and not folder.is_ours():
        _refuse_foreign(folder)
    partial = partial_path(Path(output))
    if partial.exists() and not overwrite and folder.owned_partial() != partial:
        raise InputError(f"{partial} exists and is not this job's partial video", "move it away, choose another -o/--output, or pass --overwrite")


def _refuse_foreign(folder: JobFolder) -> NoReturn:
    """An existing ``.job`` path fpgen did not make: never written into, never deleted."""
    foreign = folder.foreign_entries() if folder.path.is_dir() else []
    why = f"it holds {foreign[0].relative_to(folder.path)}, which fpgen never writes there" if foreign else "it has no job.json"
    raise InputError(f"{folder.path} exists and is not an fpgen job folder ({why})", "move it away, or choose another -o/--output")


def _is_job_record(record) -> bool:
    """What ``create`` writes: the settings, the section order, the frame offset and step."""
    if not isinstance(record, dict):
        return False
    step = record.get("frame_step", 1)  # jobs started before --fps have none: every frame kept
    return isinstance(record.get("job"), dict) and isinstance(record.get("frame_offset"), int) and record.get("order") in ("inverted", "forward") and isinstance(step, int) and step >= 1


def _is_open(path: Path, handle: IO) -> bool:
    """Whether ``path`` still names the file ``handle`` has open (not removed, nor replaced by another)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _read_json(path: Path) -> dict:
    """A small JSON object, or {} when it is missing or unreadable (being written, or foreign)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_owner(handle: IO, partial: Path) -> None:
    """Say who holds the lock (for the run it refuses) and which partial video the job owns."""
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    owner = {"fpgen": __version__, "pid": os.getpid(), "host": socket.gethostname(), "since": since, "partial_video": str(partial)}
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(owner))
    handle.flush()


def _holder(lock_file: Path) -> str:
    owner = _read_json(lock_file)
    if "pid" not in owner:
        return "another fpgen run"
    return f"another fpgen run (pid {owner['pid']} on {owner.get('host', '?')}, since {owner.get('since', '?')})"


def _head_segment(record: dict) -> str | None:
    """The segment of an extended video's own frames, written before its job began (None: not an extension)."""
    return segment_name(0) if record["job"].get("extend") is not None else None


def _written_segment(metadata: dict[str, str], record: dict) -> tuple[str, int] | None:
    """The segment a section file says its frames went to, and how many it kept (None: none; they all stayed pending or were dropped)."""
    first = int(metadata["first_frame"]) + record["frame_offset"]
    kept = kept_count(first, int(metadata["frames"]), record.get("frame_step", 1))
    return (segment_name(first), kept) if kept else None


def _segment_frames(path: Path) -> int | None:
    """How many frames a segment holds (None: missing, unreadable, or cut short)."""
    try:
        samples = read_track(path).samples
        return len(samples) if all(s.offset + s.size <= path.stat().st_size for s in samples) else None
    except (OSError, struct.error, TypeError, IndexError, ValueError):
        return None


def find_job(path: Path) -> JobFolder:
    """The job folder of ``path``: the folder itself, or the output file the job was started with."""
    path = Path(path).expanduser().absolute()
    folder = JobFolder(path if path.suffix == ".job" or (path / "job.json").is_file() else job_dir(path))
    if not folder.exists():
        raise InputError(f"no unfinished job at {path}", "pass the output file of an interrupted job, or its .job folder")
    return folder
