"""FramePack's context packing: which latents go into the 1x/2x/4x slots, and their RoPE frame indices.

This is the one place that knows the index layouts. Generation builds every step's context with
``pack_section`` from the latents made so far; training builds every sample with the same call on
ground-truth latents, so a training sample and an inference step cannot disagree.

Layouts (frame indices, in split order):
- inverted: ``start[1] | blank[padding*window] | window | post[1] | 2x[2] | 4x[16]``; the history is
  the future (the frames after the window), nearest first.
- forward (F1): ``start[1] | 4x[16] | 2x[2] | post[1] | window``; the history is the past, nearest last.
The 1x slot always holds the start latent and the nearest history frame.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fpgen.geometry import FULL_HISTORY
from fpgen.plan import Order, Section, SectionPlan

HISTORY_1X, HISTORY_2X, HISTORY_4X = FULL_HISTORY
HISTORY_LENGTH = HISTORY_1X + HISTORY_2X + HISTORY_4X  # 19 latent frames of history
PAST_LATENTS = 4  # extending with the original model: latents of the given video shown before the start latent (about half a second)


@dataclass(frozen=True)
class IndexLayout:
    """RoPE frame indices (1-D int64) of the noisy window and of each history slot."""

    latents: torch.Tensor
    clean: torch.Tensor
    clean_2x: torch.Tensor
    clean_4x: torch.Tensor


@dataclass(frozen=True)
class PackedContext:
    """Everything the transformer sees besides the noisy window and the text/image conditioning."""

    indices: IndexLayout
    clean: torch.Tensor  # (B, C, 2, h, w): start latent, nearest history frame
    clean_2x: torch.Tensor  # (B, C, 2, h, w)
    clean_4x: torch.Tensor  # (B, C, 16, h, w)


def inverted_layout(window: int, padding: int) -> IndexLayout:
    sizes = [1, padding * window, window, HISTORY_1X, HISTORY_2X, HISTORY_4X]
    start, _blank, latents, post, x2, x4 = torch.arange(sum(sizes)).split(sizes)
    return IndexLayout(latents, torch.cat([start, post]), x2, x4)


def forward_layout(window: int) -> IndexLayout:
    sizes = [1, HISTORY_4X, HISTORY_2X, HISTORY_1X, window]
    start, x4, x2, post, latents = torch.arange(sum(sizes)).split(sizes)
    return IndexLayout(latents, torch.cat([start, post]), x2, x4)


def _fit_history(frames: torch.Tensor | None, like: torch.Tensor, nearest_first: bool) -> torch.Tensor:
    """Exactly HISTORY_LENGTH frames: the nearest ones kept, zeros where the video has none."""
    b, c, _, h, w = like.shape
    out = like.new_zeros((b, c, HISTORY_LENGTH, h, w))
    if frames is None or frames.shape[2] == 0:
        return out
    n = min(frames.shape[2], HISTORY_LENGTH)
    if nearest_first:
        out[:, :, :n] = frames[:, :, :n]
    else:
        out[:, :, HISTORY_LENGTH - n :] = frames[:, :, -n:]
    return out


def pack_inverted(start: torch.Tensor, future: torch.Tensor | None, window: int, padding: int) -> PackedContext:
    """Context for an inverted section: ``future`` is the latents after the window, in time order."""
    post, x2, x4 = _fit_history(future, start, nearest_first=True).split([HISTORY_1X, HISTORY_2X, HISTORY_4X], dim=2)
    return PackedContext(inverted_layout(window, padding), torch.cat([start, post], dim=2), x2, x4)


def pack_forward(start: torch.Tensor, past: torch.Tensor, window: int) -> PackedContext:
    """Context for a forward section: ``past`` is the latents before the window, in time order (start included)."""
    x4, x2, post = _fit_history(past, start, nearest_first=False).split([HISTORY_4X, HISTORY_2X, HISTORY_1X], dim=2)
    return PackedContext(forward_layout(window), torch.cat([start, post], dim=2), x2, x4)


def pack_one_frame(start: torch.Tensor, window: int, target: int, slots: frozenset[str], reference: torch.Tensor | None = None, reference_index: int = 0) -> PackedContext:
    """Context for sampling one frame at RoPE index ``target`` (one-frame edits, musubi-tuner's ``--one_frame_inference``).

    The inverted layout of a first section without padding: the start latent at 0, the history slots
    ``slots`` (of "post", "2x", "4x") from ``1 + window`` on, all zeros. A ``reference`` latent (the
    kisekaeichi variant) takes the post slot's place at ``reference_index``. Left-out slots hold no frames.
    """
    layout = inverted_layout(window, 0)
    zeros = lambda frames: start.new_zeros((*start.shape[:2], frames, *start.shape[3:]))  # noqa: E731
    post, x2, x4 = (size if name in slots else 0 for name, size in (("post", HISTORY_1X), ("2x", HISTORY_2X), ("4x", HISTORY_4X)))
    if reference is not None:
        clean, clean_indices = torch.cat([start, reference], dim=2), torch.tensor([0, reference_index])
    else:
        clean, clean_indices = torch.cat([start, zeros(post)], dim=2), layout.clean[: 1 + post]
    indices = IndexLayout(torch.tensor([target]), clean_indices, layout.clean_2x[:x2], layout.clean_4x[:x4])
    return PackedContext(indices, clean, zeros(x2), zeros(x4))


def limit_history(context: PackedContext, history: tuple[int, int, int], order: Order) -> PackedContext:
    """``context`` with each history slot (1x, 2x, 4x) keeping only its ``history`` nearest frames, the rest blank (zeros).

    ``--history 1,0,0`` is the short-history ablation: the layout, shapes and RoPE indices stay the
    official ones, the 2x and 4x slots hold nothing, as at the start of a video. The start latent
    and any extra context frames (an extended video's) are never blanked. Nearest is the slot's
    first frame for the inverted order (the history is the future) and its last for the forward one.
    """
    if tuple(history) == FULL_HISTORY:
        return context

    def keep(frames: torch.Tensor, count: int) -> torch.Tensor:
        kept = torch.zeros_like(frames)
        if count:
            nearest = slice(0, count) if order == "inverted" else slice(frames.shape[2] - count, frames.shape[2])
            kept[:, :, nearest] = frames[:, :, nearest]
        return kept

    clean = torch.cat([context.clean[:, :, :1], keep(context.clean[:, :, 1:2], history[0]), context.clean[:, :, 2:]], dim=2)
    return replace(context, clean=clean, clean_2x=keep(context.clean_2x, history[1]), clean_4x=keep(context.clean_4x, history[2]))


def window_bounds(slot: int, window: int) -> tuple[int, int]:
    """Latent positions [begin, end) of a section's window in the video (position 0 is the start latent)."""
    begin = 1 + slot * window
    return begin, begin + window


def pack_section(
    order: Order,
    video: torch.Tensor,
    section: Section,
    window: int,
    start: torch.Tensor | None = None,
    future: torch.Tensor | None = None,
) -> PackedContext:
    """The context of ``section`` from a video's latents in time order, ``video[:, :, 0]`` being the start latent.

    Only the latents a section may see are read: for the inverted order those after its window
    (already generated, or ground truth when training), for the forward order those before it.
    ``start`` overrides the start latent and ``future`` the frames after the window (an end frame).
    """
    start = video[:, :, :1] if start is None else start
    begin, end = window_bounds(section.slot, window)
    if order == "inverted":
        return pack_inverted(start, video[:, :, end:] if future is None else future, window, section.padding)
    return pack_forward(start, video[:, :, :begin], window)


def context_to(context: PackedContext, device: torch.device) -> PackedContext:
    """Move the history slots to ``device`` once per section instead of at every step."""
    return PackedContext(context.indices, context.clean.to(device), context.clean_2x.to(device), context.clean_4x.to(device))


def add_clean_frames(context: PackedContext, latents: torch.Tensor, indices: torch.Tensor) -> PackedContext:
    """Extra full-resolution context frames at RoPE frame ``indices`` (the transformer takes any number)."""
    layout = replace(context.indices, clean=torch.cat([context.indices.clean, indices]))
    return replace(context, indices=layout, clean=torch.cat([context.clean, latents.to(context.clean)], dim=2))


def inverted_context(plan: SectionPlan, video: torch.Tensor, section: Section, start: torch.Tensor, arrival: torch.Tensor | None) -> PackedContext:
    """An inverted section's context, with the picture it arrives at or an extended video's frames where they belong.

    The picture a section arrives at (the end picture for the video's end, a keyframe for a section
    boundary) is its nearest future frame (its 1x history slot), the frames made after the boundary
    following it. Extending: the given video's last latents sit just before the start latent, at
    negative RoPE indices, in every section.
    """
    after = window_bounds(section.slot, plan.window)[1]
    future = torch.cat([arrival, video[:, :, after:]], dim=2) if arrival is not None else None
    context = pack_section("inverted", video, section, plan.window, start=start, future=future)
    if plan.offset:
        first_new = window_bounds(plan.offset, plan.window)[0]
        past = min(PAST_LATENTS, first_new - 1)
        context = add_clean_frames(context, video[:, :, first_new - past : first_new], torch.arange(-past, 0))
    return context


def forward_context(plan: SectionPlan, video: torch.Tensor, section: Section, start: torch.Tensor, arrival: torch.Tensor | None) -> PackedContext:
    """A forward (F1) section's context; an extended video's latents simply are its history.

    The picture a section arrives at (the end picture, or a keyframe at its end boundary) is shown
    one frame after its window, whose last frame is pinned to it while sampling (see
    ``fpgen.denoiser.pin_last_frame``).
    """
    context = pack_section("forward", video, section, plan.window, start=start)
    if arrival is not None:
        context = add_clean_frames(context, arrival, context.indices.latents[-1:] + 1)
    return context


def helios_context(plan: SectionPlan, video: torch.Tensor, section: Section, start: torch.Tensor, end: torch.Tensor | None) -> PackedContext:
    """A Helios chunk's context: F1's layout, the video's first latent being the history seed (zeros, or the noised picture).

    Text-to-video has no picture, so its start latent is all zeros: the first chunk sees zeros in the
    start slot and every later one the first latent the first chunk made (HeliosPipeline's
    ``keep_first_frame``). Helios has no end picture (``end`` is always None).
    """
    made_start = not section.is_first and not start.any()
    return pack_section("forward", video, section, plan.window, start=video[:, :, 1:2] if made_start else start)
