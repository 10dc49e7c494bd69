"""MP4 in and out through the ffmpeg that imageio-ffmpeg ships: libx264, yuv420p, CRF, 30 fps."""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from fpgen.errors import InputError
from fpgen.geometry import FPS


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) floats in [-1, 1] -> (T, H, W, 3) uint8, truncating like the official writer."""
    frames = (torch.clamp(pixels.float(), -1.0, 1.0) * 127.5 + 127.5).to(torch.uint8)
    return frames[0].permute(1, 2, 3, 0).contiguous().numpy()


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1], the VAE's input range."""
    return (torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1).permute(3, 0, 1, 2)[None]


def write_mp4(path: Path, frames: Iterable[np.ndarray], crf: int = 16, fps: int = FPS) -> int:
    """Encode (H, W, 3) uint8 frames as H.264, streaming them (the file is complete only when this returns); returns the count."""
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
        macro_block_size=1, output_params=["-crf", str(int(crf)), "-preset", "medium"], ffmpeg_log_level="error",
    )  # fmt: skip
    writer.send(None)
    count = 0
    for frame in itertools.chain([first], frames):
        writer.send(np.ascontiguousarray(frame))
        count += 1
    writer.close()
    return count


def concat_mp4(parts: list[Path], output: Path, metadata: dict[str, str] | None = None) -> None:
    """Join MP4 segments made with the same settings without re-encoding them."""
    listing = output.with_name(output.name + ".parts.txt")
    listing.write_text("".join(f"file '{p.resolve().as_posix()}'\n" for p in parts))
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy"]
    for key, value in (metadata or {}).items():
        command += ["-metadata", f"{key}={value}"]
    try:
        subprocess.run([*command, "-movflags", "+faststart", str(output)], check=True, capture_output=True)
    finally:
        listing.unlink(missing_ok=True)


def iter_mp4(path: Path) -> tuple[dict, Iterator[np.ndarray]]:
    """A video's properties (size, fps, nframes estimate) and an iterator over its frames as (H, W, 3) uint8."""
    if not Path(path).is_file():
        raise InputError(f"video not found: {path}", "check the path")
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as exc:
        raise InputError(f"cannot read {path} as a video ({type(exc).__name__})", "pass an MP4 (or another format ffmpeg reads)") from None
    width, height = meta["size"]
    return meta, (np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader)


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """All frames of a video as (T, H, W, 3) uint8, and its frame rate."""
    meta, frames = iter_mp4(path)
    return np.stack(list(frames)), float(meta["fps"])


def read_tags(path: Path) -> dict[str, str]:
    """The container's metadata tags (ffmpeg's ffmetadata dump, unescaped)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    dump = subprocess.run(command, capture_output=True, text=True)
    if dump.returncode != 0:
        raise InputError(f"cannot read {path} as a video", dump.stderr.strip().splitlines()[-1] if dump.stderr.strip() else "is it an MP4?")
    tags = {}
    for line in dump.stdout.splitlines()[1:]:
        key, sep, value = line.partition("=")
        if sep and not key.startswith(("[", ";", "#")):
            tags[key] = re.sub(r"\\(.)", r"\1", value)
    return tags
