"""Training data: clips with captions, read through ffmpeg, bucketed and cut to whole FramePack sections.

DATA is a folder of videos with same-named ``.txt`` captions (searched recursively), or a JSON Lines
or CSV file of ``{video, caption}`` (paths relative to that file). Each clip is resized and
centre-cropped to its size bucket (or ``--size``) like a generation's start picture, and cut to
``1 + 4*window*k`` frames: the start frame plus ``k`` whole sections.

With ``--one-frame`` DATA is a folder of picture pairs for one-frame edits: ``NAME.png`` (the
source, any of PICTURE_EXTENSIONS), ``NAME.target.png`` (the edited picture, same size) and
``NAME.txt`` (the edit's prompt). Each pair is one clip of one section whose target is one frame.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from fpgen.buckets import load_image, pick_bucket, resize_and_center_crop
from fpgen.errors import InputError
from fpgen.video import read_mp4

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
TARGET_SUFFIX = ".target"  # NAME.target.png is NAME.png edited
CACHE_FOLDER = ".fpgen-cache"


class UnreadableClip(InputError):
    """A clip ffmpeg cannot read: training skips it (and names it) rather than stopping."""


@dataclass(frozen=True)
class Clip:
    video: Path
    caption: str
    name: str  # how the clip is called in messages: its path relative to DATA
    target: Path | None = None  # --one-frame: the edited picture (``video`` is then the source picture)


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


def _picture_size(path: Path) -> tuple[int, int]:
    """(width, height) from the picture's header, without decoding it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError):
        raise InputError(f"cannot read {path} as a picture", "pass PNG, JPEG or WebP pictures") from None


def discover_pairs(folder: Path) -> list[Clip]:
    """Every (source, target, caption) pair of a ``--one-frame`` folder; one-line errors for incomplete or mismatched pairs."""
    if not folder.is_dir():
        raise InputError(f"--one-frame needs a folder of picture pairs, and {folder} is not one", "put NAME.png, NAME.target.png and NAME.txt side by side in a folder")
    pictures = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PICTURE_EXTENSIONS and CACHE_FOLDER not in p.parts)
    targets = {p.with_suffix("").with_suffix(""): p for p in pictures if p.stem.endswith(TARGET_SUFFIX)}
    pairs = []
    for source in (p for p in pictures if not p.stem.endswith(TARGET_SUFFIX)):
        name, target = str(source.relative_to(folder)), targets.pop(source.with_suffix(""), None)
        if target is None:
            raise InputError(f"{name} has no target picture", f"add {source.stem}{TARGET_SUFFIX}{source.suffix} (the edited picture) next to it, or remove it")
        caption = _caption_of(source)
        if caption is None:
            raise InputError(f"{name} has no caption", f"write the edit's prompt in {source.with_suffix('.txt').name}")
        (sw, sh), (tw, th) = _picture_size(source), _picture_size(target)
        if (sw, sh) != (tw, th):
            raise InputError(f"{name} is {sw}x{sh} but its target {target.name} is {tw}x{th}", "a pair's two pictures must have the same size")
        pairs.append(Clip(source, caption, name, target))
    if targets:
        orphan = next(iter(targets.values()))
        raise InputError(f"{orphan.relative_to(folder)} has no source picture", f"add {orphan.name.replace(TARGET_SUFFIX, '', 1)} next to it, or remove it")
    if not pairs:
        raise InputError(f"no picture pairs found in {folder}", "expected NAME.png, NAME.target.png and NAME.txt (PNG, JPEG or WebP)")
    return pairs


def discover_clips(data: Path, one_frame: bool = False) -> list[Clip]:
    """Every clip of DATA (picture pairs with ``one_frame``), in a stable order; an error if there are none or one lacks its caption."""
    data = Path(data).expanduser()
    if one_frame:
        return discover_pairs(data)
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


def clip_size(clip: Clip, size: tuple[int, int] | None, resolution: int) -> tuple[int, int]:
    if size is not None:
        return size
    if clip.target is not None:
        width, height = _picture_size(clip.video)
        return pick_bucket(height, width, resolution)
    return pick_bucket(*probe_video(clip.video), resolution)


def read_pair(clip: Clip, size: tuple[int, int]) -> ClipFrames:
    """A pair as a two-frame clip of one section: the source picture, then the target, both bucketed."""
    return ClipFrames(np.stack([resize_and_center_crop(load_image(path), *size) for path in (clip.video, clip.target)]), 0.0, 1)


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

