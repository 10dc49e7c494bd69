"""An MP4 that grows as H.264 segments arrive, in any time order, without re-encoding or re-copying.

The preview of a running job (and the partial video an interrupted job leaves) is made from the
per-section segment files. Joining them anew after every section would copy the whole video each
time (quadratic in length); instead ``GrowingMp4`` appends each segment's compressed samples to one
``mdat`` and rewrites only the small index (``moov``) at the end of the file, whose sample table
lists the samples in time order wherever they lie in the file. The inverted order, which makes the
end of the video first, therefore costs the same as the forward order: each byte is written once.

Only what fpgen's own segments need is read: one H.264 video track as ffmpeg's MP4 muxer writes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from fpgen.video import disk_full_as_error

VISUAL_ENTRY_HEADER = 86  # size/type + the fixed fields of a VisualSampleEntry, before its child boxes
IDENTITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, box end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, start + 8)[0], 16
        elif size == 0:
            size = end - start
        yield kind, start + header, start + size
        start += size


def _find(data: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> tuple[int, int] | None:
    """Payload (start, end) of the first box at ``path`` (e.g. [moov, trak, mdia, mdhd])."""
    for kind, payload, box_end in _boxes(data, start, end):
        if kind == path[0]:
            return (payload, box_end) if len(path) == 1 else _find(data, path[1:], payload, box_end)
    return None


def _table(data: bytes, box: tuple[int, int] | None, fmt: str) -> list[tuple]:
    """Entries of a full box whose payload is version/flags, an entry count and fixed-size entries."""
    if box is None:
        return []
    count = struct.unpack_from(">I", data, box[0] + 4)[0]
    size = struct.calcsize(fmt)
    return [struct.unpack_from(fmt, data, box[0] + 8 + i * size) for i in range(count)]


@dataclass(frozen=True)
class Sample:
    offset: int  # in the file it lives in
    size: int
    duration: int
    composition: int  # presentation minus decode time
    sync: bool


@dataclass(frozen=True)
class Track:
    """One video track of an MP4: its sample entry, timescale, size, start delay and samples in decode order."""

    entry: bytes  # the sample entry (avc1 and its children, bitrate box removed)
    timescale: int
    width: int
    height: int
    delay: int  # edit-list media time: how far the first frame is shown after the first decode
    samples: list[Sample]


def _strip_btrt(entry: bytes) -> bytes:
    """The sample entry without its bitrate box, which is the only part that differs between fpgen's segments."""
    children = [entry[p - 8 : e] for kind, p, e in _boxes(entry, VISUAL_ENTRY_HEADER) if kind != b"btrt"]
    body = entry[8:VISUAL_ENTRY_HEADER] + b"".join(children)
    return struct.pack(">I", 8 + len(body)) + entry[4:8] + body


def read_track(path: Path) -> Track:
    """The video track of an MP4 written by ffmpeg (moov anywhere, one stsd entry)."""
    data = path.read_bytes()
    trak = ["moov", "trak"]
    stbl = [*trak, "mdia", "minf", "stbl"]

    def box(*names: str):
        return _find(data, [n.encode() for n in names])

    mdhd = box(*trak, "mdia", "mdhd")
    version = data[mdhd[0]]
    timescale = struct.unpack_from(">I", data, mdhd[0] + (20 if version == 1 else 12))[0]
    tkhd = box(*trak, "tkhd")
    width, height = (v >> 16 for v in struct.unpack_from(">II", data, tkhd[1] - 8))
    elst = box(*trak, "edts", "elst")
    delay = 0
    if elst is not None:
        edit_version = data[elst[0]]
        delay = struct.unpack_from(">q" if edit_version == 1 else ">i", data, elst[0] + 8 + (8 if edit_version == 1 else 4))[0]
    stsd = box(*stbl, "stsd")
    entry_start = stsd[0] + 8
    entry = data[entry_start : entry_start + struct.unpack_from(">I", data, entry_start)[0]]

    stsz = box(*stbl, "stsz")
    uniform, count = struct.unpack_from(">II", data, stsz[0] + 4)
    sizes = [uniform] * count if uniform else list(struct.unpack_from(f">{count}I", data, stsz[0] + 12))
    durations = [d for n, d in _table(data, box(*stbl, "stts"), ">II") for _ in range(n)]
    ctts = box(*stbl, "ctts")
    compositions = [c for n, c in _table(data, ctts, ">Ii" if ctts and data[ctts[0]] == 1 else ">II") for _ in range(n)] or [0] * count
    stss = box(*stbl, "stss")
    syncs = {n for (n,) in _table(data, stss, ">I")} if stss else set(range(1, count + 1))
    chunk_offsets = [o for (o,) in _table(data, box(*stbl, "stco"), ">I")] or [o for (o,) in _table(data, box(*stbl, "co64"), ">Q")]
    runs = _table(data, box(*stbl, "stsc"), ">III")

    offsets = []
    for chunk, offset in enumerate(chunk_offsets, start=1):
        per_chunk = [n for first, n, _ in runs if first <= chunk][-1]
        for _ in range(per_chunk):
            offsets.append(offset)
            offset += sizes[len(offsets) - 1]
    samples = [Sample(offsets[i], sizes[i], durations[i], compositions[i], i + 1 in syncs) for i in range(count)]
    return Track(_strip_btrt(entry), timescale, width, height, delay, samples)


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def _run_lengths(values: list[int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][1] == value:
            runs[-1][0] += 1
        else:
            runs.append([1, value])
    return [(n, v) for n, v in runs]


@dataclass(frozen=True)
class _Run:
    first_frame: int
    track: Track  # samples with offsets in the growing file


class GrowingMp4:
    """An MP4 file made of segments added in any order; it is a playable file after every ``add``.

    Layout: ``ftyp``, one ``mdat`` that only ever grows, then the ``moov``, which each ``add`` cuts
    off and writes anew after the new samples. Only the index grows with the number of frames.
    """

    def __init__(self, path: Path):
        self.path = path
        self.runs: list[_Run] = []
        ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
        self.mdat_at = len(ftyp)
        with disk_full_as_error(path), open(path, "wb") as file:
            file.write(ftyp + struct.pack(">I4sQ", 1, b"mdat", 16))
        self.data_end = self.mdat_at + 16

    def add(self, segment: Path, first_frame: int) -> None:
        """Append ``segment`` (an MP4 of frames starting at video frame ``first_frame``, replacing one added there before) and rewrite the index.

        Where the write fails (a full disk), the file is cut back to what it held: it stays playable.
        """
        track = read_track(segment)
        if self.runs and (track.timescale, track.width, track.height) != (self.runs[0].track.timescale, self.runs[0].track.width, self.runs[0].track.height):
            raise ValueError(f"{segment} does not match the other segments (timescale or size)")
        begin = min(s.offset for s in track.samples)
        end = max(s.offset + s.size for s in track.samples)
        with open(segment, "rb") as source:
            source.seek(begin)
            payload = source.read(end - begin)
        moved = [Sample(s.offset - begin + self.data_end, s.size, s.duration, s.composition, s.sync) for s in track.samples]
        runs = [run for run in self.runs if run.first_frame != first_frame]
        runs.append(_Run(first_frame, Track(track.entry, track.timescale, track.width, track.height, track.delay, moved)))
        runs.sort(key=lambda run: run.first_frame)
        with disk_full_as_error(self.path):
            try:
                self._write(payload, runs)
            except OSError:
                self._write(b"", self.runs)  # the old index after the old samples: the space just taken is freed first
                raise
        self.data_end += len(payload)
        self.runs = runs

    def _write(self, payload: bytes, runs: list[_Run]) -> None:
        """Cut the file after the samples, append ``payload`` to them and write the index of ``runs`` after it."""
        with open(self.path, "r+b") as file:
            file.truncate(self.data_end)
            file.seek(self.data_end)
            file.write(payload)
            file.seek(self.mdat_at + 8)
            file.write(struct.pack(">Q", self.data_end + len(payload) - self.mdat_at))
            if runs:
                file.seek(self.data_end + len(payload))
                file.write(self._moov(runs))

    @staticmethod
    def _moov(runs: list[_Run]) -> bytes:
        first = runs[0].track
        entries = list(dict.fromkeys(run.track.entry for run in runs))
        delay = max(run.track.delay for run in runs)
        samples = [(s, run.track.delay, entries.index(run.track.entry) + 1) for run in runs for s in run.track.samples]
        duration = sum(s.duration for s, _, _ in samples)
        movie_duration = duration * 1000 // first.timescale

        stsc = [(chunk, len(run.track.samples), entries.index(run.track.entry) + 1) for chunk, run in enumerate(runs, start=1)]
        stbl = _box(
            b"stbl",
            _full_box(b"stsd", 0, 0, struct.pack(">I", len(entries)), *entries),
            _full_box(b"stts", 0, 0, struct.pack(">I", len(r := _run_lengths([s.duration for s, _, _ in samples]))), *(struct.pack(">II", *e) for e in r)),
            _full_box(b"ctts", 0, 0, struct.pack(">I", len(c := _run_lengths([s.composition + delay - d for s, d, _ in samples]))), *(struct.pack(">II", *e) for e in c)),
            _full_box(b"stss", 0, 0, struct.pack(">I", len(k := [i for i, (s, _, _) in enumerate(samples, 1) if s.sync])), *(struct.pack(">I", i) for i in k)),
            _full_box(b"stsc", 0, 0, struct.pack(">I", len(stsc)), *(struct.pack(">III", *e) for e in stsc)),
            _full_box(b"stsz", 0, 0, struct.pack(">II", 0, len(samples)), *(struct.pack(">I", s.size) for s, _, _ in samples)),
            _full_box(b"co64", 0, 0, struct.pack(">I", len(runs)), *(struct.pack(">Q", run.track.samples[0].offset) for run in runs)),
        )
        minf = _box(
            b"minf",
            _full_box(b"vmhd", 0, 1, bytes(8)),
            _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1))),
            stbl,
        )
        mdia = _box(
            b"mdia",
            _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, first.timescale, duration, 0x55C4, 0)),
            _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\0"),
            minf,
        )
        tkhd = _full_box(
            b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, movie_duration), bytes(8), struct.pack(">hhhH", 0, 0, 0, 0),
            IDENTITY_MATRIX, struct.pack(">II", first.width << 16, first.height << 16),
        )  # fmt: skip
        edts = _box(b"edts", _full_box(b"elst", 0, 0, struct.pack(">IIiI", 1, movie_duration, delay, 0x10000)))
        mvhd = _full_box(
            b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, movie_duration), struct.pack(">IH", 0x10000, 0x100), bytes(10),
            IDENTITY_MATRIX, bytes(24), struct.pack(">I", 2),
        )  # fmt: skip
        return _box(b"moov", mvhd, _box(b"trak", tkhd, edts, mdia))
