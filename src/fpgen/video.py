"""MP4 in and out through the ffmpeg that imageio-ffmpeg ships: libx264, yuv420p, CRF, 30 fps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from fpgen.plan import FPS


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) floats in [-1, 1] -> (T, H, W, 3) uint8, truncating like the official writer."""
    frames = (torch.clamp(pixels.float(), -1.0, 1.0) * 127.5 + 127.5).to(torch.uint8)
    return frames[0].permute(1, 2, 3, 0).contiguous().numpy()


def write_mp4(path: Path, frames: np.ndarray, crf: int = 16, fps: int = FPS, metadata: dict[str, str] | None = None) -> None:
    """Encode (T, H, W, 3) uint8 frames as H.264 (the file is complete only when this returns)."""
    height, width = frames.shape[1:3]
    params = ["-crf", str(int(crf)), "-preset", "medium"]
    for key, value in (metadata or {}).items():
        params += ["-metadata", f"{key}={value}"]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
        macro_block_size=1, output_params=params, ffmpeg_log_level="error",
    )  # fmt: skip
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


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


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """All frames of a video as (T, H, W, 3) uint8, and its frame rate."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader]
    return np.stack(frames), float(meta["fps"])

