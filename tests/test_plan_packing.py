"""Section plans and FramePack's index layouts, checked against the official rules written out by hand."""

from __future__ import annotations

import pytest
import torch

from fpgen.packing import HISTORY_LENGTH, forward_layout, inverted_layout, pack_forward, pack_inverted, pack_section
from fpgen.geometry import section_count
from fpgen.plan import inverted_paddings, plan_sections


@pytest.mark.parametrize(
    ("seconds", "window", "expected"),
    [(5, 9, 4), (60, 9, 50), (3.0, 9, 2), (1.8, 9, 2), (1.2, 9, 1), (0.1, 9, 1), (4.0, 5, 6), (2.4, 9, 2), (3.6, 9, 3)],
)
def test_section_count_uses_pythons_round(seconds, window, expected):
    assert section_count(seconds, window) == expected


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, [0]), (2, [1, 0]), (3, [2, 1, 0]), (4, [3, 2, 1, 0]),
        (5, [3, 2, 2, 1, 0]), (6, [3, 2, 2, 2, 1, 0]),
    ],
)  # fmt: skip
def test_inverted_padding_schedule(count, expected):
    assert inverted_paddings(count) == expected


def test_padding_schedule_of_a_minute():
    paddings = inverted_paddings(50)
    assert len(paddings) == 50 and paddings[0] == 3 and paddings[-2:] == [1, 0] and set(paddings[1:-2]) == {2}


def test_inverted_layout_by_hand():
    far = inverted_layout(9, 3)
    assert far.latents.tolist() == list(range(28, 37))
    assert far.clean.tolist() == [0, 37]
    assert far.clean_2x.tolist() == [38, 39]
    assert far.clean_4x.tolist() == list(range(40, 56))
    last = inverted_layout(9, 0)
    assert last.latents.tolist() == list(range(1, 10))
    assert last.clean.tolist() == [0, 10] and last.clean_2x.tolist() == [11, 12] and last.clean_4x.tolist() == list(range(13, 29))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6])
def test_inverted_plan_layouts(count):
    plan = plan_sections(count, 9, "inverted")
    assert [s.slot for s in plan.sections] == list(range(count - 1, -1, -1))
    for section, padding in zip(plan.sections, inverted_paddings(count)):
        layout = inverted_layout(9, section.padding)
        assert section.padding == padding
        # the window sits after the start frame and `padding` blank windows; history follows it directly
        assert layout.latents[0].item() == 1 + padding * 9
        assert layout.clean[1].item() == layout.latents[-1].item() + 1
        assert layout.clean_4x[-1].item() == 1 + padding * 9 + 9 + HISTORY_LENGTH - 1
    assert plan.num_frames == 36 * count + 1


def test_forward_layout_is_fixed():
    layout = forward_layout(9)
    assert layout.clean.tolist() == [0, 19]
    assert layout.clean_4x.tolist() == list(range(1, 17))
    assert layout.clean_2x.tolist() == [17, 18]
    assert layout.latents.tolist() == list(range(20, 29))


def _video(latents: int) -> torch.Tensor:
    return torch.arange(1, latents + 1, dtype=torch.float32).view(1, 1, latents, 1, 1).expand(1, 2, latents, 2, 2).clone()


def test_pack_inverted_takes_the_future_nearest_first():
    video = _video(1 + 4 * 9)  # frame values = position + 1
    plan = plan_sections(4, 9, "inverted")
    second = plan.sections[1]  # slot 2: window 19..27, future 28..36 (9 frames, rest zero)
    context = pack_section("inverted", video, second, 9)
    assert context.clean[0, 0, :, 0, 0].tolist() == [1, 29]
    assert context.clean_2x[0, 0, :, 0, 0].tolist() == [30, 31]
    assert context.clean_4x[0, 0, :, 0, 0].tolist() == [32, 33, 34, 35, 36, 37] + [0] * 10
    first = pack_section("inverted", video, plan.sections[0], 9)  # the video's end: no future at all
    assert first.clean[0, 0, 1].abs().sum() == 0 and first.clean_2x.abs().sum() == 0 and first.clean_4x.abs().sum() == 0


def test_pack_forward_takes_the_past_nearest_last():
    video = _video(1 + 4 * 9)
    plan = plan_sections(4, 9, "forward")
    context = pack_section("forward", video, plan.sections[0], 9)
    assert context.clean[0, 0, :, 0, 0].tolist() == [1, 1]  # the start latent is also the nearest frame
    assert context.clean_2x.abs().sum() == 0 and context.clean_4x.abs().sum() == 0
    late = pack_section("forward", video, plan.sections[3], 9)  # window 28..36, past 0..27
    assert late.clean[0, 0, :, 0, 0].tolist() == [1, 28]
    assert late.clean_2x[0, 0, :, 0, 0].tolist() == [26, 27]
    assert late.clean_4x[0, 0, :, 0, 0].tolist() == list(range(10, 26))


def test_explicit_histories_match_pack_section():
    video = _video(1 + 3 * 9)
    start = video[:, :, :1]
    assert torch.equal(pack_inverted(start, video[:, :, 19:], 9, 1).clean_4x, pack_section("inverted", video, plan_sections(3, 9, "inverted").sections[1], 9).clean_4x)
    assert torch.equal(pack_forward(start, video[:, :, :19], 9).clean_4x, pack_section("forward", video, plan_sections(3, 9, "forward").sections[2], 9).clean_4x)
