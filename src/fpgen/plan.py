"""The section plan: how many sections a video has, and in which order they are generated.

A video is the start latent followed by ``count`` windows of ``window`` latent frames. Section ``slot``
covers latents ``1 + slot*window`` to ``1 + (slot+1)*window`` in time. The original model
(FramePackI2V_HY) generates the last slot first and walks back to the start image (inverted
anti-drifting); F1 walks forwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fpgen.geometry import latents_to_frames

Order = Literal["inverted", "forward"]


def inverted_paddings(count: int) -> list[int]:
    """Blank-window counts between the start frame and each section, in generation order.

    Up to 4 sections the ramp is n-1..0; beyond, the official code repeats 2 instead of counting
    down ("duplicating some items looks better than expanding"): [3, 2, ..., 2, 1, 0].
    """
    if count > 4:
        return [3] + [2] * (count - 3) + [1, 0]
    return list(reversed(range(count)))


@dataclass(frozen=True)
class Section:
    index: int  # position in generation order
    slot: int  # position in time: 0 is the window right after the start frame
    padding: int  # inverted order only: blank windows between the start frame and this one (0 for forward)

    @property
    def is_first(self) -> bool:
        return self.index == 0


@dataclass(frozen=True)
class SectionPlan:
    order: Order
    window: int
    sections: tuple[Section, ...]
    offset: int = 0  # windows of given latents before the first section (the tail of an extended video)
    prompts: tuple[str, ...] = ()  # each section's prompt, in time order (generation only)

    @property
    def count(self) -> int:
        return len(self.sections)

    @property
    def num_latents(self) -> int:
        return 1 + (self.offset + self.count) * self.window

    @property
    def num_frames(self) -> int:
        return latents_to_frames(self.num_latents)

    def is_last(self, section: Section) -> bool:
        return section.index == self.count - 1

    def prompt_of(self, section: Section) -> str:
        return self.prompts[section.slot - self.offset]


def plan_sections(count: int, window: int, order: Order, offset: int = 0, prompts: tuple[str, ...] = ()) -> SectionPlan:
    """``count`` sections after ``offset`` windows that are already there (the paddings count only the new ones)."""
    if count < 1 or window < 1 or offset < 0:
        raise ValueError("a plan needs at least one section of at least one latent frame")
    if order == "inverted":
        sections = tuple(Section(i, offset + count - 1 - i, p) for i, p in enumerate(inverted_paddings(count)))
    elif order == "forward":
        sections = tuple(Section(i, offset + i, 0) for i in range(count))
    else:
        raise ValueError(f"unknown section order {order!r}")
    return SectionPlan(order, window, sections, offset, tuple(prompts))
