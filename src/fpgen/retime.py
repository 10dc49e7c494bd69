"""``--fps`` and ``--interpolate``: the output's frame rate, from the family's native rate.

A rate that divides the native one is reached by dropping frames exactly: frame ``i`` (counted on the
whole video) is kept when ``i % step == 0``, a pure function of its index, so each segment is dropped
on its own as it streams out and a resumed job drops the same frames. Any other rate (``--fps 24``
from 30, ``--interpolate 2``) is motion-interpolated once the video is complete, by the shipped
ffmpeg's ``minterpolate`` (``fpgen.video.interpolate_mp4``): the last frame is held one frame longer
first, so the interpolated video still ends on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fpgen.geometry import FPS


@dataclass(frozen=True)
class FrameRate:
    native: int  # the family's fps: the frames the model makes
    output: int  # the MP4's fps

    @property
    def step(self) -> int:
        """Every ``step``-th native frame is kept (1: all of them)."""
        return self.native // self.output if self.native % self.output == 0 else 1

    @property
    def interpolates(self) -> bool:
        return self.native % self.output != 0

    @property
    def segment_fps(self) -> int:
        """The rate segments are written at: the output's when frames are dropped, the native one when the joined video is interpolated later."""
        return self.native if self.interpolates else self.output

    def frames(self, native_frames: int) -> int:
        """Frames of the output for a video of ``native_frames`` native frames."""
        if self.interpolates:  # output frames at n/output up to the last native frame's time, inclusive
            return (native_frames - 1) * self.output // self.native + 1
        return kept_count(0, native_frames, self.step)

    def describe(self) -> str:
        how = "motion-interpolated (ffmpeg minterpolate)" if self.interpolates else f"1 frame in {self.step} kept" if self.step > 1 else "native"
        return f"{self.output} fps ({how})"


NATIVE = FrameRate(FPS, FPS)  # FramePack's own rate


def output_rate(native: int, fps: int | None, interpolate: int) -> FrameRate:
    """The rate ``--fps`` (None: native) or ``--interpolate`` (a multiple of native) asks for."""
    return FrameRate(native, fps if fps is not None else native * interpolate)


def kept_count(first: int, count: int, step: int) -> int:
    """How many of frames ``first .. first+count-1`` are kept (multiples of ``step``)."""
    return (first + count - 1) // step - (first - 1) // step
