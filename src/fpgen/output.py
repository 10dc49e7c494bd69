"""Where frames go: MP4 segments on disk as they become final, joined in time order at the end.

Segments are named by the video frame they start at, so the inverted order (which finishes the end
of the video first) and the forward order assemble the same way, and nothing is re-encoded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from fpgen.video import concat_mp4, to_uint8, write_mp4


class SegmentedMp4:
    """A frame sink: ``sink(frames, first_frame)`` writes one segment; ``finish`` makes the MP4."""

    def __init__(self, output: Path, work_dir: Path, crf: int = 16):
        self.output, self.work_dir, self.crf = output, work_dir, crf
        self.segments_dir = work_dir / "segments"
        self.segments_dir.mkdir(parents=True, exist_ok=True)

    def segment_path(self, first_frame: int) -> Path:
        return self.segments_dir / f"{first_frame:08d}.mp4"

    def segments(self) -> list[Path]:
        return sorted(self.segments_dir.glob("*.mp4"))

    def __call__(self, frames: torch.Tensor, first_frame: int) -> None:
        path = self.segment_path(first_frame)
        partial = path.with_suffix(".partial.mp4")
        write_mp4(partial, to_uint8(frames), self.crf)
        os.replace(partial, path)

    def finish(self, metadata: dict[str, str] | None = None, keep_work_dir: bool = False) -> Path:
        """Join the segments into the output (written aside, then renamed: the output is never half-written)."""
        partial = self.output.with_name(self.output.stem + ".partial.mp4")
        concat_mp4(self.segments(), partial, metadata)
        os.replace(partial, self.output)
        if not keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return self.output
