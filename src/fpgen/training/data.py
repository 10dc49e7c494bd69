"""Training data: clips with captions, read through ffmpeg, bucketed and cut to whole FramePack sections.

DATA is a folder of videos with same-named ``.txt`` captions (searched recursively), or a JSON Lines
or CSV file of ``{video, caption}`` (paths relative to that file). Each clip is resized and
centre-cropped to its size bucket (or ``--size``) like a generation's start picture, and cut to
``1 + 4*window*k`` frames: the start frame plus ``k`` whole sections.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from fpgen.buckets import pick_bucket, resize_and_center_crop
from fpgen.errors import InputError
from fpgen.video import read_mp4

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
CACHE_FOLDER = ".fpgen-cache"


class UnreadableClip(InputError):
    """A clip ffmpeg cannot read: training skips it (and names it) rather than stopping."""


@dataclass(frozen=True)
class Clip:
    video: Path
    caption: str
    name: str  # how the clip is called in messages: its path relative to DATA


@dataclass(frozen=True)
class ClipFrames:
    frames: np.ndarray  # (T, H, W, 3) uint8, bucketed, T = 1 + 4*window*sections
    fps: float
    sections: int


def _caption_of(video: Path) -> str | None:
    caption = video.with_suffix(".txt")
    return caption.read_text(encoding="utf-8").strip() if caption.is_file() else None


def _from_folder(folder: Path) -> list[Clip]:
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and CACHE_FOLDER not in p.parts)
    missing = [v for v in videos if _caption_of(v) is None]
    if missing:
        names = ", ".join(str(v.relative_to(folder)) for v in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{len(missing)} video(s) in {folder} have no caption: {names}", f"write each caption in a .txt file named like its video, e.g. {missing[0].with_suffix('.txt').name}")
    return [Clip(v, _caption_of(v), str(v.relative_to(folder))) for v in videos]


def _rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{path} line {number} is not JSON", 'each line must be an object like {"video": "clip.mp4", "caption": "..."}') from None
    return rows


def _from_table(path: Path) -> list[Clip]:
    clips = []
    for number, row in enumerate(_rows(path), 1):
        video = row.get("video") or row.get("video_path") if isinstance(row, dict) else None
        caption = row.get("caption") if isinstance(row, dict) else None
        if not video or caption is None:
            raise InputError(f"{path} entry {number} lacks a video or a caption", 'each entry needs "video" (a path) and "caption"')
        resolved = (path.parent / video).resolve() if not Path(video).is_absolute() else Path(video)
        if not resolved.is_file():
            raise InputError(f"{path} entry {number}: video not found: {video}", "paths are relative to the file that lists them")
        clips.append(Clip(resolved, str(caption).strip(), str(video)))
    return clips


def discover_clips(data: Path) -> list[Clip]:
    """Every clip of DATA, in a stable order; an error if there are none or one lacks its caption."""
    data = Path(data).expanduser()
    if data.is_dir():
        clips = _from_folder(data)
    elif data.is_file() and data.suffix.lower() in (".jsonl", ".csv"):
        clips = _from_table(data)
    elif data.exists():
        raise InputError(f"{data} is not a folder, a .jsonl or a .csv file", "pass a folder of videos with .txt captions, or a JSON Lines/CSV list of {video, caption}")
    else:
        raise InputError(f"training data not found: {data}", "check the path")
    if not clips:
        raise InputError(f"no videos found in {data}", "supported: " + ", ".join(VIDEO_EXTENSIONS))
    return clips


def default_cache_dir(data: Path) -> Path:
    """Next to the data: DATA/.fpgen-cache for a folder, a sibling folder for a list file."""
    data = Path(data).expanduser()
    return data / CACHE_FOLDER if data.is_dir() else data.parent / CACHE_FOLDER


def probe_video(path: Path) -> tuple[int, int]:
    """(height, width) of a video without decoding it."""
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration) as exc:
        raise UnreadableClip(f"cannot read {path} as a video ({type(exc).__name__})", "pass videos ffmpeg can read (MP4, MOV, MKV, WebM)") from None
    width, height = meta["size"]
    return height, width


def clip_size(path: Path, size: tuple[int, int] | None, resolution: int) -> tuple[int, int]:
    if size is not None:
        return size
    return pick_bucket(*probe_video(path), resolution)


def usable_sections(frames: int, window: int, max_sections: int | None) -> int:
    """Whole sections in a clip of ``frames`` frames: (frames - 1) // (4 * window), capped."""
    sections = (frames - 1) // (4 * window)
    return min(sections, max_sections) if max_sections else sections


def read_clip(path: Path, size: tuple[int, int], window: int, max_sections: int | None) -> ClipFrames:
    """The clip's frames, bucketed and cut to whole sections (``sections`` is 0 when it is too short)."""
    try:
        frames, fps = read_mp4(path)
    except InputError as exc:  # not a video at all
        raise UnreadableClip(exc.message, exc.hint) from None
    except (OSError, RuntimeError, ValueError) as exc:  # broken after its first frame, or no frame at all
        raise UnreadableClip(f"cannot read {path} as a video ({type(exc).__name__})", "pass videos ffmpeg can read (MP4, MOV, MKV, WebM)") from None
    sections = usable_sections(len(frames), window, max_sections)
    kept = frames[: 1 + 4 * window * sections]
    height, width = size
    return ClipFrames(np.stack([resize_and_center_crop(f, height, width) for f in kept]), fps, sections)

