"""How the CLI talks: rich progress on a terminal, plain lines otherwise, one JSON document with --json.

Messages and progress go to stderr; the result (a path, or the JSON document) goes to stdout, so
scripts can capture it.
"""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fpgen.pipeline import Event, SectionDone, StepDone


class Reporter:
    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode, self.quiet = json_mode, quiet
        self.console = Console(stderr=True, highlight=False)
        self.interactive = self.console.is_terminal and not json_mode and not quiet

    def info(self, message: str) -> None:
        if not self.quiet and not self.json_mode:
            self.console.print(message, markup=False) if not self.interactive else self.console.print(message)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def result(self, data: dict, line: str) -> None:
        if self.json_mode:
            print(json.dumps(data, default=str))
        else:
            print(line)

    def job_progress(self, sections: int, steps: int, frames: int) -> JobProgress:
        return JobProgress(self, sections, steps, frames)


class JobProgress:
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

    def __enter__(self) -> JobProgress:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, event: Event) -> None:
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
