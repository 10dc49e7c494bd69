"""The growing MP4 behind --preview and partial videos: segments in any order, a playable file after each, nothing re-encoded."""

from __future__ import annotations

import numpy as np
from conftest import moving_gradient

from fpgen.mp4 import GrowingMp4, read_track
from fpgen.output import SegmentedMp4
from fpgen.pixels import to_pixels
from fpgen.video import read_mp4, write_mp4

PIECES = [(0, 37), (37, 36), (73, 36)]  # (first frame, frames): the sizes of a 3-section video


def test_segments_added_in_reverse_play_in_time_order(tmp_path):
    decoded = []
    for i, (first, count) in enumerate(PIECES):
        write_mp4(tmp_path / f"{i}.mp4", moving_gradient(count, start=first))
        decoded.append(read_mp4(tmp_path / f"{i}.mp4")[0])
    assert any(s.composition != read_track(tmp_path / "0.mp4").samples[0].composition for s in read_track(tmp_path / "0.mp4").samples), "B-frames"

    video = GrowingMp4(tmp_path / "grown.mp4")
    for i in (2, 1, 0):  # the inverted order makes the end first
        video.add(tmp_path / f"{i}.mp4", PIECES[i][0])
        frames, fps = read_mp4(tmp_path / "grown.mp4")
        assert fps == 30
        assert np.array_equal(frames, np.concatenate(decoded[i:]))  # the same H.264 samples, in time order
    sizes = sum((tmp_path / f"{i}.mp4").stat().st_size for i in range(3))
    assert (tmp_path / "grown.mp4").stat().st_size < sizes  # each sample written once (no re-copying)

    video.add(tmp_path / "1.mp4", 37)  # a segment written again (a resumed section) replaces the old one
    assert np.array_equal(read_mp4(tmp_path / "grown.mp4")[0], np.concatenate(decoded))


def test_segmented_output_preview_partial_and_join(tmp_path):
    sink = SegmentedMp4(tmp_path / "job" / "segments", preview=tmp_path / "v.partial.mp4")
    clip = moving_gradient(109)
    assert sink.write_partial(tmp_path / "v.partial.mp4") is None  # nothing made yet: no partial video
    (sink.segments_dir / "00000073.partial.mp4").write_bytes(b"half-written")  # a segment interrupted while being written
    for first, count in reversed(PIECES):
        sink(to_pixels(clip[first : first + count]), first)
        sink.wait()
        assert len(read_mp4(tmp_path / "v.partial.mp4")[0]) == 109 - first
    assert [p.name for p in sink.segments()] == ["00000000.mp4", "00000037.mp4", "00000073.mp4"]
    preview = read_mp4(tmp_path / "v.partial.mp4")[0]
    sink.finish(tmp_path / "v.mp4", {"comment": "x"})
    final = read_mp4(tmp_path / "v.mp4")[0]
    assert np.array_equal(preview, final)
    assert np.abs(final.astype(int) - clip).mean() < 3  # one lossy encode of the original frames
