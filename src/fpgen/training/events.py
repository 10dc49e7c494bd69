"""What a training run tells its listener, and the one object that records it.

The events are plain data, so a display (``fpgen.cli.report.TrainingDisplay``) depends on this
module and not on the loop. The main process records through a ``RunLog``: ``run.json`` (the
settings ``--resume`` compares), ``log.jsonl``/``eval.jsonl``, TensorBoard scalars and the events;
the other processes of a multi-GPU run get a ``SilentLog``, the same methods doing nothing, so the
loop never asks which process it is in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fpgen.training.config import TrainConfig, save_run

LOG_FILE, EVAL_FILE, RUN_FILE = "log.jsonl", "eval.jsonl", "run.json"


@dataclass(frozen=True)
class CacheProgress:
    what: str
    done: int
    total: int


@dataclass(frozen=True)
class ClipsSkipped:
    """Clips that ffmpeg cannot read: named once, then training goes on without them."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Started:
    what: str  # "a rank-32 LoRA on 480 linears", "every weight"
    clips: int
    held_out: int
    samples: int
    trainable: int  # parameters
    device: str
    precision: str
    first_step: int  # 0, or the step a resumed run continues from
    max_steps: int
    order: str


@dataclass(frozen=True)
class Logged:
    step: int
    loss: float
    lr: float
    grad_norm: float | None
    epoch: int
    seconds_per_step: float
    peak_memory_gb: float | None


@dataclass(frozen=True)
class Evaluated:
    step: int
    loss: float


@dataclass(frozen=True)
class Saved:
    step: int
    path: Path


@dataclass(frozen=True)
class Validated:
    step: int
    path: Path


TrainEvent = CacheProgress | ClipsSkipped | Started | Logged | Evaluated | Saved | Validated
Listener = Callable[[TrainEvent], None]


def ignore(event: TrainEvent) -> None:
    """The listener of a run nobody watches."""


class RunLog:
    """The run's records: events to the listener, rows to the JSON Lines logs, scalars to TensorBoard."""

    def __init__(self, output: Path, listener: Listener | None, tracker=None):
        self.output, self.listener, self.tracker = Path(output), listener or ignore, tracker

    def event(self, event: TrainEvent) -> None:
        self.listener(event)

    def start(self, config: TrainConfig, resumed_at: int | None) -> None:
        """A fresh run records its settings and starts its logs afresh; a resumed one drops the rows after its checkpoint (they come again)."""
        if resumed_at is None:
            self.output.mkdir(parents=True, exist_ok=True)
            save_run(config, self.output / RUN_FILE)
        for name in (LOG_FILE, EVAL_FILE):
            self._keep_rows(name, -1 if resumed_at is None else resumed_at)
        if self.tracker is not None:
            self.tracker.init_trackers("fpgen-finetune", config={k: str(v) for k, v in config.to_json().items()})

    def finish(self) -> None:
        if self.tracker is not None:
            self.tracker.end_training()

    def logged(self, row: Logged) -> None:
        self._append(LOG_FILE, {"step": row.step, "loss": row.loss, "lr": row.lr, "grad_norm": row.grad_norm, "epoch": row.epoch,
                                "s_per_step": round(row.seconds_per_step, 4), "peak_memory_gb": row.peak_memory_gb})  # fmt: skip
        self._track({"loss": row.loss, "lr": row.lr}, row.step)
        self.event(row)

    def evaluated(self, row: Evaluated, sections: int) -> None:
        self._append(EVAL_FILE, {"step": row.step, "eval_loss": row.loss, "sections": sections})
        self._track({"eval_loss": row.loss}, row.step)
        self.event(row)

    def _append(self, name: str, row: dict) -> None:
        with open(self.output / name, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def _track(self, values: dict, step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(values, step=step)

    def _keep_rows(self, name: str, last_step: int) -> None:
        path = self.output / name
        if path.is_file():
            rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
            path.write_text("".join(row + "\n" for row in rows))


class SilentLog(RunLog):
    """The log of a process that does not report (all but the main one of a multi-GPU run): it records nothing."""

    def event(self, event: TrainEvent) -> None:
        pass

    def start(self, config: TrainConfig, resumed_at: int | None) -> None:
        pass

    def finish(self) -> None:
        pass

    def logged(self, row: Logged) -> None:
        pass

    def evaluated(self, row: Evaluated, sections: int) -> None:
        pass
