"""``fpgen warmup``: compile the transformer blocks ahead, for the usual sizes, into fpgen's compile cache.

A run is a real job per size (a grey picture, one section of two steps, thrown away), so the cache
gets exactly the graphs a later ``fpgen generate`` looks up. Two prompt lengths take turns: the
second makes the text length a dynamic dimension, which torch.compile records in the same cache
folder, so later processes compile the dynamic graph first and find it there for any prompt and size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fpgen.acceleration import compile_cache_folder, rounding_of
from fpgen.buckets import pick_bucket

USUAL_ASPECTS = ((1, 1), (3, 4), (4, 3), (9, 16), (16, 9))  # height:width of the pictures people start from
PROMPTS = ("A person walks.", "A person walks through a sunny park, waving at the camera while the wind moves the trees and the leaves fall.")
STEPS = 2  # the compiled graphs do not depend on the step count


def usual_sizes(resolution: int) -> tuple[tuple[int, int], ...]:
    """The size buckets of the usual aspect ratios at ``resolution`` (each once)."""
    return tuple(dict.fromkeys(pick_bucket(h * 1000, w * 1000, resolution) for h, w in USUAL_ASPECTS))


@dataclass(frozen=True)
class WarmupPlan:
    folder: Path  # the compile cache folder the kernels go to (fpgen.acceleration's key)
    device: torch.device
    dtype: torch.dtype
    fast: bool
    sizes: tuple[tuple[int, int], ...]

    def runs(self) -> list[dict]:
        return [{"size": f"{h}x{w}", "prompt": PROMPTS[i % len(PROMPTS)], "steps": STEPS} for i, (h, w) in enumerate(self.sizes)]

    def describe(self) -> dict:
        """The plan as JSON-ready data, with what the cache folder holds now."""
        files = [f for f in self.folder.rglob("*") if f.is_file()] if self.folder.is_dir() else []
        return {
            "cache": str(self.folder), "cached_files": len(files), "cached_bytes": sum(f.stat().st_size for f in files),
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "mode": "fast" if self.fast else "exact",
            "runs": self.runs(),
        }  # fmt: skip


def plan_warmup(device: torch.device, dtype: torch.dtype, fast: bool, sizes: tuple[tuple[int, int], ...]) -> WarmupPlan:
    """What a warmup compiles and where it goes: fast mode's kernels fuse freely, the others round as eager PyTorch does."""
    return WarmupPlan(compile_cache_folder(device, dtype, rounding_of(not fast)), device, dtype, fast, sizes)


def run_warmup(plan: WarmupPlan, components, options: dict, on_run: Callable[[dict], None]) -> None:
    """One thrown-away job per planned size on the loaded ``components`` (``options``: the model's ``fpgen generate`` options)."""
    from fpgen.config import resolve
    from fpgen.run import run_job
    from fpgen.spec import JobSpec

    with tempfile.TemporaryDirectory(prefix="fpgen-warmup-") as work:
        for run in plan.runs():
            height, width = (int(v) for v in run["size"].split("x"))
            spec = JobSpec.from_options({
                **options, "output": Path(work) / f"{run['size']}.mp4", "prompt": run["prompt"], "steps": STEPS, "seconds": 1.0,
                "size": run["size"], "fast": plan.fast, "step_cache": "none",
            })  # fmt: skip
            on_run(run)
            run_job(components, resolve(spec, overwrite=True, loaded=components, picture=np.full((height, width, 3), 128, np.uint8)))
