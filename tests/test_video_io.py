"""Writing videos where it is hard: a full disk (exit 5, nothing half-written), any file name, tags of any size and content."""

from __future__ import annotations

import builtins
import errno
import json
import os
import threading

import numpy as np
import pytest
from conftest import moving_gradient

import fpgen.mp4
from fpgen.errors import DiskFullError, ExitCode
from fpgen.metadata import describe_video, mp4_tags, read_description, write_sidecar
from fpgen.mp4 import GrowingMp4
from fpgen.output import SegmentedMp4
from fpgen.video import concat_mp4, ffmetadata, parse_ffmetadata, read_mp4, read_tags, write_mp4

FULL = "/dev/full"  # a real device whose every write fails with ENOSPC: a full disk without root or a small mount
PIECES = [(0, 12), (12, 9)]  # (first frame, frames) of two segments


def make_segments(sink: SegmentedMp4, clip: np.ndarray) -> None:
    for first, count in PIECES:
        sink.write(clip[first : first + count], first)


def test_ffmpeg_writing_to_a_full_disk_is_disk_full(tmp_path):
    with pytest.raises(DiskFullError, match="disk is full") as caught:
        write_mp4(FULL, moving_gradient(5, 16, 16))
    assert caught.value.exit_code == ExitCode.DISK_FULL == 5
    write_mp4(tmp_path / "a.mp4", moving_gradient(5, 16, 16))
    with pytest.raises(DiskFullError):
        concat_mp4([tmp_path / "a.mp4"], FULL, {"comment": "x"})


def test_a_segment_or_the_join_on_a_full_disk_leaves_nothing_half_written(tmp_path):
    sink = SegmentedMp4(tmp_path / "v.mp4.job" / "segments")
    (sink.segments_dir / "00000000.partial.mp4").symlink_to(FULL)  # where ffmpeg writes the first segment: a full disk
    with pytest.raises(DiskFullError):
        sink.write(moving_gradient(12, 16, 16), 0)
    assert sink.segments() == [] and list(sink.segments_dir.iterdir()) == []  # the failed segment is not kept, nor counted

    make_segments(sink, moving_gradient(21, 16, 16))
    (tmp_path / "v.mp4.job" / "joined.mp4").symlink_to(FULL)  # where the join is written
    with pytest.raises(DiskFullError):
        sink.finish(tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "v.mp4.job" / "joined.mp4").exists()
    assert len(sink.segments()) == 2  # the job can be finished once there is room



def test_a_section_is_encoded_while_the_next_is_made_and_its_error_comes_back(tmp_path, monkeypatch):
    """The sink returns before its segment is encoded (the GPU goes on), the next handover waits for it, and a
    background encode that hits a full disk is raised there, leaving no segment; the partial video keeps the rest."""
    from fpgen import output
    from fpgen.pixels import to_pixels

    clip = moving_gradient(21, 16, 16)
    go, encoding = threading.Event(), []

    def held_write_mp4(*args, **kwargs):
        encoding.append(args[0].name)
        assert go.wait(timeout=30)
        return write_mp4(*args, **kwargs)

    sink = SegmentedMp4(tmp_path / "v.mp4.job" / "segments")
    monkeypatch.setattr(output, "write_mp4", held_write_mp4)
    sink(to_pixels(clip[:12]), 0)
    assert sink.segments() == [] and sink.in_flight is not None  # handed over, not yet written: the caller was not held
    go.set()
    sink.wait()
    assert [p.name for p in sink.segments()] == ["00000000.mp4"] and encoding == ["00000000.partial.mp4"]

    (sink.segments_dir / "00000012.partial.mp4").symlink_to(FULL)  # the second segment meets a full disk, in the background
    sink(to_pixels(clip[12:]), 12)
    with pytest.raises(DiskFullError):
        sink.wait()
    assert [p.name for p in sink.segments()] == ["00000000.mp4"] and not (sink.segments_dir / "00000012.partial.mp4").exists()
    sink(to_pixels(clip[12:]), 12)  # a later handover is not blamed for it
    assert sink.write_partial(tmp_path / "v.partial.mp4") == tmp_path / "v.partial.mp4"
    assert len(read_mp4(tmp_path / "v.partial.mp4")[0]) == 21


def test_frames_that_fail_stop_ffmpeg_and_leave_no_segment(tmp_path):
    def frames():
        yield from moving_gradient(3, 16, 16)
        raise RuntimeError("the decoder failed")

    sink = SegmentedMp4(tmp_path / "segments")
    with pytest.raises(RuntimeError, match="the decoder failed"):  # the frames' own error, not a broken pipe from the killed ffmpeg
        sink.write(frames(), 0)
    assert list(sink.segments_dir.iterdir()) == []

class NearlyFullDisk:
    """``open`` for fpgen.mp4 whose files take at most ``room`` bytes per write, then fail with ENOSPC after writing part, as a full disk does."""

    def __init__(self, room: int):
        self.room, self.refused = room, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        if "r" in mode and "+" not in mode:
            return file
        write = file.write

        def limited(data):
            if len(data) <= self.room:
                return write(data)
            self.refused += 1
            write(data[: self.room])
            file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        file.write = limited
        return file


def test_growing_mp4_stays_playable_when_a_segment_does_not_fit(tmp_path, monkeypatch):
    clip = moving_gradient(21)
    for first, count in PIECES:
        write_mp4(tmp_path / f"{first}.mp4", clip[first : first + count])
    video = GrowingMp4(tmp_path / "grown.mp4")
    video.add(tmp_path / "12.mp4", 12)
    before = read_mp4(tmp_path / "grown.mp4")[0]

    disk = NearlyFullDisk(room=(tmp_path / "grown.mp4").stat().st_size - video.data_end)  # room for the index it has, not for more samples
    monkeypatch.setattr(fpgen.mp4, "open", disk, raising=False)
    with pytest.raises(DiskFullError, match="grown.mp4"):
        video.add(tmp_path / "0.mp4", 0)
    assert disk.refused == 1
    assert np.array_equal(read_mp4(tmp_path / "grown.mp4")[0], before)  # cut back to the samples and index it had

    monkeypatch.undo()
    video.add(tmp_path / "0.mp4", 0)  # room again: it grows on as if nothing happened
    assert len(read_mp4(tmp_path / "grown.mp4")[0]) == 21


def test_the_partial_video_on_a_full_disk_is_none_and_leaves_no_file(tmp_path, monkeypatch):
    sink = SegmentedMp4(tmp_path / "v.mp4.job" / "segments")
    make_segments(sink, moving_gradient(21, 16, 16))
    monkeypatch.setattr(fpgen.mp4, "open", NearlyFullDisk(room=0), raising=False)
    assert sink.write_partial(tmp_path / "v.partial.mp4") is None  # no second error while the first is being reported
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4.job"]  # no 0-byte video, no file written aside
    monkeypatch.undo()
    assert sink.write_partial(tmp_path / "v.partial.mp4") == tmp_path / "v.partial.mp4"
    assert len(read_mp4(tmp_path / "v.partial.mp4")[0]) == 21



def test_a_preview_that_cannot_start_on_a_full_disk_leaves_no_file(tmp_path, monkeypatch):
    sink = SegmentedMp4(tmp_path / "v.mp4.job" / "segments", preview=tmp_path / "v.partial.mp4")
    monkeypatch.setattr(fpgen.mp4, "open", NearlyFullDisk(room=100), raising=False)  # the file's header fits, the first samples do not
    with pytest.raises(DiskFullError):
        sink.write(moving_gradient(12, 16, 16), 0)
    assert not (tmp_path / "v.partial.mp4").exists()  # not a 48-byte file that no player opens
    assert sink.write_partial(tmp_path / "v.partial.mp4") is None and not (tmp_path / "v.partial.mp4").exists()

NASTY_NAMES = ["Bob's dance.mp4", "new\nline.mp4", "#1 take; a=b.mp4", "two  spaces\tand tab.mp4", "ünïcödé 日本.mp4", "a:b.mp4", "-dash.mp4", "back\\slash '' $HOME.mp4"]


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_any_file_name_works_for_segments_partial_and_join(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # relative names, as typed on a command line ("a:b.mp4" is not a protocol)
    output = tmp_path / name
    clip = moving_gradient(21, 16, 16)
    sink = SegmentedMp4(output.with_name(name + ".job") / "segments", preview=output.with_name(name + ".preview.mp4"))
    make_segments(sink, clip)
    assert sink.write_partial(output.with_name(name + ".partial.mp4")) is not None
    sink.finish(output.relative_to(tmp_path), {"title": name})
    frames = read_mp4(output.relative_to(tmp_path))[0]
    assert len(frames) == 21 and np.array_equal(frames, read_mp4(output.with_name(name + ".partial.mp4"))[0])
    assert read_tags(output)["title"] == name


def test_a_200_kb_description_with_every_special_character_round_trips(tmp_path):
    """Tags go through an ffmetadata file: no command-line limit (E2BIG at ~128 kB), no character lost."""
    prompt = "".join(chr(c) for c in range(1, 0x250)) * 400 + " ends in a backslash\\"
    assert len(prompt) > 200_000
    description = describe_video({"prompt": prompt, "seed": 7}, "inverted", 21, 16, 16, 2, [1, 1], 1.0)
    write_mp4(tmp_path / "a.mp4", moving_gradient(21, 16, 16))
    concat_mp4([tmp_path / "a.mp4"], tmp_path / "v.mp4", mp4_tags(description))
    assert read_description(tmp_path / "v.mp4") == json.loads(json.dumps(description))
    assert read_tags(tmp_path / "v.mp4")["title"] == mp4_tags(description)["title"]


def test_ffmetadata_escapes_and_parses_back():
    tags = {"title": "a=b;c#d\\e\nf\rg", "comment": "ends\\"}
    text = ffmetadata(tags)
    assert text.endswith("comment=ends\\\\")  # the one value ending in a backslash goes last, with no newline after it
    assert parse_ffmetadata(text) == tags
    assert parse_ffmetadata(";FFMETADATA1\nk=v\\\\\nx=1\n[STREAM]\ny=2\n") == {"k": "v\\", "x": "1"}  # stream sections are not global tags
    with pytest.raises(ValueError):
        ffmetadata({"a": "x\\", "b": "y\\"})


def test_files_written_aside_keep_the_users_permissions_and_any_name_length(tmp_path):
    umask = os.umask(0o022)
    try:
        sidecar = write_sidecar(tmp_path / ("n" * 245 + ".mp4"), {"fpgen": "0", "job": {}})
    finally:
        os.umask(umask)
    assert sidecar.stat().st_mode & 0o777 == 0o644 and json.loads(sidecar.read_text())["fpgen"] == "0"
    assert sorted(p.name for p in tmp_path.iterdir()) == [sidecar.name]
