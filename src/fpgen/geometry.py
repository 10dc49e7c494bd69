"""The frame arithmetic of HunyuanVideo's causal VAE, in one place.

The VAE compresses time by 4 (the first frame alone: T latents are 4T-3 frames) and space by 8,
into 16 channels; FramePack videos play at 30 fps (a family sets its own, ``Family.fps``). A section
of ``window`` latents adds ``4*window`` frames.
"""

from __future__ import annotations

FPS = 30
TIME_STRIDE = 4
SPACE_STRIDE = 8
LATENT_CHANNELS = 16
FULL_HISTORY = (1, 2, 16)  # latent frames of FramePack's 1x, 2x and 4x history slots (``fpgen.packing``), ``--history 1,2,16``


def latents_to_frames(latents: int) -> int:
    """The causal VAE turns T latent frames into 4T-3 video frames."""
    return TIME_STRIDE * latents - 3


def latent_to_frame(position: int) -> int:
    """The first video frame that latent ``position`` decodes to."""
    return TIME_STRIDE * position


def section_frames(window: int) -> int:
    """Frames one section of ``window`` latents adds to a video."""
    return TIME_STRIDE * window


def overlap_frames(window: int) -> int:
    """Frames a window's decode shares with its neighbour's (cross-faded): those of ``window`` latents alone."""
    return latents_to_frames(window)


def section_seconds(window: int) -> float:
    return section_frames(window) / FPS


def section_count(seconds: float, window: int) -> int:
    """The official count: Python's round (half to even) of seconds*30 / (window*4), at least 1."""
    return int(max(round((seconds * FPS) / section_frames(window)), 1))


def latent_size(height: int, width: int) -> tuple[int, int]:
    return height // SPACE_STRIDE, width // SPACE_STRIDE


def window_tokens(window: int, height: int, width: int) -> int:
    """Patch tokens (2x2) of a section's noisy window for a ``height`` x ``width`` video: what the schedule's shift depends on."""
    latent_height, latent_width = latent_size(height, width)
    return window * latent_height * latent_width // 4
