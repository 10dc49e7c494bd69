"""How the CLI talks: rich progress on a terminal, plain lines otherwise, one JSON document with --json.

Messages and progress go to stderr; the result (a path, a batch summary, or the JSON document) goes
to stdout, so scripts can capture it.
"""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class Reporter:
    def __init__(self, json_mode: bool = False, quiet: bool = False, results: bool = True):
        self.json_mode, self.quiet, self.results = json_mode, quiet, results
        self.console = Console(stderr=True, highlight=False)
        self.interactive = self.console.is_terminal and not json_mode and not quiet

    def quieter(self) -> Reporter:
        """The same reporter without result output (a batch prints one summary instead)."""
        return Reporter(self.json_mode, self.quiet, results=False)

    def info(self, message: str) -> None:
        if not self.quiet and not self.json_mode:
            self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def result(self, data: dict, line: str) -> None:
        if not self.results:
            return
        print(json.dumps(data, default=str) if self.json_mode else line)

    def job_progress(self, sections: int, steps: int, window: int) -> JobProgress:
        return JobProgress(self, sections, steps, window)

    def batch_summary(self, outcomes: list) -> None:
        counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "resumed", "skipped", "failed", "interrupted", "not run")}
        if self.json_mode:
            print(json.dumps({"jobs": [o.as_dict() for o in outcomes], **counts}, default=str))
            return
        table = Table(title="fpgen batch", title_justify="left")
        for column in ("line", "status", "output", "frames", "time", "error"):
            table.add_column(column, overflow="fold")
        for o in outcomes:
            elapsed = f"{o.elapsed:.1f}s" if o.elapsed is not None else ""
            table.add_row(str(o.line), o.status, o.output or "", str(o.frames or ""), elapsed, o.error or "")
        out = Console(highlight=False, width=max(120, Console().width))
        out.print(table)
        out.print(", ".join(f"{n} {status}" for status, n in counts.items() if n))


class JobProgress:
    """One display for a whole job: sections and steps, elapsed, ETA, and seconds per frame.

    It starts at the first section this run makes, so a resumed job's ETA counts only the work left.
    """

    def __init__(self, reporter: Reporter, sections: int, steps: int, window: int):
        self.reporter, self.sections, self.steps, self.window = reporter, sections, steps, window
        self.started = None
        self.first = 0
        self.made = 0
        self.progress = None
        if reporter.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[rate]}"), console=reporter.console,
            )  # fmt: skip

    def __enter__(self) -> JobProgress:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, event) -> None:
        from fpgen.pipeline import SectionDone, SectionStarted, StepDone  # torch loads only once a job runs

        if isinstance(event, SectionStarted):
            self._section_started(event)
        elif isinstance(event, StepDone) and self.progress:
            self.progress.update(self.task, completed=event.section.index * self.steps + event.step)
        elif isinstance(event, SectionDone):
            self._section_done(event)

    def _section_started(self, event) -> None:
        index = event.section.index
        if self.started is None:
            self.started, self.first = time.perf_counter(), index
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
                f"section {event.section.index + 1}/{self.sections} done (slot {event.section.slot}, {event.transformer_passes} passes) "
                f"{elapsed:.1f}s elapsed, eta {left:.0f}s, {per_frame:.2f} s/frame"
            )
