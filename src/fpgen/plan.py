"""The section plan: how many sections a video has, and in which order they are generated.

A video is the start latent followed by ``count`` windows of ``window`` latent frames. Section ``slot``
covers latents ``1 + slot*window`` to ``1 + (slot+1)*window`` in time. The original model
(FramePackI2V_HY) generates the last slot first and walks back to the start image (inverted
anti-drifting); F1 walks forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fpgen.errors import InputError
from fpgen.geometry import latents_to_frames, section_seconds

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
    prompt_blend: int = 0  # sections over which a prompt change blends from the previous prompt

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

    def prompt_mix(self, section: Section) -> tuple[str, str, float]:
        """``(previous, prompt, weight)``: the section is conditioned on ``weight`` of its prompt and the rest of the previous one.

        A change at slot c blends over ``prompt_blend`` sections: slot c+k (k < prompt_blend) weighs
        the new prompt (k+1)/(prompt_blend+1), so neither end of the blend repeats a pure prompt.
        """
        slot = section.slot - self.offset
        prompt = self.prompts[slot]
        change = next((c for c in range(slot, max(0, slot - self.prompt_blend), -1) if self.prompts[c - 1] != prompt), None) if slot else None
        if change is None:
            return prompt, prompt, 1.0
        return self.prompts[change - 1], prompt, (slot - change + 1) / (self.prompt_blend + 1)


def plan_sections(count: int, window: int, order: Order, offset: int = 0, prompts: tuple[str, ...] = (), prompt_blend: int = 0) -> SectionPlan:
    """``count`` sections after ``offset`` windows that are already there (the paddings count only the new ones)."""
    if count < 1 or window < 1 or offset < 0:
        raise ValueError("a plan needs at least one section of at least one latent frame")
    if order == "inverted":
        sections = tuple(Section(i, offset + count - 1 - i, p) for i, p in enumerate(inverted_paddings(count)))
    elif order == "forward":
        sections = tuple(Section(i, offset + i, 0) for i in range(count))
    else:
        raise ValueError(f"unknown section order {order!r}")
    return SectionPlan(order, window, sections, offset, tuple(prompts), prompt_blend)


def snap_keyframes(times: list[float], count: int, window: int, has_end: bool) -> tuple[list[int], list[str]]:
    """The section boundary each keyframe time snaps to (1..count, counted from the new part's start), and notes on the snapping.

    Boundary b is where section b-1 ends; boundary ``count`` is the video's end, where a keyframe
    is the end picture. A keyframe cannot sit on the start picture, past the end, on the end
    picture's place or on another keyframe's boundary.
    """
    step = section_seconds(window)
    boundaries, notes = [], []
    for seconds in times:
        b = math.floor(seconds / step + 0.5)
        if not 1 <= b <= count:
            raise InputError(f"--keyframe at {seconds:g}s snaps to {b * step:.2f}s, outside the video's section boundaries ({step:.2f}s to {count * step:.2f}s)", f"give a time between {step / 2:.2f}s and {(count + 0.5) * step:.2f}s (sections are {step:.2f}s)")
        if b == count and has_end:
            raise InputError(f"--keyframe at {seconds:g}s snaps to the video's end, where --end-image is", "drop one of them, or move the keyframe earlier")
        if b in boundaries:
            raise InputError(f"two --keyframe pictures snap to the same section boundary ({b * step:.2f}s)", f"keep them at least {step:.2f}s apart")
        boundaries.append(b)
        if abs(b * step - seconds) > 1e-6:
            notes.append(f"keyframe at {seconds:g}s snaps to the section boundary at {b * step:.2f}s")
    return boundaries, notes
