"""Streaming stitch gives exactly the official whole-video cross-fade, with bounded pending frames."""

from __future__ import annotations

import pytest
import torch
from helpers import fake_decode, official_soft_append

from fpgen.decode import cross_fade, decode_span, stitch
from fpgen.geometry import latent_to_frame, overlap_frames
from fpgen.plan import plan_sections


@pytest.mark.parametrize("order", ["inverted", "forward"])
@pytest.mark.parametrize(("count", "window"), [(1, 9), (2, 9), (5, 9), (4, 5), (3, 1)])
def test_stitch_equals_the_official_history(order, count, window):
    plan = plan_sections(count, window, order)
    overlap = overlap_frames(window)
    history, pending, pieces = None, None, []
    for section in plan.sections:
        span = decode_span(plan, section)
        decoded = fake_decode(span, window, section.index)
        if history is None:
            history = decoded
        elif order == "inverted":
            history = official_soft_append(decoded, history, overlap)
        else:
            history = official_soft_append(history, decoded, overlap)
        frames, start, pending = stitch(pending, decoded, latent_to_frame(span[0]), plan, plan.is_last(section))
        pieces.append((start, frames))
        assert pending is None or pending.frames.shape[2] <= overlap
    assert history.shape[2] == plan.num_frames
    pieces.sort(key=lambda p: p[0])
    position = 0
    for start, frames in pieces:
        assert start == position
        position += frames.shape[2]
    assert torch.equal(torch.cat([f for _, f in pieces], dim=2), history)


def test_decode_spans_follow_the_official_slices():
    inverted = plan_sections(4, 9, "inverted")
    assert [decode_span(inverted, s) for s in inverted.sections] == [(28, 37), (19, 37), (10, 28), (0, 19)]
    forward = plan_sections(3, 9, "forward")
    assert [decode_span(forward, s) for s in forward.sections] == [(0, 10), (1, 19), (10, 28)]


def test_cross_fade_weights():
    a, b = torch.ones(1, 1, 5, 1, 1), torch.zeros(1, 1, 5, 1, 1)
    assert cross_fade(a, b, 3)[0, 0, :, 0, 0].tolist() == [1, 1, 1, 0.5, 0, 0, 0]
