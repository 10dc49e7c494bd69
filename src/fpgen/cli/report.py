"""How the CLI talks: rich progress on a terminal, plain lines otherwise, one JSON document with --json.

Messages and progress go to stderr; the result (a path, or the JSON document) goes to stdout, so
scripts can capture it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Column
from rich.progress import (
    BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn,
)  # fmt: skip

if TYPE_CHECKING:  # the pipeline imports torch, which commands like `fpgen download` do without
    from fpgen.pipeline import Event


class Reporter:
    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode, self.quiet = json_mode, quiet
        self.console = Console(stderr=True, highlight=False)
        self.interactive = self.console.is_terminal and not json_mode and not quiet

    def info(self, message: str) -> None:
        if not self.quiet and not self.json_mode:
            self.console.print(message, markup=False, soft_wrap=True) if not self.interactive else self.console.print(message)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def result(self, data: dict, line: str) -> None:
        if self.json_mode:
            print(json.dumps(data, default=str))
        else:
            print(line)

    def job_progress(self, sections: int, steps: int, frames: int) -> JobProgress:
        return JobProgress(self, sections, steps, frames)


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
    """One display for a whole job: sections and steps, elapsed, ETA, and seconds per frame."""

    def __init__(self, reporter: Reporter, sections: int, steps: int, frames: int):
        self.reporter, self.sections, self.steps, self.frames = reporter, sections, steps, frames
        self.started = time.perf_counter()
        self.done_sections = 0
        self.progress = None
        if reporter.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[rate]}"), console=reporter.console,
            )  # fmt: skip
            self.task = self.progress.add_task("section 1", total=sections * steps, rate="")

    def __call__(self, event: Event) -> None:
        from fpgen.pipeline import SectionDone, StepDone

        if isinstance(event, StepDone) and self.progress:
            completed = event.section.index * self.steps + event.step
            self.progress.update(self.task, completed=completed, description=f"section {event.section.index + 1}/{self.sections}")
        elif isinstance(event, SectionDone):
            self.done_sections += 1
            elapsed = time.perf_counter() - self.started
            per_frame = elapsed / (self.frames * self.done_sections / self.sections)
            if self.progress:
                self.progress.update(self.task, rate=f"{per_frame:.2f} s/frame")
            else:
                self.reporter.info(
                    f"section {self.done_sections}/{self.sections} done (slot {event.section.slot}, "
                    f"{event.transformer_passes} passes) {elapsed:.1f}s elapsed, {per_frame:.2f} s/frame"
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
