"""How the CLI talks: rich progress on a terminal, plain lines otherwise, one JSON document with --json.

Messages and progress go to stderr; the result (a path, a batch summary, or the JSON document) goes
to stdout, so scripts can capture it.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn,
)  # fmt: skip
from rich.table import Column, Table

from fpgen.training import events as training

if TYPE_CHECKING:  # the pipeline imports torch, which commands like `fpgen download` do without
    from fpgen.events import Event


class Reporter:
    documents_printed = 0  # JSON documents on stdout, by any reporter of this process: the CLI adds an error document only to a run that printed none

    def __init__(self, json_mode: bool = False, quiet: bool = False, results: bool = True, prefix: str = ""):
        self.json_mode, self.quiet, self.results, self.prefix = json_mode, quiet, results, prefix
        self.console = Console(stderr=True, highlight=False)
        self.interactive = self.console.is_terminal and not json_mode and not quiet and not prefix  # workers share the terminal: plain lines

    def quieter(self) -> Reporter:
        """The same reporter without result output (a batch prints one summary instead)."""
        return Reporter(self.json_mode, self.quiet, results=False, prefix=self.prefix)

    def worker(self, label: str) -> Reporter:
        """A batch worker's reporter: its lines start with its label, and results are left to the batch summary."""
        return Reporter(self.json_mode, self.quiet, results=False, prefix=f"[{label}] ")

    def info(self, message: str) -> None:
        if not self.quiet and not self.json_mode:
            self.console.print(self.prefix + message, markup=False, soft_wrap=not self.interactive)

    def warn(self, message: str) -> None:
        print(f"{self.prefix}warning: {message}", file=sys.stderr)

    def result(self, data: dict, line: str) -> None:
        if not self.results:
            return
        if self.json_mode:
            self._print_document(data)
        else:
            print(line)

    @staticmethod
    def _print_document(data: dict) -> None:
        print(json.dumps(data, default=str))
        Reporter.documents_printed += 1

    def job_progress(self, sections: int, steps: int, window: int) -> JobProgress:
        return JobProgress(self, sections, steps, window)

    def batch_summary(self, outcomes: list) -> None:
        counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "resumed", "skipped", "failed", "interrupted", "not run")}
        workers = Counter(o.worker for o in outcomes if o.worker)  # jobs per worker process (empty in a one-process batch)
        if self.json_mode:
            self._print_document({"jobs": [o.as_dict() for o in outcomes], **counts, "workers": dict(sorted(workers.items()))})
            return
        table = Table(title="fpgen batch", title_justify="left")
        columns = ("line", "status", "output", "frames", "time", "error") + (("worker",) if workers else ())
        for column in columns:
            table.add_column(column, overflow="fold")
        for o in outcomes:
            elapsed = f"{o.elapsed:.1f}s" if o.elapsed is not None else ""
            cells = (str(o.line), o.status, o.output or "", str(o.frames or ""), elapsed, o.error or "", o.worker or "")
            table.add_row(*cells[: len(columns)])
        out = Console(highlight=False, width=max(120, Console().width))
        out.print(table)
        if workers:
            out.print(f"{len(workers)} worker(s): " + ", ".join(f"{label} ran {n}" for label, n in sorted(workers.items())))
        out.print(", ".join(f"{n} {status}" for status, n in counts.items() if n))


class LiveDisplay:
    """A context that shows ``self.progress`` (a rich Progress, on a terminal only) while it is open."""

    progress: Progress | None = None

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()


class JobProgress(LiveDisplay):
    """One display for a whole job: sections and steps, elapsed, ETA, and seconds per frame.

    It starts at the first section this run makes, so a resumed job's ETA counts only the work left.
    """

    def __init__(self, reporter: Reporter, sections: int, steps: int, window: int):
        self.reporter, self.sections, self.steps, self.window = reporter, sections, steps, window
        self.started = None
        self.made = 0
        self.progress = None
        if reporter.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[rate]}"), console=reporter.console,
            )  # fmt: skip

    def __call__(self, event: Event) -> None:
        from fpgen.events import SectionDone, SectionStarted, StepDone

        if isinstance(event, SectionStarted):
            self._section_started(event)
        elif isinstance(event, StepDone) and self.progress:
            self.progress.update(self.task, total=self.sections * event.steps, completed=event.section.index * event.steps + event.step)
        elif isinstance(event, SectionDone):
            self._section_done(event)

    def _section_started(self, event) -> None:
        index = event.section.index
        if self.started is None:
            self.started = time.perf_counter()
            if index:
                self.reporter.info(f"continuing at section {index + 1}/{self.sections}")
            if self.progress:
                self.task = self.progress.add_task("", total=self.sections * self.steps, completed=index * self.steps, rate="")
        if self.progress:
            self.progress.update(self.task, description=f"section {index + 1}/{self.sections}")

    def _section_done(self, event) -> None:
        self.made += 1
        elapsed = time.perf_counter() - self.started
        per_frame = elapsed / (4 * self.window * self.made)
        left = (self.sections - event.section.index - 1) * elapsed / self.made
        if self.progress:
            self.progress.update(self.task, rate=f"{per_frame:.2f} s/frame")
        else:
            self.reporter.info(
                f"section {event.section.index + 1}/{self.sections} done (slot {event.section.slot}, {event.transformer_passes} passes, {event.skip_rate:.0%} skipped) "
                f"{elapsed:.1f}s elapsed, eta {left:.0f}s, {per_frame:.2f} s/frame"
            )


class DownloadProgress(LiveDisplay):
    """A download's bytes: a bar for the whole and one for the current file on a terminal; otherwise a
    line per file, and one every half minute while a large file is coming."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, reporter: Reporter, total_bytes: int):
        self.reporter = reporter
        self.finished = 0  # bytes of the files already done
        self.last_line = time.perf_counter()
        self.progress = None
        if reporter.interactive:
            self.progress = Progress(
                TextColumn("{task.description}", table_column=Column(width=36, no_wrap=True, overflow="ellipsis")),
                BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=reporter.console,
            )  # fmt: skip
            self.overall = self.progress.add_task("all files", total=total_bytes)
            self.current = self.progress.add_task("", total=None)

    def __call__(self, event) -> None:
        from fpgen.download import FileDone, FileProgress, FileStarted, human_size

        if isinstance(event, FileStarted):
            if self.progress:
                label = f"{event.number}/{event.count} {'/'.join(event.file.path.split('/')[-2:])}"
                self.progress.update(self.current, description=escape(label), total=event.file.size, completed=0)
            else:
                self.reporter.info(f"[{event.number}/{event.count}] {event.file.repo}/{event.file.path}  {human_size(event.file.size)}")
        elif isinstance(event, FileProgress):
            if self.progress:
                self.progress.update(self.current, completed=event.done)
                self.progress.update(self.overall, completed=self.finished + event.done)
            elif time.perf_counter() - self.last_line >= self.PLAIN_EVERY_S:
                self.last_line = time.perf_counter()
                self.reporter.info(f"    {human_size(event.done)} of {human_size(event.file.size)}")
        elif isinstance(event, FileDone):
            self.finished += event.file.size
            if self.progress:
                self.progress.update(self.overall, completed=self.finished)


def cache_summary(cache) -> dict | None:
    if cache is None:
        return None
    return {"videos_encoded": cache.videos_encoded, "videos_reused": cache.videos_reused, "texts_encoded": cache.texts_encoded, "texts_reused": cache.texts_reused,
            "encoders_loaded": list(cache.loaded), "too_short": list(cache.too_short), "unreadable": list(cache.unreadable)}  # fmt: skip


class TrainingDisplay(LiveDisplay):
    """Turns training events into a live bar on a terminal, or plain lines (stderr) otherwise."""

    def __init__(self, reporter: Reporter):
        self.reporter, self.task, self.progress = reporter, None, None
        if reporter.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=reporter.console,
            )  # fmt: skip

    def __call__(self, event: training.TrainEvent) -> None:
        if isinstance(event, training.CacheProgress):
            if self.progress:
                self._bar(f"caching {event.what}", event.done, event.total)
            elif event.done == event.total:
                self._say(f"cache: {event.total} {event.what} ready")
        elif isinstance(event, training.ClipsSkipped):
            self.reporter.warn(f"{len(event.names)} clip(s) cannot be read as video and are skipped: {', '.join(event.names)}")
        elif isinstance(event, training.Started):
            self._started(event)
        elif isinstance(event, training.Logged):
            self._logged(event)
        elif isinstance(event, training.Evaluated):
            self._say(f"held-out loss at step {event.step}: {event.loss:.4f}")
        elif isinstance(event, training.Saved):
            self._say(f"checkpoint: {event.path}")
        elif isinstance(event, training.Validated):
            self._say(f"validation video: {event.path}")

    def _started(self, event: training.Started) -> None:
        resumed = f", resuming at step {event.first_step}" if event.first_step else ""
        self._say(f"training {event.what} ({event.trainable:,} parameters) on {event.clips} clip(s) ({event.samples} sections, "
                  f"{event.held_out} held out), {event.order} order, {event.device} ({event.precision}){resumed}")  # fmt: skip
        if self.progress:
            self._bar("training", event.first_step, event.max_steps)

    def _logged(self, event: training.Logged) -> None:
        memory = f", {event.peak_memory_gb:.1f} GB" if event.peak_memory_gb is not None else ""
        status = f"loss {event.loss:.4f}  lr {event.lr:.2e}  {event.seconds_per_step:.2f} s/step{memory}"
        if self.progress:
            self._bar("training", event.step, self.progress.tasks[self.task].total, status)
        else:
            self._say(f"step {event.step}: {status}")

    def _bar(self, description: str, completed: int, total: int, status: str = "") -> None:
        if self.task is None or self.progress.tasks[self.task].description != description:
            self.task = self.progress.add_task(description, total=total, status=status)
        self.progress.update(self.task, completed=completed, total=total, status=status)

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            self.reporter.info(message)
