"""Training samples and their order.

A sample is one section of one cached clip: the section's window of ground-truth latents is the
target, and its context is packed by ``fpgen.packing.pack_section`` from the clip's other
ground-truth latents, with the section plan (``fpgen.plan``) of a generation of that length. So
the inverted model sees the future frames and the official padding schedule, F1 the past frames,
exactly as at inference (teacher forcing).

The start latent (frame 0, in the start slot and, for F1, as the first frame of history) is the
first frame encoded alone, as generation encodes its picture, not the clip's first latent.

A ``--one-frame`` pair (its entry has a ``target_latent``) is one sample: the target latent is the
one-frame window and the context is exactly the one ``fpgen edit`` packs by default
(``one_frame_context``), so a LoRA trained on pairs is used by edit as it was trained.

The order is a pure function of the seed: epoch ``e`` shuffles the samples with a generator seeded
from (seed, e), groups them by layout (size and padding: only those can share a batch), and
shuffles the batches. Micro-batch ``n`` of the run is batch ``n`` of that endless stream, so a
resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from fpgen.edit import SLOTS
from fpgen.geometry import FULL_HISTORY
from fpgen.packing import PackedContext, limit_history, pack_one_frame, pack_section, window_bounds
from fpgen.plan import Order, Section, plan_sections
from fpgen.tensorfile import load_tensors
from fpgen.training.cache import CachedClip
from fpgen.transformer import Conditioning


@dataclass(frozen=True)
class Batch:
    """Sections of one layout: their ground-truth windows, packed contexts and conditioning."""

    latents: torch.Tensor  # (B, 16, window, h, w)
    context: PackedContext
    cond: Conditioning


@dataclass(frozen=True)
class SampleRef:
    clip: int  # index into the cached clips
    section: Section


def sample_refs(clips: list[CachedClip], window: int, order: Order) -> list[SampleRef]:
    """Every section of every clip, as a generation of that clip's length would visit them."""
    return [SampleRef(i, section) for i, clip in enumerate(clips) for section in plan_sections(clip.sections, window, order).sections]


def layout_key(clips: list[CachedClip], ref: SampleRef) -> tuple:
    """Samples with equal keys have equal shapes and RoPE indices, so they can be batched."""
    return clips[ref.clip].size, ref.section.padding


def seeded(seed: int, *counters: int) -> torch.Generator:
    """A CPU generator for one (seed, counters...) combination, independent of any global RNG state."""
    value = seed
    for counter in counters:
        value = (value * 6364136223846793005 + counter + 1442695040888963407) % (2**63)
    return torch.Generator("cpu").manual_seed(value)


def epoch_batches(keys: list, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Epoch ``epoch``'s batches: sample indices shuffled, grouped by layout key, chunked, and the batches shuffled."""
    generator = seeded(seed, 1, epoch)
    groups: dict = {}
    for index in torch.randperm(len(keys), generator=generator).tolist():
        groups.setdefault(keys[index], []).append(index)
    batches = [members[i : i + batch_size] for _, members in sorted(groups.items(), key=lambda kv: str(kv[0])) for i in range(0, len(members), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class BatchOrder:
    """Micro-batch ``n`` of the endless stream of epochs (an epoch's batches are computed once)."""

    def __init__(self, keys: list, batch_size: int, seed: int):
        self.keys, self.batch_size, self.seed = keys, batch_size, seed
        self.per_epoch = len(epoch_batches(keys, batch_size, seed, 0))
        self._epoch, self._batches = -1, []

    def __call__(self, n: int) -> tuple[int, list[int]]:
        epoch, position = divmod(n, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.keys, self.batch_size, self.seed, epoch)
        return epoch, self._batches[position]


def collate_conditioning(texts: list[dict[str, torch.Tensor]], image_embeds: list[torch.Tensor]) -> Conditioning:
    """Prompt embeddings zero-padded to the longest in the batch, with a mask of the real tokens."""
    longest = max(t["prompt_embeds"].shape[1] for t in texts)
    embeds = torch.zeros((len(texts), longest, texts[0]["prompt_embeds"].shape[2]), dtype=texts[0]["prompt_embeds"].dtype)
    mask = torch.zeros((len(texts), longest), dtype=torch.bool)
    for row, text in enumerate(texts):
        tokens = text["prompt_embeds"].shape[1]
        embeds[row, :tokens], mask[row, :tokens] = text["prompt_embeds"][0], True
    return Conditioning(embeds, mask, torch.cat([t["pooled"] for t in texts]), torch.cat(image_embeds))


def caption_dropped(count: int, rate: float, generator: torch.Generator) -> list[bool]:
    """Which of ``count`` samples train with the empty caption (``--caption-dropout``), drawn from ``generator``."""
    return (torch.rand(count, generator=generator) < rate).tolist()


def build_batch(
    refs: list[SampleRef],
    clips: list[CachedClip],
    window: int,
    order: Order,
    load: Callable[[Path], dict[str, torch.Tensor]] | None = None,
    history: tuple[int, int, int] = FULL_HISTORY,
    captions: list[Path] | None = None,
) -> Batch:
    """The ground-truth windows and packed contexts of ``refs`` (all of one layout), with their conditioning.

    ``history`` blanks history slots as generation's ``--history`` does; ``captions`` replaces the
    samples' text entries (caption dropout).
    """
    load = load or cache_entry
    targets, contexts, texts, images = [], [], [], []
    for number, ref in enumerate(refs):
        clip = clips[ref.clip]
        video = load(clip.video)
        if "target_latent" in video:
            targets.append(video["target_latent"])
            contexts.append(one_frame_context(video["start_latent"], window))
        else:
            latents = torch.cat([video["start_latent"], video["latents"][:, :, 1:]], dim=2)  # the start latent as generation makes it
            begin, end = window_bounds(ref.section.slot, window)
            targets.append(latents[:, :, begin:end])
            contexts.append(limit_history(pack_section(order, latents, ref.section, window), history, order))
        texts.append(load(captions[number] if captions else clip.text))
        images.append(video["image_embeds"])
    context = PackedContext(
        contexts[0].indices,
        torch.cat([c.clean for c in contexts]),
        torch.cat([c.clean_2x for c in contexts]),
        torch.cat([c.clean_4x for c in contexts]),
    )
    return Batch(torch.cat(targets), context, collate_conditioning(texts, images))


def one_frame_context(start: torch.Tensor, window: int) -> PackedContext:
    """``fpgen edit``'s default context without a reference (``EditSpec.target``, ``EditSpec.slots``): target index ``window``, every history slot, blank."""
    return pack_one_frame(start, window, window, frozenset(SLOTS))


def cache_entry(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


@dataclass(frozen=True)
class SampleOptions:
    """How samples are made beyond the data: the history kept, caption dropout (with the empty caption's entry), entries kept in memory."""

    history: tuple[int, int, int] = FULL_HISTORY
    caption_dropout: float = 0.0
    empty_caption: Path | None = None
    in_ram: bool = False


class TrainingSamples:
    """The training clips' sections in the seeded order: ``samples(n)`` is micro-batch ``n``'s epoch and batch.

    Micro-batch ``n``'s dropped captions are drawn from (seed, 4, n), so a resumed run drops the same ones.
    """

    def __init__(self, clips: list[CachedClip], batch_size: int, window: int, order: Order, seed: int, options: SampleOptions = SampleOptions()):
        self.clips, self.window, self.order, self.seed, self.options = clips, window, order, seed, options
        self.refs = sample_refs(clips, window, order)
        self.batch_order = BatchOrder([layout_key(clips, r) for r in self.refs], batch_size, seed)
        self.load = cache(cache_entry) if options.in_ram else cache_entry

    def __call__(self, n: int) -> tuple[int, Batch]:
        epoch, indices = self.batch_order(n)
        refs, captions = [self.refs[i] for i in indices], None
        if self.options.caption_dropout:
            dropped = caption_dropped(len(refs), self.options.caption_dropout, seeded(self.seed, 4, n))
            captions = [self.options.empty_caption if drop else self.clips[ref.clip].text for ref, drop in zip(refs, dropped)]
        return epoch, build_batch(refs, self.clips, self.window, self.order, self.load, self.options.history, captions)


def evaluation_batches(clips: list[CachedClip], window: int, order: Order, history: tuple[int, int, int] = FULL_HISTORY) -> list[Batch]:
    """Every section of the held-out clips, one a batch."""
    return [build_batch([ref], clips, window, order, history=history) for ref in sample_refs(clips, window, order)]
