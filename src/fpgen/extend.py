"""Continuing a video (``--extend``): which of its frames the new part sees, and how the two are joined.

The given video's last ``4*k*window + 1`` frames are VAE-encoded into ``1 + k*window`` latents that
the job treats as ``k`` windows it has already made (``SectionPlan.offset``). New sections follow
them in time:
- F1 packs its history from them exactly as from windows it made itself (k is the smallest number
  of windows filling the 19-frame history, 2 at the default window of 9); its start latent is the
  video's first frame (or IMAGE), as if the same generation had simply gone on.
- The original model makes the new part from the video's last frame as its start picture, and sees
  the video's last ``PAST_LATENTS`` latents just before it (k = 1).
The first new section's decode also spans the video's last window, and the video's last
``4*window - 3`` frames are cross-faded into that decode exactly as two sections are, so the join
is as smooth as any section boundary. Every earlier frame of the video is copied unchanged (but
re-encoded). The video keeps its size when the model can take it (see ``extended_size``).
- Helios (``HELIOS_TAIL``) encodes the video's last whole chunks of ``4*window - 3`` frames one by
  one (3 at the default window, what its 19-latent history holds) and the video's first frame as its
  start latent, as HeliosPipeline's ``video=`` does; every frame of the video is kept unchanged.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from fpgen.buckets import pick_bucket, resize_and_center_crop
from fpgen.geometry import latents_to_frames, overlap_frames, section_frames
from fpgen.errors import InputError
from fpgen.packing import HISTORY_LENGTH
from fpgen.plan import Order
from fpgen.video import iter_mp4



def given_windows(order: Order, window: int) -> int:
    """How many windows of the given video the job encodes: what F1's history can hold, one for the original model."""
    return math.ceil((HISTORY_LENGTH - 1) / window) if order == "forward" else 1


@dataclass(frozen=True)
class TailLayout:
    """Which of a video's last frames a family encodes to continue it, and how they split into windows.

    FramePack encodes a lone frame followed by windows of ``4*window`` frames in one pass, and its
    first new section re-makes the video's last ``4*window - 3`` frames (cross-faded). Helios encodes
    chunks of ``4*window - 3`` frames one by one (HeliosPipeline's ``prepare_video_latents``), as many
    as its 19-latent history holds, and keeps every frame of the video as it is.
    """

    windows: Callable[[int], int]  # window -> windows of the video the job encodes (at most)
    lone_first: bool = True  # a lone frame before the windows (else chunks of 4*window - 3 frames)
    cross_fade: bool = True

    def window_frames(self, window: int) -> int:
        return section_frames(window) if self.lone_first else latents_to_frames(window)

    def frames(self, windows: int, window: int) -> int:
        """Frames of ``windows`` whole windows in this layout."""
        return windows * self.window_frames(window) + self.lone_first

    def whole(self, frames: int, window: int) -> int:
        """Whole windows in ``frames`` frames."""
        return (frames - self.lone_first) // self.window_frames(window)

    def kept(self, window: int) -> int:
        """The video's last frames that the job's first new section re-makes (the rest are copied)."""
        return overlap_frames(window) if self.cross_fade else 0


def helios_windows(window: int) -> int:
    return math.ceil(HISTORY_LENGTH / window)


INVERTED_TAIL = TailLayout(partial(given_windows, "inverted"))
FORWARD_TAIL = TailLayout(partial(given_windows, "forward"))
HELIOS_TAIL = TailLayout(helios_windows, lone_first=False, cross_fade=False)


@dataclass(frozen=True)
class VideoTail:
    """What generation needs from the video being extended, at the new video's size."""

    path: Path
    frames: int  # how many the video has
    first: np.ndarray  # its first frame
    tail: np.ndarray  # its last 4*k*window + 1 frames (T, H, W, 3) uint8

    @property
    def frame_offset(self) -> int:
        """Where the job's own frame 0 (its first given latent) falls in the finished video."""
        return self.frames - len(self.tail)

    @property
    def last(self) -> np.ndarray:
        return self.tail[-1]


def _check_length(path: Path, count: int, window: int, layout: TailLayout) -> int:
    if count < layout.frames(1, window):
        raise InputError(f"{path} has {count} frames; --extend needs at least {layout.frames(1, window)}", "use its last frame as the start picture instead")
    return count


def extended_size(height: int, width: int, size: tuple[int, int] | None, resolution: int) -> tuple[int, int]:
    """``size`` if given; else the video's own size when the model can take it (multiples of 16, as every fpgen video), else the nearest bucket."""
    if size is not None:
        return size
    return (height, width) if height % 16 == 0 and width % 16 == 0 else pick_bucket(height, width, resolution)


def read_tail(path: Path, layout: TailLayout, window: int, size: tuple[int, int] | None = None, resolution: int = 640) -> VideoTail:
    """One pass over the video keeping only its first and last frames (memory does not grow with its length)."""
    meta, frames = iter_mp4(path)
    width, height = meta["size"]
    size = extended_size(height, width, size, resolution)
    keep = layout.frames(layout.windows(window), window)
    kept: deque[np.ndarray] = deque(maxlen=keep)
    first, count = None, 0
    for frame in frames:
        kept.append(resize_and_center_crop(frame, *size))
        first = kept[-1].copy() if first is None else first
        count += 1
    _check_length(path, count, window, layout)
    usable = min(keep, layout.frames(layout.whole(count, window), window))
    return VideoTail(path, count, first, np.stack(list(kept)[-usable:]))


def head_frames(source: VideoTail, window: int, layout: TailLayout) -> Iterator[np.ndarray]:
    """The video's frames that the join leaves unchanged (all but the ones ``layout`` re-makes), resized."""
    _, frames = iter_mp4(source.path)
    height, width = source.tail.shape[1:3]
    for i, frame in enumerate(frames):
        if i >= source.frames - layout.kept(window):
            break
        yield resize_and_center_crop(frame, height, width)
