"""Where frames go: MP4 segments on disk as they become final, joined in time order at the end.

Segments are named by the video frame they start at, so the inverted order (which finishes the end
of the video first) and the forward order assemble the same way, and nothing is re-encoded. Decoded
pixels are never all held: each piece is encoded as soon as it is final, on a thread of its own while
the GPU makes the next section (one piece in flight; on an H200 the encode took half a second of each
2-s Helios chunk when it waited). The same segments make the live preview (``--preview``) and the
partial video an interrupted job leaves: a ``GrowingMp4`` that takes each segment once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from fpgen.errors import FpgenError
from fpgen.mp4 import GrowingMp4
from fpgen.pixels import to_uint8
from fpgen.retime import NATIVE, FrameRate
from fpgen.video import concat_mp4, interpolate_mp4, write_mp4, written_aside

FrameTransform = Callable[[torch.Tensor, int], torch.Tensor]  # (pixels, video frame of the first) -> pixels

PARTIAL = ".partial.mp4"


def partial_path(output: Path) -> Path:
    """The playable video of what a job has made so far, next to its output."""
    return output.with_name(output.stem + PARTIAL)


def segment_name(first_frame: int) -> str:
    """The file name of the segment that starts at video frame ``first_frame`` (names sort in time order)."""
    return f"{first_frame:08d}.mp4"


class InFlight:
    """A call running on a thread of its own; ``join`` waits for it and raises what it raised."""

    def __init__(self, call: Callable[[], None]):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), name="fpgen-segment")
        self.thread.start()

    def _run(self, call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as error:  # handed to whoever joins
            self.error = error

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


class SegmentedMp4:
    """A frame sink: ``sink(frames, first_frame)`` hands one segment to a background encode; ``finish`` makes the MP4.

    A segment handed over is on disk once the next one is handed over, or after ``wait``,
    ``write_partial`` or ``finish``; an error of its encode (a full disk) is raised by those.

    ``frame_offset`` shifts the job's frame numbers (an extended video's own frames come first);
    with ``preview`` the playable MP4 of everything so far is kept up to date after each segment.
    ``rate`` drops frames by their video frame number as they come (segments are at its output
    rate) or interpolates the joined video in ``finish``; ``transform`` (``--color-match``) changes
    the job's own frames, never the given video's.
    """

    def __init__(
        self, segments_dir: Path, crf: int = 16, preview: Path | None = None, frame_offset: int = 0,
        rate: FrameRate = NATIVE, transform: FrameTransform | None = None,
    ):  # fmt: skip
        self.segments_dir, self.crf, self.frame_offset = segments_dir, crf, frame_offset
        self.rate, self.transform = rate, transform
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        self.preview_path = preview
        self.preview = self._assemble(preview) if preview is not None and self.segments() else None
        self.in_flight: InFlight | None = None

    def segment_path(self, first_frame: int) -> Path:
        return self.segments_dir / segment_name(first_frame)

    def segments(self) -> list[Path]:
        """The complete segments, in time order (a segment being written has another suffix until it is done)."""
        return sorted(p for p in self.segments_dir.glob("*.mp4") if not p.name.endswith(PARTIAL))

    def __call__(self, frames: torch.Tensor, first_frame: int) -> None:
        self.wait()
        first_frame += self.frame_offset
        self.in_flight = InFlight(lambda: self.write(to_uint8(self.transform(frames, first_frame) if self.transform is not None else frames), first_frame))

    def wait(self) -> None:
        """Let the segment in flight finish; what its encode raised is raised here."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is not None:
            in_flight.join()

    def write(self, frames: Iterable[np.ndarray], first_frame: int) -> None:
        """Encode frames (uint8, streamed) as the segment starting at video frame ``first_frame`` (none kept: no segment)."""
        kept = (frame for number, frame in enumerate(frames, first_frame) if number % self.rate.step == 0)
        first = next(kept, None)
        if first is None:
            return
        path = self.segment_path(first_frame)
        partial = path.with_suffix(PARTIAL)
        try:
            write_mp4(partial, itertools.chain([first], kept), self.crf, self.rate.segment_fps)
        except BaseException:
            partial.unlink(missing_ok=True)  # frees the space a full disk needs back
            raise
        os.replace(partial, path)
        if self.preview is not None:
            self.preview.add(path, first_frame)
        elif self.preview_path is not None:
            self.preview = self._assemble(self.preview_path)

    def _assemble(self, path: Path) -> GrowingMp4:
        """A growing MP4 of every segment at ``path``; where that fails (a full disk) nothing is left there, not a file that does not play."""
        try:
            video = GrowingMp4(path)
            for segment in self.segments():
                video.add(segment, int(segment.stem))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return video

    def write_partial(self, path: Path) -> Path | None:
        """Leave a playable MP4 of every finished segment at ``path`` (the preview already is one); None when there is none yet.

        Called while a job stops, often because the disk is full, so it never raises: it lets the
        segment in flight finish (dropping its error), writes aside and renames, and where that fails
        it leaves no file and returns None.
        """
        with contextlib.suppress(Exception):
            self.wait()
        if not self.segments():
            return None
        if self.preview is not None and self.preview.path == path:
            return path
        try:
            with written_aside(path) as aside:
                self._assemble(aside)
        except (OSError, FpgenError):
            return None
        return path

    def finish(self, output: Path, metadata: dict[str, str] | None = None) -> Path:
        """Join the segments into ``output`` (written aside, then renamed: the output is never half-written), interpolated if the rate asks."""
        self.wait()
        joined = self.segments_dir.parent / "joined.mp4"  # in the job's own folder: on a full disk nothing is left next to the output
        interpolated = self.segments_dir.parent / "interpolated.mp4"
        interpolates = self.rate.interpolates
        try:
            concat_mp4(self.segments(), joined, None if interpolates else metadata)
            if interpolates:
                interpolate_mp4(joined, interpolated, self.rate.native, self.rate.output, self.crf, metadata)
                os.replace(interpolated, joined)
        except BaseException:
            joined.unlink(missing_ok=True)
            interpolated.unlink(missing_ok=True)
            raise
        os.replace(joined, output)
        return output
