"""What a running job tells its listeners: the CLI's progress, the job folder, tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fpgen.packing import PackedContext
from fpgen.plan import Section, SectionPlan
from fpgen.transformer import Conditioning


@dataclass(frozen=True)
class StepDone:
    section: Section
    step: int  # 1-based
    steps: int


@dataclass(frozen=True)
class SectionStarted:
    """What a section is conditioned on, just before it is sampled."""

    section: Section
    context: PackedContext  # the packed history, its RoPE indices, and any end or extension frames
    prompt: str
    conditioning: Conditioning


@dataclass(frozen=True)
class SectionDone:
    section: Section
    latents: torch.Tensor  # the section's window, float32 CPU
    transformer_passes: int
    frames: torch.Tensor  # frames that became final, (1, 3, T, H, W)
    first_frame: int  # their position in the video
    transformer_calls: int  # passes asked for: a step cache skipped calls - transformer_passes of them

    @property
    def skip_rate(self) -> float:
        return skip_rate(self.transformer_passes, self.transformer_calls)


@dataclass(frozen=True)
class FinishedSection:
    """A section made before the job was interrupted: its window's latents."""

    latents: torch.Tensor
    transformer_passes: int
    transformer_calls: int


def skip_rate(passes: int, calls: int) -> float:
    return round(1 - passes / calls, 4) if calls else 0.0


Event = StepDone | SectionStarted | SectionDone
Listener = Callable[[Event], None]
FrameSink = Callable[[torch.Tensor, int], None]


@dataclass
class Result:
    plan: SectionPlan
    latents: torch.Tensor  # the whole video's latents in time order, start latent (or an extended video's tail) first
    height: int
    width: int
    transformer_passes: list[int] = field(default_factory=list)
    transformer_calls: list[int] = field(default_factory=list)

    @property
    def skip_rates(self) -> list[float]:
        """Per section, the share of transformer passes a step cache skipped."""
        return [skip_rate(passes, calls) for passes, calls in zip(self.transformer_passes, self.transformer_calls)]

    @property
    def num_frames(self) -> int:
        return self.plan.num_frames
