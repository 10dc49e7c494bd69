"""The training cache: VAE latents, SigLIP and text embeddings on disk, so training loads only the transformer.

Every entry is a safetensors file named by a hash of everything it was made from: a video entry by
the video's bytes, its size, the window, the section cap and the VAE/SigLIP weights; a text entry by
the caption and the text encoders' weights. A changed video, caption or setting therefore misses
the cache and is encoded again, an unchanged one is read back, and the encoders are loaded only
when something is missing. Files appear whole (written aside, then renamed). Clips are probed,
hashed and decoded a few ahead in threads while the encoders work (``READ_AHEAD``).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from fpgen.buckets import load_image, pick_bucket, resize_and_center_crop
from fpgen.conditioning import PROMPT_PAD_LENGTH, PromptEmbedding, encode_image, encode_latents, encode_prompt
from fpgen.hub import ModelFiles
from fpgen.loading import Components
from fpgen.runtime import RuntimePlan
from fpgen.pixels import to_pixels
from fpgen.tensorfile import save_tensors
from fpgen.training.data import Clip, ClipFrames, UnreadableClip, clip_size, read_clip, read_pair

CACHE_VERSION = 2
READ_AHEAD = 4  # clips read ahead of the encoders
VIDEO_ENCODERS = ("vae", "image_encoder")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class CacheSettings:
    size: tuple[int, int] | None
    resolution: int
    window: int
    max_sections: int | None


@dataclass(frozen=True)
class CachedClip:
    clip: Clip
    video: Path  # latents (1, 16, T, h, w) float32 (a pair: target_latent (1, 16, 1, h, w)), start_latent (1, 16, 1, h, w), image_embeds (1, N, E)
    text: Path  # prompt_embeds (1, tokens, D) and pooled (1, P)
    size: tuple[int, int]
    sections: int


@dataclass(frozen=True)
class CachedStart:
    """A validation video's inputs: start latent and image embeddings, and the prompt's text entry."""

    image: Path
    text: Path
    size: tuple[int, int]


@dataclass
class CacheReport:
    videos_encoded: int = 0
    videos_reused: int = 0
    texts_encoded: int = 0
    texts_reused: int = 0
    loaded: list[str] = field(default_factory=list)  # the encoders this run had to load
    too_short: list[str] = field(default_factory=list)  # clips shorter than one section
    unreadable: list[str] = field(default_factory=list)  # clips ffmpeg cannot read: skipped


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def weights_id(folder: Path) -> str:
    """Identifies a model folder's weights: its config and the names and sizes of its files."""
    files = sorted((p.name, p.stat().st_size) for p in Path(folder).iterdir() if p.is_file())
    config = (Path(folder) / "config.json").read_text() if (Path(folder) / "config.json").is_file() else ""
    return _digest({"files": files, "config": config})


def _sections_of(path: Path) -> int:
    with safe_open(str(path), framework="pt") as handle:
        return int(handle.metadata()["sections"])


class _Encoders:
    """The encoders of ``Components``, each group loaded the first time it is needed, so a warm cache loads none."""

    def __init__(self, files: ModelFiles, runtime: RuntimePlan, report: CacheReport):
        self.components, self.report = Components(files, runtime), report
        self.loaders = {"vae": self.components.load_vae, "image_encoder": self.components.load_image_encoder, "text_encoders": self.components.load_text_encoders}

    def get(self, name: str):
        models = self.components
        if getattr(models, "text_encoder" if name == "text_encoders" else name) is None:
            self.loaders[name]()
            self.report.loaded.append(name)
        return {
            "vae": lambda: models.vae,
            "image_encoder": lambda: (models.feature_extractor, models.image_encoder),
            "text_encoders": lambda: (models.tokenizer, models.text_encoder, models.tokenizer_2, models.text_encoder_2),
        }[name]()

    def encode_prompt(self, text: str) -> dict[str, torch.Tensor]:
        embedding = encode_prompt(text, *self.get("text_encoders"))
        return {"prompt_embeds": embedding.embeds[:, : embedding.tokens].cpu(), "pooled": embedding.pooled.cpu()}

    def _latents(self, frames: np.ndarray, tiled: bool) -> torch.Tensor:
        vae = self.get("vae")
        if tiled and self.components.runtime.is_cuda:
            vae.enable_tiling()  # whole clips at full size do not fit in one piece
        else:
            vae.disable_tiling()  # a single picture is encoded whole, as generation does
        return encode_latents(vae, to_pixels(frames))

    def encode_picture(self, frames: np.ndarray) -> dict[str, torch.Tensor]:
        """Latents of (T, H, W, 3) frames, the first frame encoded alone, and its SigLIP embeddings.

        The VAE's group norms pool over time, so a clip's first latent depends on the frames after it;
        generation encodes the start picture alone, and so does the training start latent.
        """
        tensors = {"start_latent": self._latents(frames[:1], tiled=False), "image_embeds": encode_image(frames[0], *self.get("image_encoder")).cpu()}
        if len(frames) > 1:
            tensors["latents"] = self._latents(frames, tiled=True)
        return tensors

    def encode_pair(self, frames: np.ndarray) -> dict[str, torch.Tensor]:
        """A ``--one-frame`` pair's entry: the source as ``encode_picture`` makes a start picture, and the target encoded alone."""
        return {**self.encode_picture(frames[:1]), "target_latent": self._latents(frames[1:2], tiled=False)}


def _text_entry(cache_dir: Path, caption: str, text_id: str) -> Path:
    return cache_dir / "text" / f"{_digest({'v': CACHE_VERSION, 'caption': caption, 'encoders': text_id})}.safetensors"


def _text_id(files: ModelFiles) -> str:
    return _digest({name: weights_id(files.paths[name]) for name in TEXT_ENCODERS})


def text_entry(cache_dir: Path, caption: str, files: ModelFiles) -> Path:
    """Where ``caption``'s embeddings are cached (``build_cache`` makes it when asked for in ``extra_captions``)."""
    return _text_entry(cache_dir, caption, _text_id(files))


@dataclass(frozen=True)
class _Read:
    """A clip's cache entry and size, and its frames when the entry is missing (read ahead, in a thread)."""

    entry: Path
    size: tuple[int, int]
    frames: ClipFrames | None


def _read_ahead(clip: Clip, settings: CacheSettings, cache_dir: Path, video_id: str) -> _Read:
    """Everything of a clip's entry that needs no encoder; raises ``UnreadableClip``."""
    size = clip_size(clip, settings.size, settings.resolution)
    if clip.target is not None:
        key = {"v": CACHE_VERSION, "source": file_digest(clip.video), "target": file_digest(clip.target), "size": size, "encoders": video_id}
        entry = cache_dir / "pair" / f"{_digest(key)}.safetensors"
        return _Read(entry, size, None if entry.is_file() else read_pair(clip, size))
    key = {"v": CACHE_VERSION, "video": file_digest(clip.video), "size": size, "window": settings.window,
           "max_sections": settings.max_sections, "encoders": video_id}  # fmt: skip
    entry = cache_dir / "video" / f"{_digest(key)}.safetensors"
    return _Read(entry, size, None if entry.is_file() else read_clip(clip.video, size, settings.window, settings.max_sections))


def _video_entry(clip: Clip, read: _Read, encoders: _Encoders) -> None:
    """The clip's cache entry, encoded from its frames if it was missing."""
    if read.frames is None:
        encoders.report.videos_reused += 1
        return
    encode = encoders.encode_pair if clip.target is not None else encoders.encode_picture
    tensors = encode(read.frames.frames) if read.frames.sections else {}
    save_tensors(read.entry, tensors, {"sections": str(read.frames.sections), "fps": str(read.frames.fps), "source": clip.name})
    encoders.report.videos_encoded += 1


def _read_clips(clips: list[Clip], settings: CacheSettings, cache_dir: Path, video_id: str) -> Iterator[tuple[Clip, Future]]:
    """Each clip with its ``_read_ahead`` under way: READ_AHEAD clips are probed, hashed and decoded (ffmpeg runs
    in its own process) while the encoders work on the one before, and no more, so memory stays bounded."""
    with ThreadPoolExecutor(READ_AHEAD) as pool:
        pending: deque = deque()
        try:
            for clip in clips:
                pending.append((clip, pool.submit(_read_ahead, clip, settings, cache_dir, video_id)))
                if len(pending) > READ_AHEAD:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            pool.shutdown(cancel_futures=True)


def build_cache(
    clips: list[Clip],
    settings: CacheSettings,
    files: ModelFiles,
    runtime: RuntimePlan,
    cache_dir: Path,
    validation: tuple[Path, str] | None = None,
    on_progress: Progress | None = None,
    extra_captions: tuple[str, ...] = (),
) -> tuple[list[CachedClip], CachedStart | None, CacheReport]:
    """Make sure every clip (and the validation picture and prompt, and ``extra_captions``) is cached; encode only what is missing."""
    progress = on_progress or (lambda what, done, total: None)
    report = CacheReport()
    encoders = _Encoders(files, runtime, report)
    video_id = _digest({name: weights_id(files.paths[name]) for name in VIDEO_ENCODERS})
    text_id = _text_id(files)

    cached = []
    for number, (clip, reading) in enumerate(_read_clips(clips, settings, cache_dir, video_id)):
        try:
            read = reading.result()
        except UnreadableClip:
            report.unreadable.append(clip.name)  # one clip ffmpeg cannot read does not stop the others
        else:
            _video_entry(clip, read, encoders)
            sections = _sections_of(read.entry)
            if sections == 0:
                report.too_short.append(clip.name)
            cached.append(CachedClip(clip, read.entry, _text_entry(cache_dir, clip.caption, text_id), read.size, sections))
        progress("videos", number + 1, len(clips))

    start = None
    if validation is not None:
        image_path, prompt = validation
        picture = load_image(image_path)
        size = settings.size or pick_bucket(picture.shape[0], picture.shape[1], settings.resolution)
        key = {"v": CACHE_VERSION, "image": file_digest(image_path), "size": size, "encoders": video_id}
        entry = cache_dir / "image" / f"{_digest(key)}.safetensors"
        if not entry.is_file():
            picture = resize_and_center_crop(picture, *size)
            save_tensors(entry, encoders.encode_picture(picture[None]), {"sections": "0"})
        start = CachedStart(entry, _text_entry(cache_dir, prompt, text_id), size)

    captions = {c.text: c.clip.caption for c in cached if c.sections}
    if start is not None:
        captions[start.text] = validation[1]
    captions.update({_text_entry(cache_dir, caption, text_id): caption for caption in extra_captions})
    for number, (entry, caption) in enumerate(sorted(captions.items())):
        if entry.is_file():
            report.texts_reused += 1
        else:
            save_tensors(entry, encoders.encode_prompt(caption), {"caption": caption})
            report.texts_encoded += 1
        progress("captions", number + 1, len(captions))
    return [c for c in cached if c.sections], start, report


def cached_prompt(entry: dict[str, torch.Tensor]) -> PromptEmbedding:
    """A text entry back as generation's ``PromptEmbedding`` (zero-padded to 512 tokens, with its mask)."""
    embeds, tokens = entry["prompt_embeds"], entry["prompt_embeds"].shape[1]
    padded = embeds.new_zeros((1, PROMPT_PAD_LENGTH, embeds.shape[2]))
    padded[:, :tokens] = embeds
    mask = torch.zeros((1, PROMPT_PAD_LENGTH), dtype=torch.bool)
    mask[:, :tokens] = True
    return PromptEmbedding(padded, mask, entry["pooled"], tokens, False)
