"""Step caches: skip the block stack on sampling steps where its output would change little.

Each is a hook on ``fpgen.transformer.BlockStack`` (the diffusers-hooks way: it wraps the call of
the stack, and ``reset`` gives every section a fresh state). All three reuse the last computed
residual (the blocks' image-stream output minus their input) when they skip, always compute the
first and last step of a section, and differ only in how they decide:

- TeaCache (the official FramePack's): the accumulated, polynomial-rescaled relative L1 change of
  block 0's modulated input;
- First-Block-Cache: block 0 always runs; the rest is skipped while block 0's residual stays within
  ``threshold`` (relative L1) of its value at the last computed pass;
- MagCache: the accumulated error of the model's per-step residual magnitude ratios, measured once
  with the user's weights by ``fpgen calibrate`` (``MagnitudeRecorder``); no tensor is looked at.

Our own small hook classes rather than diffusers' ``HookRegistry``: diffusers' caches hook the
model's blocks and its ``forward``'s cache context, and fpgen drives the blocks itself
(``packed_forward``). Random weights say nothing about the skip rates of real ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fpgen.acceleration import fpgen_cache
from fpgen.errors import InputError

# Rescale polynomial for HunyuanVideo, highest power first (from the official implementation).
RESCALE_COEFFICIENTS = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)
MAGCACHE_RETENTION = 0.2  # the first fifth of the steps always computes (MagCache's default)
MAGCACHE_MAX_SKIPS = 3  # skips in a row at most


def rescale(distance: float) -> float:
    result = 0.0
    for coefficient in RESCALE_COEFFICIENTS:
        result = result * distance + coefficient
    return result


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    return ((current - previous).abs().mean() / previous.abs().mean()).item()


class StepCache:
    """The shared part of a step cache; a subclass says what it measures (``head``) and when to skip (``skip``).

    The step is the index of the section's call modulo ``steps`` (as the official TeaCache counts;
    with ``--cfg`` above 1 two calls make a step, so the count runs ahead as it does there).
    """

    def __init__(self, steps: int, threshold: float):
        self.steps, self.threshold = steps, threshold
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.residual: torch.Tensor | None = None

    def __call__(self, run, hidden, context, temb, attention_mask, rope) -> torch.Tensor:
        step = self.calls % self.steps
        self.calls += 1
        start, context, signal = self.head(hidden, context, temb, attention_mask, rope)
        edge = step == 0 or step == self.steps - 1 or self.residual is None
        if self.skip(step, signal, edge):
            return start + self.residual
        out = self.tail(run, start, context, temb, attention_mask, rope)
        self.remember(out - start)
        return out

    def head(self, hidden, context, temb, attention_mask, rope):
        """``(hidden, context)`` the skippable part starts from, and what the decision looks at."""
        return hidden, context, None

    def tail(self, run, hidden, context, temb, attention_mask, rope) -> torch.Tensor:
        return run(hidden, context, temb, attention_mask, rope)

    def skip(self, step: int, signal, edge: bool) -> bool:
        raise NotImplementedError

    def remember(self, residual: torch.Tensor) -> None:
        self.residual = residual


class TeaCache(StepCache):
    """The official FramePack TeaCache on block 0's modulated input (see the module docstring)."""

    default_threshold = 0.15

    def __init__(self, blocks, steps: int, threshold: float = default_threshold):
        self.blocks = blocks
        super().__init__(steps, threshold)

    def reset(self) -> None:
        super().reset()
        self.accumulated, self.previous = 0.0, None

    def head(self, hidden, context, temb, attention_mask, rope):
        return hidden, context, self.blocks.lend(0, lambda block: block.norm1(hidden, emb=temb)[0])

    def skip(self, step: int, signal, edge: bool) -> bool:
        previous, self.previous = self.previous, signal
        if edge or previous is None:
            self.accumulated = 0.0
            return False
        self.accumulated += rescale(relative_l1(signal, previous))
        if self.accumulated >= self.threshold:
            self.accumulated = 0.0
            return False
        return True


class FirstBlockCache(StepCache):
    """First-Block-Cache: block 0 runs on every call and its residual decides whether the other 59 do.

    It runs the blocks through ``BlockStack.run_span``, so it does not combine with a split stack
    (``--gpus N`` on one video).
    """

    default_threshold = 0.05

    def __init__(self, blocks, steps: int, threshold: float = default_threshold):
        self.blocks = blocks
        super().__init__(steps, threshold)

    def reset(self) -> None:
        super().reset()
        self.reference: torch.Tensor | None = None  # block 0's residual at the last computed pass

    def head(self, hidden, context, temb, attention_mask, rope):
        first, context = self.blocks.run_span(0, 1, hidden, context, temb, attention_mask, rope)
        return first, context, first - hidden

    def tail(self, run, hidden, context, temb, attention_mask, rope) -> torch.Tensor:
        self.blocks.computed += 1
        return self.blocks.run_span(1, None, hidden, context, temb, attention_mask, rope)[0]

    def skip(self, step: int, signal, edge: bool) -> bool:
        if not edge and self.reference is not None and relative_l1(signal, self.reference) < self.threshold:
            return True
        self.reference = signal
        return False


class MagCache(StepCache):
    """MagCache: skip while the accumulated error of the calibrated magnitude ratios stays under ``threshold``."""

    default_threshold = 0.06

    def __init__(self, ratios: tuple[float, ...], steps: int, threshold: float = default_threshold):
        self.ratios = ratios
        super().__init__(steps, threshold)

    def reset(self) -> None:
        super().reset()
        self.restart()

    def restart(self) -> None:
        self.ratio, self.error, self.run_length = 1.0, 0.0, 0

    def skip(self, step: int, signal, edge: bool) -> bool:
        if edge or step < int(MAGCACHE_RETENTION * self.steps + 0.5):
            self.restart()
            return False
        self.ratio *= self.ratios[step]
        self.error += abs(1.0 - self.ratio)
        self.run_length += 1
        if self.error < self.threshold and self.run_length <= MAGCACHE_MAX_SKIPS:
            return True
        self.restart()
        return False


class MagnitudeRecorder(StepCache):
    """Computes every call and records MagCache's ratio: the mean over tokens of |residual| / |previous residual|.

    ``sections`` holds each finished section's ratios (the first step's is 1).
    """

    def __init__(self, steps: int):
        self.sections: list[list[float]] = []
        super().__init__(steps, 0.0)

    def reset(self) -> None:
        if getattr(self, "current", None):
            self.sections.append(self.current)
        super().reset()
        self.current: list[float] = []

    def skip(self, step: int, signal, edge: bool) -> bool:
        return False

    def remember(self, residual: torch.Tensor) -> None:
        if self.residual is None or len(self.current) % self.steps == 0:
            self.current.append(1.0)
        else:
            norms = torch.linalg.norm(residual.float(), dim=-1) / (torch.linalg.norm(self.residual.float(), dim=-1) + 1e-8)
            self.current.append(norms.mean().item())
        super().remember(residual)

    def ratios(self) -> tuple[float, ...]:
        """Per step, the mean over the sections recorded (call ``reset`` after the last one)."""
        return tuple(sum(section[i] for section in self.sections) / len(self.sections) for i in range(self.steps))


DEFAULT_THRESHOLDS = {"teacache": TeaCache.default_threshold, "magcache": MagCache.default_threshold, "fbcache": FirstBlockCache.default_threshold}


@dataclass(frozen=True)
class StepCachePlan:
    """The step cache a job runs with, worked out by ``fpgen.config.resolve`` (MagCache's ratios read there)."""

    kind: str = "none"
    threshold: float = 0.0
    ratios: tuple[float, ...] = ()

    def hook(self, blocks, steps: int) -> StepCache | None:
        if self.kind == "teacache":
            return TeaCache(blocks, steps, self.threshold)
        if self.kind == "fbcache":
            return FirstBlockCache(blocks, steps, self.threshold)
        if self.kind == "magcache":
            return MagCache(self.ratios, steps, self.threshold)
        return None


def calibration_folder() -> Path:
    """Where ``fpgen calibrate`` keeps MagCache's ratios (under fpgen's cache folder)."""
    return fpgen_cache() / "magcache"


def calibration_key(transformer: Path, loras: tuple[str, ...], sigmas: torch.Tensor) -> str:
    """What decides the magnitude ratios: the transformer's weight files (their resolved paths, sizes and times;
    a Hub snapshot's files resolve to content-named blobs), the LoRAs merged in, and the step schedule (steps and shift)."""
    files = sorted(Path(transformer).glob("*.safetensors"))
    stats = [(os.path.realpath(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    schedule = [round(float(s), 6) for s in sigmas]
    return hashlib.sha256(json.dumps([stats, list(loras), schedule]).encode()).hexdigest()[:20]


def calibration_path(key: str) -> Path:
    return calibration_folder() / f"{key}.json"


def save_calibration(key: str, ratios: tuple[float, ...], about: dict) -> Path:
    """Write the ratios (JSON: data only) atomically; a calibration made again replaces the old one."""
    path = calibration_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"ratios": list(ratios), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **about}, indent=1))
    partial.replace(path)
    return path


def read_calibration(key: str, steps: int, how_to: str) -> tuple[float, ...]:
    """The ratios stored for ``key``; a one-line error saying how to calibrate when there are none (or they are damaged)."""
    path = calibration_path(key)
    try:
        ratios = tuple(float(r) for r in json.loads(path.read_text())["ratios"])
    except FileNotFoundError:
        raise InputError("--step-cache magcache needs this model's magnitude ratios at these steps and size", f"measure them once with: {how_to}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"the MagCache calibration {path} is damaged", f"make it again with: {how_to}") from None
    if len(ratios) != steps or not all(math.isfinite(r) and r > 0 for r in ratios):
        raise InputError(f"the MagCache calibration {path} does not hold {steps} positive ratios", f"make it again with: {how_to}")
    return ratios
