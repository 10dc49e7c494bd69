"""End picture and --extend on the tiny models: which latents reach which section, and how the join looks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GOLDEN

from fpgen.api import generate_video
from fpgen.buckets import load_image, resize_and_center_crop
from fpgen.conditioning import encode_image, encode_latents
from fpgen.decode import decode_latents
from fpgen.packing import PAST_LATENTS
from fpgen.packing import HISTORY_LENGTH, window_bounds
from fpgen.spec import Settings
from fpgen.engine import generate_frames
from fpgen.events import SectionStarted
from fpgen.pixels import picture_to_pixels, to_pixels
from fpgen.video import read_mp4
from enginejob import prepare

SIZE = (32, 32)
START = load_image(GOLDEN / "input.png")
END = np.ascontiguousarray(np.flip(START, axis=1)[:, :, ::-1])  # mirrored, colours swapped: another picture


def latent_of(models, picture):
    return encode_latents(models.vae, picture_to_pixels(resize_and_center_crop(picture, *SIZE)))


def run(models, settings, end=None):
    started, pieces = [], []
    job, inputs = prepare(models, START, settings, end)
    result = generate_frames(models, inputs, job.plan, job.settings, lambda f, s: pieces.append((s, f)), lambda e: started.append(e) if isinstance(e, SectionStarted) else None)
    result.frames = torch.cat([f for _, f in sorted(pieces, key=lambda p: p[0])], dim=2)
    return result, started


def report_distance(model: str, models, with_end, without) -> None:
    """How close the video's end gets to the end picture, with and without it (printed: run pytest -s to see)."""
    end_latent = latent_of(models, END)
    target = torch.from_numpy(resize_and_center_crop(END, *SIZE)).double()
    round_trip = ((decode_latents(models.vae, end_latent)[0, :, 0].permute(1, 2, 0).double().clamp(-1, 1) + 1) * 127.5 - target).abs().mean().item()
    print(f"{model}: the tiny VAE's own round trip of the end picture is {round_trip:.1f}/255 from it (the floor for any pixel distance here)")
    for name, result in (("without", without), ("with", with_end)):
        latent = (result.latents[:, :, -1:] - end_latent).abs().mean().item()
        last = ((result.frames[0, :, -1].permute(1, 2, 0).double().clamp(-1, 1) + 1) * 127.5 - target).abs().mean().item()
        print(f"{model} {name} --end-image: last latent frame to the end picture's latent {latent:.4f} (mean abs); last frame to the end picture {last:.1f}/255")


def test_end_image_original_model(tiny_models):
    models = tiny_models("framepack")
    settings = Settings(prompt="she turns", seconds=2.4, steps=1, size=SIZE)
    result, started = run(models, settings, END)
    report_distance("framepack", models, result, run(models, settings)[0])
    end = latent_of(models, END)
    first, *later = started
    assert first.section.slot == 1  # the end of the video, made first
    assert torch.equal(first.context.clean[:, :, 1:2], end)  # its nearest future frame (the 1x slot) is the end picture
    assert first.context.indices.clean[1] == first.context.indices.latents[-1] + 1  # right after its window
    assert torch.count_nonzero(first.context.clean_2x) == 0 and torch.count_nonzero(first.context.clean_4x) == 0
    for event in later:  # later sections see the video made so far, not the end picture
        after = window_bounds(event.section.slot + 1, 9)[0]
        assert torch.equal(event.context.clean[:, :, 1:2], result.latents[:, :, after : after + 1])
        assert not torch.equal(event.context.clean[:, :, 1:2], end)


def test_end_image_f1(tiny_models):
    models = tiny_models("framepack-f1")
    settings = Settings(prompt="she turns", seconds=2.4, steps=1, size=SIZE)
    end = latent_of(models, END)
    with_end, started = run(models, settings, END)
    without, _ = run(models, settings)
    report_distance("framepack-f1", models, with_end, without)
    *earlier, last = started
    assert last.section.slot == 1
    assert torch.equal(last.context.clean[:, :, 2:3], end) and last.context.indices.clean.tolist() == [0, 19, 29]  # one frame after the window
    assert all(e.context.clean.shape[2] == 2 for e in earlier)  # only the last section sees it
    assert torch.equal(with_end.latents[:, :, -1:], end)  # and it is pinned: the video's last latent frame is the end picture
    assert (without.latents[:, :, -1:] - end).abs().mean() > 0.5
    assert torch.equal(with_end.latents[:, :, :10], without.latents[:, :, :10])  # sections before the last are untouched


@pytest.fixture(scope="module")
def made(tiny_models, tmp_path_factory):
    """A 2-section tiny-model video per model, to be extended."""
    folder = tmp_path_factory.mktemp("extend")
    videos = {}
    for model in ("framepack", "framepack-f1"):
        videos[model] = generate_video(tiny_models(model), START, folder / f"{model}.mp4", Settings(prompt="a man walks", seconds=2.4, steps=1, size=SIZE)).output
    return videos


def frame_changes(frames: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(frames.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("model", ["framepack-f1", "framepack"])
def test_extend(model, made, tiny_models, tmp_path):
    models = tiny_models(model)
    source, _ = read_mp4(made[model])
    n = len(source)  # 73
    started = []
    settings = Settings(prompt="he sits down", seconds=2.4, steps=1, size=SIZE)
    video = generate_video(models, None, tmp_path / "longer.mp4", settings, extend=made[model], on_event=lambda e: started.append(e) if isinstance(e, SectionStarted) else None)
    frames, _ = read_mp4(video.output)
    assert len(frames) == video.frames == n + 72  # the input, then 2 new sections of 36 frames

    # which latents reach the new sections
    windows = 2 if model == "framepack-f1" else 1  # F1: enough of the video to fill its 19-frame history
    tail = encode_latents(models.vae, to_pixels(source[n - 1 - 36 * windows :]))
    assert torch.equal(video.result.latents[:, :, : tail.shape[2]], tail)
    first_new = min(started, key=lambda e: e.section.slot)
    assert first_new.section.slot == windows
    if model == "framepack-f1":
        assert torch.equal(first_new.context.clean[:, :, :1], latent_of(models, source[0]))  # the start latent: the video's first frame
        history = torch.cat([first_new.context.clean_4x, first_new.context.clean_2x, first_new.context.clean[:, :, 1:]], dim=2)
        assert torch.equal(history, tail[:, :, -HISTORY_LENGTH:])  # the packed history is the video's encoded tail
        siglip = source[0]
    else:
        assert torch.equal(first_new.context.clean[:, :, :1], latent_of(models, source[-1]))  # the start picture: its last frame
        assert first_new.context.indices.clean[2:].tolist() == list(range(-PAST_LATENTS, 0))  # and the frames before it
        assert torch.equal(first_new.context.clean[:, :, 2:], tail[:, :, -PAST_LATENTS:])
        assert all(torch.equal(e.context.clean[:, :, 2:], tail[:, :, -PAST_LATENTS:]) for e in started)
        siglip = source[-1]
    assert torch.equal(first_new.conditioning.image_embeds, encode_image(siglip, models.feature_extractor, models.image_encoder))

    # the join: the video's frames are kept (re-encoded), and the seam is no bigger than the video's usual change
    assert np.abs(frames[: n - 33].astype(int) - source[: n - 33]).mean() < 6
    changes = frame_changes(frames)
    seam = changes[n - 1] / np.median(changes)
    fade = changes[n - 34 : n + 1].max() / np.median(changes)
    naive = frame_changes(np.concatenate([source, frames[n:]]))  # the input followed by the new frames, no cross-fade
    naive_seam = naive[n - 1] / np.median(naive)
    print(f"{model}: seam {seam:.2f}x median, max in cross-fade {fade:.2f}x, without cross-fade {naive_seam:.2f}x")
    assert seam < 1.5 and fade < 2.0
    assert naive_seam > 1.5 * seam  # the measure does see a hard cut
