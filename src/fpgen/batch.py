"""Batches: many jobs from one file, each model loaded once (over several GPUs: ``fpgen.workers``).

A jobs file is JSON Lines (one object per line) or CSV (a header row of option names); each job's
fields are ``fpgen generate`` options by name (``seed``, ``end-image`` or ``end_image``, ...). Jobs
run grouped by the models they need, so each model is loaded once; a job whose output exists is
skipped unless it asks for ``overwrite``; a failing job is reported and the batch goes on.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fpgen.errors import ExitCode, FpgenError, InputError, Interrupted
from fpgen.spec import JobSpec
from fpgen.errors import is_out_of_memory


@dataclass(frozen=True)
class BatchJob:
    line: int  # where it is in the file (1-based, counting the CSV header)
    fields: dict  # the option values as written
    spec: JobSpec | None = None  # None when the fields are wrong (see error)
    error: str | None = None
    overwrite: bool = False
    preview: bool = False


@dataclass(frozen=True)
class Outcome:
    line: int
    output: str | None
    status: str  # done, resumed, skipped, failed, interrupted, not run
    frames: int | None = None
    elapsed: float | None = None
    error: str | None = None
    exit_code: int = ExitCode.OK
    worker: str | None = None  # the worker process that ran it (``fpgen.workers``); None in a one-process batch

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def read_jobs_file(path: Path) -> list[tuple[int, dict]]:
    """(line number, fields) of every job in a JSON Lines or CSV file; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read jobs file {path} ({type(exc).__name__})", "pass a JSON Lines or CSV file") from None
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    if not first:
        raise InputError(f"jobs file {path} has no jobs", "write one job per line (JSON Lines, or CSV with a header row)")
    if first.startswith("{"):
        jobs = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    fields = json.loads(line)
                except ValueError as exc:
                    fields = {"__error__": f"not valid JSON ({exc.msg} at column {exc.colno})"}
                jobs.append((number, fields if isinstance(fields, dict) else {"__error__": "not a JSON object"}))
        return jobs
    rows = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(rows)))
    jobs = []
    for row in reader:
        fields = {k.strip(): v for k, v in row.items() if k is not None and v not in (None, "")}
        if None in row:
            fields["__error__"] = "more cells than the header has columns"
        if fields:
            jobs.append((reader.line_num, fields))
    return jobs


def check_outputs(jobs: list[BatchJob]) -> list[BatchJob]:
    """A second job writing the same output as an earlier one is an error, not a silent skip."""
    seen: dict[Path, int] = {}
    checked = []
    for job in jobs:
        if job.spec is not None and job.spec.output in seen:
            job = BatchJob(job.line, job.fields, None, f"same output as line {seen[job.spec.output]} ({job.spec.output})")
        elif job.spec is not None:
            seen[job.spec.output] = job.line
        checked.append(job)
    return checked


def run_batch(
    jobs: list[BatchJob],
    load_models: Callable[[JobSpec], object],
    run_job: Callable[[object, BatchJob], object],
    on_job: Callable[[int, BatchJob], None] = lambda position, job: None,
) -> list[Outcome]:
    """Run every valid job in this process, grouped by the models it needs (each loaded once); outcomes in file order.

    ``run_job(models, job)`` makes one video and returns the API's ``VideoResult``. Ctrl-C stops
    the batch: the job running is left resumable (running the batch again continues it) and the
    rest are reported as not run.
    """
    outcomes, todo = triage(jobs)
    for outcome in run_jobs(todo, load_models, run_job, on_job):
        outcomes[outcome.line] = outcome
    return in_file_order(jobs, outcomes)


def triage(jobs: list[BatchJob]) -> tuple[dict[int, Outcome], list[BatchJob]]:
    """The outcomes of lines that need no run (bad fields, output already there), and the jobs to run grouped by model."""
    outcomes: dict[int, Outcome] = {}
    for job in jobs:
        if job.spec is None:
            outcomes[job.line] = Outcome(job.line, job.fields.get("output"), "failed", error=job.error, exit_code=ExitCode.USAGE)
        elif job.spec.output.exists() and not job.overwrite:
            outcomes[job.line] = Outcome(job.line, str(job.spec.output), "skipped", error="output exists")
    groups: dict[tuple, list[BatchJob]] = {}
    for job in jobs:
        if job.line not in outcomes:
            groups.setdefault(job.spec.models_key(), []).append(job)
    return outcomes, [job for group in groups.values() for job in group]


def in_file_order(jobs: list[BatchJob], outcomes: dict[int, Outcome]) -> list[Outcome]:
    """Every job's outcome in file order; a job without one was never started."""
    return [outcomes.get(job.line) or Outcome(job.line, str(job.spec.output) if job.spec else None, "not run") for job in jobs]


def run_jobs(
    jobs: Iterable[BatchJob],
    load_models: Callable[[JobSpec], object],
    run_job: Callable[[object, BatchJob], object],
    on_job: Callable[[int, BatchJob], None],
) -> Iterator[Outcome]:
    """Run jobs in the order given, yielding each outcome; the models stay loaded while the next job needs the same ones.

    Models that failed to load fail the following jobs that need them without loading again. An
    interruption ends the run after yielding its outcome, so a worker (``fpgen.workers``) can take
    its jobs from a queue one at a time through the same code.
    """
    key, models, load_error = None, None, None
    for position, job in enumerate(jobs, start=1):
        if job.spec.models_key() != key:
            key, models, load_error = job.spec.models_key(), None, None  # the old models are freed before the new ones load
        on_job(position, job)
        started = time.perf_counter()
        try:
            if models is None and load_error is None:
                models = load_models(job.spec)
            if load_error is not None:
                raise load_error
            video = run_job(models, job)
            outcome = Outcome(job.line, str(video.output), "resumed" if video.resumed_sections else "done", video.frames, round(video.elapsed, 2))
        except (KeyboardInterrupt, Interrupted) as stop:
            yield Outcome(job.line, str(job.spec.output), "interrupted", error=str(stop) or "interrupted", exit_code=ExitCode.INTERRUPTED)
            return
        except Exception as error:  # one failing job must not stop the batch
            load_error = error if models is None else None
            outcome = failure(job, error, time.perf_counter() - started)
        yield outcome


def failure(job: BatchJob, error: Exception, elapsed: float) -> Outcome:
    if isinstance(error, FpgenError):
        message, code = str(error), error.exit_code
    elif is_out_of_memory(error):
        message, code = f"out of memory: {str(error).splitlines()[0][:200]}", ExitCode.OUT_OF_MEMORY
    else:
        message, code = f"unexpected {type(error).__name__}: {error}", ExitCode.FAILED
    return Outcome(job.line, str(job.spec.output), "failed", elapsed=round(elapsed, 2), error=message, exit_code=code)
