"""Timed prompts: ``"0s: a man walks in | 3s: he sits down"``, each prompt taking over at a section boundary.

A video is made of sections of ``4*window`` frames (1.2 s at the default window of 9); a section has
one conditioning, so a prompt's start time is snapped to the nearest section boundary. A section's
prompt depends only on where it lies in time (its slot), never on when it is generated, so the
original model, which generates the end of the video first, gets the same prompts at the same times
as F1. A prompt without a time tag is an ordinary prompt for the whole video.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fpgen.errors import InputError

TIME_TAG = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*s\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class TimedPrompt:
    start: float  # seconds from the start of the (new part of the) video
    text: str


def _entries(text: str) -> list[str]:
    """Entries separated by ``|`` or newlines; blank ones and ``#`` comments skipped."""
    return [e.strip() for line in text.splitlines() for e in line.split("|") if e.strip() and not e.strip().startswith("#")]


def is_timed(text: str) -> bool:
    """A prompt is timed when its first entry starts with a ``<seconds>s:`` tag."""
    entries = _entries(text)
    return bool(entries) and bool(TIME_TAG.match(entries[0]))


KEYFRAME_ENTRY = re.compile(r"^keyframe\s*:\s*(.+)$", re.IGNORECASE)


def split_keyframes(text: str) -> tuple[str, list[str]]:
    """Timed entries ``<seconds>s: keyframe: <picture>`` taken out of a timed prompt, as ``--keyframe`` values ``<seconds>:<picture>``.

    The rest of the entries are kept, one per line; a prompt that is not timed is returned as it is.
    """
    if not is_timed(text):
        return text, []
    kept, keyframes = [], []
    for entry in _entries(text):
        tag = TIME_TAG.match(entry)
        picture = KEYFRAME_ENTRY.match(entry[tag.end() :].strip()) if tag else None
        if picture:
            keyframes.append(f"{tag.group(1)}:{picture.group(1).strip()}")
        else:
            kept.append(entry)
    return ("\n".join(kept), keyframes) if keyframes else (text, [])


def parse_prompts(text: str) -> list[TimedPrompt]:
    """Timed entries ``<seconds>s: <prompt>`` in time order, or the whole text as one prompt from 0 s."""
    if not is_timed(text):
        return [TimedPrompt(0.0, text)]
    prompts = []
    for entry in _entries(text):
        tag = TIME_TAG.match(entry)
        if tag is None:
            raise InputError(f"timed prompt entry {entry!r} has no time", 'write every entry as "<seconds>s: <prompt>", e.g. "0s: a man walks in | 3s: he sits down"')
        prompts.append(TimedPrompt(float(tag.group(1)), entry[tag.end() :].strip()))
    starts = [p.start for p in prompts]
    if starts != sorted(starts):
        raise InputError("timed prompts must be in time order", f"got starts {starts}")
    return prompts


def boundary(start: float, seconds: float) -> int:
    """The section a prompt starting at ``start`` seconds takes over at (sections of ``seconds``): the nearest boundary, ties going later."""
    return math.floor(start / seconds + 0.5)


def section_prompts(prompts: list[TimedPrompt], count: int, seconds: float) -> tuple[list[str], list[str]]:
    """The prompt of each new section in time order (sections of ``seconds``, the family's), and warnings about prompts that never apply.

    The first prompt also covers any time before its tag; a later prompt snapped to the same boundary
    as an earlier one replaces it, and one snapped past the end is not used.
    """
    starts = [0] + [boundary(p.start, seconds) for p in prompts[1:]]
    owners = [max(i for i, first in enumerate(starts) if first <= slot) for slot in range(count)]
    warnings = []
    for i, prompt in enumerate(prompts):
        if i not in owners:
            why = "starts after the video's last section boundary" if starts[i] >= count else "is replaced by a later prompt at the same section boundary"
            warnings.append(f"prompt at {prompt.start:g}s ({prompt.text!r}) {why}; it is not used")
    return [prompts[i].text for i in owners], warnings


def describe(prompts: list[str], seconds: float) -> list[str]:
    """One line per prompt change: where it takes over, in seconds and section."""
    lines = []
    for slot, text in enumerate(prompts):
        if slot == 0 or text != prompts[slot - 1]:
            lines.append(f"from {slot * seconds:.2f}s (section {slot + 1}): {text!r}")
    return lines
