"""Plans that continue given latents (--extend): sections, decode spans, and the cross-fade into the given video's frames."""

from __future__ import annotations

import pytest
import torch
from helpers import fake_decode, official_soft_append

from fpgen.decode import Pending, decode_span, stitch
from fpgen.geometry import latent_to_frame, overlap_frames
from fpgen.packing import window_bounds
from fpgen.plan import plan_sections


def test_plan_after_given_windows():
    forward = plan_sections(2, 9, "forward", offset=2)
    assert [s.slot for s in forward.sections] == [2, 3] and forward.num_latents == 1 + 4 * 9 and forward.num_frames == 145
    inverted = plan_sections(5, 9, "inverted", offset=1)
    assert [(s.slot, s.padding) for s in inverted.sections] == [(5, 3), (4, 2), (3, 2), (2, 1), (1, 0)]  # paddings count new sections only
    # the section next to the given latents decodes their last window too, for the cross-fade
    assert decode_span(forward, forward.sections[0]) == (10, 28)
    assert decode_span(inverted, inverted.sections[-1]) == (1, 28)
    assert decode_span(inverted, inverted.sections[0]) == (46, 55)


@pytest.mark.parametrize("order", ["inverted", "forward"])
@pytest.mark.parametrize(("count", "offset", "window"), [(1, 1, 9), (3, 2, 9), (4, 1, 5)])
def test_stitch_cross_fades_into_the_given_frames(order, count, offset, window):
    plan = plan_sections(count, window, order, offset)
    overlap = overlap_frames(window)
    given = torch.randn((1, 3, latent_to_frame(window_bounds(offset, window)[0] - 1) + 1, 2, 2))  # the given video's frames, job timeline
    lead_start = latent_to_frame(window_bounds(offset, window)[0] - window)
    lead = Pending(given[:, :, lead_start:], lead_start)
    assert lead.frames.shape[2] == overlap

    history, pending, pieces = None, None, []
    for section in plan.sections:
        span = decode_span(plan, section)
        decoded = fake_decode(span, window, section.index)
        if order == "inverted":
            history = decoded if history is None else official_soft_append(decoded, history, overlap)
        frames, start, pending = stitch(pending, decoded, latent_to_frame(span[0]), plan, plan.is_last(section), lead)
        pieces.append((start, frames))
    if order == "inverted":  # the new part, made back to front, then joined after the given frames
        whole = official_soft_append(given, history, overlap)
    else:  # the given frames are the history the first decode is soft-appended to, as the official loop would
        whole = given
        for section in plan.sections:
            span = decode_span(plan, section)
            whole = official_soft_append(whole, fake_decode(span, window, section.index), overlap)
    pieces.sort(key=lambda p: p[0])
    assert pieces[0][0] == lead_start
    streamed = torch.cat([given[:, :, :lead_start]] + [f for _, f in pieces], dim=2)
    assert streamed.shape[2] == latent_to_frame(plan.num_latents - 1) + 1
    assert torch.equal(streamed, whole)
