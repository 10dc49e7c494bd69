"""Small real training sets: MP4s (libx264 through ffmpeg) of plain pictures fading to white or black."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fpgen.video import write_mp4

WHITE, BLACK = (235, 235, 235), (20, 20, 20)
COLOURS = ((200, 60, 60), (60, 170, 80), (60, 80, 200), (180, 160, 50), (160, 70, 160), (50, 150, 160), (120, 120, 120), (190, 110, 60))


def fade_frames(frames: int, size: int, start, end) -> np.ndarray:
    """(frames, size, size, 3) uint8 going linearly from colour ``start`` to ``end``, with a darker square for some texture."""
    weights = np.linspace(0.0, 1.0, frames)[:, None, None, None]
    video = (1 - weights) * np.asarray(start, float) + weights * np.asarray(end, float)
    video = np.broadcast_to(video, (frames, size, size, 3)).copy()
    video[:, size // 4 : size // 2, size // 4 : size // 2] *= 0.6
    return video.round().astype(np.uint8)


def make_clip(folder: Path, name: str, frames: int, size: int, start, end, caption: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mp4"
    write_mp4(path, fade_frames(frames, size, start, end), crf=8)
    if caption is not None:
        (folder / f"{name}.txt").write_text(caption)
    return path


def make_dataset(folder: Path, clips: int, frames: int, size: int = 64) -> list[Path]:
    """``clips`` videos of differently coloured pictures, all fading to white, with captions of different lengths."""
    return [make_clip(folder, f"clip{i:02d}", frames, size, COLOURS[i % len(COLOURS)], WHITE, "the picture fades to white" + " slowly" * i) for i in range(clips)]
