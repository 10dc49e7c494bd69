"""Pixels between uint8 pictures and the VAE's float range: the one place that knows [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1], the VAE's input range."""
    return (torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1).permute(3, 0, 1, 2)[None]


def picture_to_pixels(picture: np.ndarray) -> torch.Tensor:
    """One (H, W, 3) uint8 picture -> (1, 3, 1, H, W) in [-1, 1]."""
    return to_pixels(picture[None])


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) floats in [-1, 1] -> (T, H, W, 3) uint8, truncating like the official writer."""
    frames = (torch.clamp(pixels.float(), -1.0, 1.0) * 127.5 + 127.5).to(torch.uint8)
    return frames[0].permute(1, 2, 3, 0).contiguous().numpy()
