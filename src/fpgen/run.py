"""Running a resolved job: encode, make the frames, and leave either the finished video or a resumable job.

The listeners of a run are the job folder (each finished section is saved), the segmented MP4
sink (frames as they become final) and the caller's ``on_event``. On success the segments are
joined into the output, described in its metadata and the folder is removed; on a stop (Ctrl-C,
SIGTERM, out of memory, a full disk) the partial video and the folder stay, and the error says how
to continue.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fpgen.colormatch import lab_stats, match_colors
from fpgen.conditioning import JobInputs
from fpgen.config import Job
from fpgen.engine import generate_frames
from fpgen.errors import DiskFullError, Interrupted, OutOfMemoryError, is_out_of_memory
from fpgen.events import Event, Listener, Result
from fpgen.extend import head_frames
from fpgen.geometry import FPS, latent_to_frame
from fpgen.jobfolder import JobFolder
from fpgen.loading import Components
from fpgen.metadata import describe_video, mp4_tags, write_sidecar
from fpgen.output import SegmentedMp4, partial_path
from fpgen.tensorfile import save_tensors


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
    fps: int = FPS


def run_job(components: Components, job: Job, on_event: Listener | None = None) -> VideoResult:
    """Make (or finish) the video ``job`` describes; a stop leaves a partial video and the job folder."""
    started = time.perf_counter()
    with job.folder.claim(job.overwrite) as folder:  # one process per job, from here to the end
        result, sink = make_frames(components, job, folder, on_event)
        return finish_job(job, sink, result, time.perf_counter() - started, len(job.saved.finished) if job.saved else 0)


def make_frames(components: Components, job: Job, folder: JobFolder, on_event: Listener | None) -> tuple[Result, SegmentedMp4]:
    """Encode (a new job) or take the saved inputs (a resumed one) and make every section; a stop is explained."""
    output = job.spec.output
    preview = partial_path(output) if job.preview else None
    sink = None
    try:
        if job.saved is None:
            (sink, inputs), finished = start_job(components, job, preview), []
        else:
            inputs, finished = job.saved.inputs, job.saved.finished
            sink = job_sink(job, folder, preview, job.saved.frame_offset, inputs)

        def listen(event: Event) -> None:
            folder.record(event)
            if on_event is not None:
                on_event(event)

        result = generate_frames(components, inputs, job.plan, job.settings, sink, listen, finished, job.step_cache)
        sink.wait()  # the last section's segment: a failure there (a full disk) stops the job like any other
        return result, sink
    except BaseException as error:
        explained = stopped_error(error, folder, job.plan.count, sink.write_partial(partial_path(output)) if sink is not None else None)
        if not folder.exists():  # stopped before the job existed: nothing to resume
            folder.remove()
        if explained is None:
            raise
        raise explained from error


def start_job(components: Components, job: Job, preview: Path | None) -> tuple[SegmentedMp4, JobInputs]:
    """Encode the inputs and create the job folder (a job exists once its folder does)."""
    settings, pictures, folder = job.settings, job.pictures, job.folder
    negative = settings.negative_prompt if settings.cfg != 1.0 else None
    inputs = components.family.parts.encode(components, pictures, job.plan.prompts, negative, settings)
    folder.clear()
    job.spec.output.parent.mkdir(parents=True, exist_ok=True)
    frame_offset = pictures.tail.frame_offset if pictures.tail is not None else 0
    sink = job_sink(job, folder, preview, frame_offset, inputs)
    if pictures.tail is not None:  # before the job exists: a resumed job always has the given video's frames
        sink.write(head_frames(pictures.tail, settings.window, components.family.sections.tail), 0)
    folder.create(job.spec.options(), inputs, job.plan.order, frame_offset, job.rate.step)
    return sink, inputs


def job_sink(job: Job, folder: JobFolder, preview: Path | None, frame_offset: int, inputs: JobInputs) -> SegmentedMp4:
    """The job's segmented MP4 at its output rate, its frames colour-matched to the (bucketed) start picture if asked.

    Colour matching ramps in from the first frame the job makes: 0, or with ``--extend`` the first
    of the given video's frames that are cross-faded into the new ones (those before stay as they were).
    """
    own_first = frame_offset + (latent_to_frame(inputs.prefix.shape[2] - job.plan.window) if inputs.lead is not None else 0)
    transform = partial(match_colors, target=lab_stats(inputs.image), fps=job.rate.native, ramp_from=own_first) if job.color_match else None
    return SegmentedMp4(folder.segments_dir, job.spec.crf, preview, frame_offset, job.rate, transform)


def finish_job(job: Job, sink: SegmentedMp4, result: Result, elapsed: float, resumed: int) -> VideoResult:
    """Join the segments into the output, describe it, save the latents if asked, and clean up."""
    output = job.spec.output
    frames = job.rate.frames(sink.frame_offset + job.model.spec.family.frame_count(result.plan))
    description = describe_video(
        job.spec.options(), job.plan.order, frames, result.height, result.width, result.plan.count, result.transformer_passes, elapsed, job.rate.output, job.color_match
    )
    if job.spec.save_latents is not None:
        save_tensors(job.spec.save_latents, {"latents": result.latents.float()})
    sink.finish(output, mp4_tags(description))
    write_sidecar(output, description)
    job.folder.remove()  # with the partial video it made
    return VideoResult(output, frames, result.height, result.width, frames / job.rate.output, elapsed, result, resumed, job.rate.output)


def stopped_error(error: BaseException, folder: JobFolder, count: int, partial: Path | None) -> Exception | None:
    """The user-facing error for a job that stopped early (None: not a kind we explain; let it through)."""
    if isinstance(error, (Interrupted, OutOfMemoryError)):
        return None  # already explained
    if folder.exists():
        kept = f"partial video: {partial}; " if partial else ""
        where, then = f" ({folder.done()}/{count} sections done)", f"continue with: fpgen generate --resume {folder.path}"
    else:
        kept, where, then = "", " (before the first section; nothing was kept)", "run the command again"
    if isinstance(error, KeyboardInterrupt):
        return Interrupted(f"interrupted{where}", kept + then)
    if is_out_of_memory(error):
        return OutOfMemoryError(f"out of memory{where}: {str(error).splitlines()[0][:200]}", kept + "free memory (or use a smaller --size), then " + then)
    if isinstance(error, DiskFullError) or (isinstance(error, OSError) and error.errno == errno.ENOSPC):
        return DiskFullError(f"the disk is full{where}", kept + "free some space, then " + then)
    return None
