"""``--color-match``: each frame's colour statistics pulled back to the start picture's, against F1's colour drift.

Per frame, the CIELAB channels' mean and standard deviation are matched to the start picture's
(Reinhard's transfer), with a strength that ramps from 0 on frame 0 to full over ``RAMP_SECONDS``:
the start frame is never touched, and the correction grows as drift can. Each frame's result depends
only on its own pixels, the start picture's statistics and its frame number, so a resumed job (which
decodes the same frames again) writes the same video bit for bit, whatever the sections' boundaries.
"""

from __future__ import annotations

import numpy as np
import torch

RAMP_SECONDS = 2.0  # full strength from here on: drift builds over seconds, a first-second correction would only flicker
STD_RATIO = (0.5, 2.0)  # the contrast change allowed: a frame that is nearly flat (a fade) is not blown up
WHITE = torch.tensor([0.95047, 1.0, 1.08883])  # D65
RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
XYZ_TO_RGB = torch.linalg.inv(RGB_TO_XYZ.double()).float()
DELTA = 6 / 29


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) sRGB in [0, 1] -> CIELAB (L in 0..100), in float32 (ample for 8-bit output)."""
    rgb = rgb.float()
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,...jhw->...ihw", RGB_TO_XYZ, linear) / WHITE.view(3, 1, 1)
    f = torch.where(xyz > DELTA**3, xyz.clamp_min(DELTA**3) ** (1 / 3), xyz / (3 * DELTA**2) + 4 / 29)
    return torch.stack([116 * f[..., 1, :, :] - 16, 500 * (f[..., 0, :, :] - f[..., 1, :, :]), 200 * (f[..., 1, :, :] - f[..., 2, :, :])], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_lab`` (sRGB, not clamped)."""
    fy = (lab[..., 0, :, :] + 16) / 116
    f = torch.stack([fy + lab[..., 1, :, :] / 500, fy, fy - lab[..., 2, :, :] / 200], dim=-3)
    xyz = torch.where(f > DELTA, f**3, 3 * DELTA**2 * (f - 4 / 29)) * WHITE.view(3, 1, 1)
    linear = torch.einsum("ij,...jhw->...ihw", XYZ_TO_RGB, xyz)
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def lab_stats(picture: np.ndarray) -> torch.Tensor:
    """A (H, W, 3) uint8 picture's CIELAB mean and standard deviation per channel: (2, 3)."""
    lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1) / 255.0)
    return torch.stack([lab.mean(dim=(-2, -1)), lab.std(dim=(-2, -1))])


def ramp(frame_numbers: torch.Tensor, fps: int) -> torch.Tensor:
    """The correction's strength at each video frame: 0 on frame 0, 1 from ``RAMP_SECONDS`` on."""
    return (frame_numbers / (RAMP_SECONDS * fps)).clamp(0, 1)


def match_colors(pixels: torch.Tensor, first_frame: int, target: torch.Tensor, fps: int, ramp_from: int = 0) -> torch.Tensor:
    """(1, 3, T, H, W) pixels in [-1, 1] starting at video frame ``first_frame``, matched to ``target`` (``lab_stats``).

    The ramp starts at video frame ``ramp_from`` (the job's first frame of its own: 0, or where an
    extended video's frames start to blend into the new ones); that frame is returned as it is.

    One frame at a time (each laid out alike, so a frame's result never depends on its neighbours):
    a section's frames at 640 would take gigabytes at once.
    """
    strengths = ramp(torch.arange(first_frame, first_frame + pixels.shape[2]) - ramp_from, fps)
    out = pixels.clone()
    for t, strength in enumerate(strengths.tolist()):
        if strength > 0:
            out[0, :, t] = match_frame(pixels[0, :, t].contiguous(), target, strength).to(pixels.dtype)
    return out


def match_frame(frame: torch.Tensor, target: torch.Tensor, strength: float) -> torch.Tensor:
    """One (3, H, W) frame in [-1, 1], its Lab mean and std moved ``strength`` of the way to ``target``'s."""
    lab = rgb_to_lab(((frame.float() + 1) / 2).clamp(0, 1))
    mean, std = lab.mean(dim=(-2, -1), keepdim=True), lab.std(dim=(-2, -1), keepdim=True)
    ratio = (target[1].view(3, 1, 1) / std.clamp_min(1e-6)).clamp(*STD_RATIO)
    matched = (lab - mean) * ratio + target[0].view(3, 1, 1)
    return lab_to_rgb(lab + strength * (matched - lab)) * 2 - 1
