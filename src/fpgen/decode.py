"""From latents to frames: the official per-section VAE decode and the linear cross-fade between sections.

Every section decodes its own window plus the neighbouring window already made (so the causal VAE
sees context), and the ``4*window - 3`` frames the two decodes share are cross-faded. ``stitch``
does this incrementally: it returns the frames no later section can change, and keeps only the
overlap pending, so memory does not grow with the video's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fpgen.packing import window_bounds
from fpgen.geometry import overlap_frames
from fpgen.plan import Section, SectionPlan


def decode_span(plan: SectionPlan, section: Section) -> tuple[int, int]:
    """Latent positions [begin, end) the official code decodes after ``section``.

    Inverted: the new window and the window after it (the start latent too on the last section).
    Forward: the new window and the one before it (the start latent too on the first section).
    A plan that continues given latents (``plan.offset``, an extended video) decodes the window
    before its first new section instead of a start latent, so the join is cross-faded like any other.
    """
    begin, end = window_bounds(section.slot, plan.window)
    if plan.order == "inverted":
        first_in_time = plan.is_last(section)
        begin = (0 if section.slot == 0 else begin - plan.window) if first_in_time else begin
        return begin, (end if section.is_first else end + plan.window)
    return (0 if section.slot == 0 else end - 2 * plan.window), end


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, T, h, w) scaled latents -> (B, 3, 4T-3, H, W) pixels in about [-1, 1], on the CPU in the VAE's dtype."""
    scaled = latents.float() / vae.config.scaling_factor
    return vae.decode(scaled.to(device=vae.device, dtype=vae.dtype)).sample.cpu()


def cross_fade(before: torch.Tensor, after: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join two clips along time, blending ``before``'s last and ``after``'s first ``overlap`` frames linearly."""
    weights = torch.linspace(1, 0, overlap, dtype=before.dtype).view(1, 1, -1, 1, 1)
    blended = weights * before[:, :, -overlap:] + (1 - weights) * after[:, :, :overlap]
    return torch.cat([before[:, :, :-overlap], blended, after[:, :, overlap:]], dim=2).to(before)


@dataclass(frozen=True)
class Pending:
    """Decoded frames a later section may still blend into, and the video frame they start at."""

    frames: torch.Tensor
    start: int


def pending_after(decoded: torch.Tensor, decoded_start: int, plan: SectionPlan) -> Pending:
    """The overlap a section leaves for the next one: always a slice of the section's own decode.

    (The cross-fade never reaches it, since a decode spans at least two overlaps.) A resumed job
    rebuilds it by decoding the last finished section's span again.
    """
    overlap = overlap_frames(plan.window)
    if plan.order == "inverted":
        return Pending(decoded[:, :, :overlap], decoded_start)
    return Pending(decoded[:, :, -overlap:], decoded_start + decoded.shape[2] - overlap)


def stitch(
    pending: Pending | None, decoded: torch.Tensor, decoded_start: int, plan: SectionPlan, is_last: bool, lead: Pending | None = None
) -> tuple[torch.Tensor, int, Pending | None]:
    """Blend a section's decode in; return (final frames, the video frame they start at, what stays pending).

    ``lead`` holds frames that come before the job's first decoded frame (the end of an extended
    video); the decode nearest to them in time is cross-faded into them.
    """
    overlap = overlap_frames(plan.window)
    lead = Pending(lead.frames.to(decoded.dtype), lead.start) if lead is not None else None
    if plan.order == "forward" and pending is None:
        pending = lead
    if pending is None:
        joined, start = decoded, decoded_start
    elif plan.order == "inverted":  # new frames go in front
        joined, start = cross_fade(decoded, pending.frames, overlap), decoded_start
    else:
        joined, start = cross_fade(pending.frames, decoded, overlap), pending.start
    if is_last:
        if plan.order == "inverted" and lead is not None:
            joined, start = cross_fade(lead.frames, joined, overlap), lead.start
        return joined, start, None
    pending = pending_after(decoded, decoded_start, plan)
    if plan.order == "inverted":
        return joined[:, :, overlap:], start + overlap, pending
    return joined[:, :, : pending.start - start], start, pending
