"""--fps, --interpolate, --color-match and --loop (issue 18, output side): frame counts, timestamps, colours, the loop's seam."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import GOLDEN, moving_gradient

from fpgen.api import generate_video, resume_video
from fpgen.buckets import load_image, resize_and_center_crop
from fpgen.colormatch import lab_stats, match_colors, rgb_to_lab
from fpgen.config import check_family_inputs, resolve
from fpgen.errors import InputError, OutOfMemoryError
from fpgen.events import SectionDone, SectionStarted
from fpgen.families import HELIOS
from fpgen.metadata import read_description
from fpgen.pixels import to_pixels
from fpgen.retime import FrameRate
from fpgen.spec import JobSpec, Settings
from fpgen.video import interpolate_mp4, read_mp4, read_tags, write_mp4

IMAGE = GOLDEN / "input.png"
TWO_SECTIONS = Settings(prompt="a man walks", seconds=2.4, steps=1, size=(16, 16))  # 73 frames


def timestamps(path: Path) -> list[float]:
    """Each frame's presentation time, as ffmpeg's showinfo prints it on decoding."""
    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path), "-vf", "showinfo", "-f", "null", "-"], capture_output=True, text=True)
    return [float(t) for t in re.findall(r"pts_time:([0-9.]+)", done.stderr)]


@functools.cache
def start_picture(size: int = 16) -> np.ndarray:
    return resize_and_center_crop(load_image(IMAGE), size, size)


def lab_mean_distance(frames: np.ndarray, target: torch.Tensor) -> np.ndarray:
    """Per frame: how far its Lab channel means are from the target's (Euclidean, Lab units)."""
    lab = rgb_to_lab(torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0)
    return (lab.mean(dim=(-2, -1)) - target[0]).norm(dim=-1).numpy()


def test_color_match_pulls_colours_back_and_leaves_frame_zero():
    picture = start_picture(32)
    target = lab_stats(picture)
    drifted = np.stack([np.clip(picture * np.array([1 + t / 60, 1.0, 1 - t / 90]) + t / 2, 0, 255).astype(np.uint8) for t in range(70)])
    drifted[0] = picture
    pixels = to_pixels(drifted)
    matched = match_colors(pixels, 0, target, fps=30)
    assert torch.equal(matched[:, :, 0], pixels[:, :, 0])  # the start frame is never touched
    pieces = torch.cat([match_colors(pixels[:, :, :33], 0, target, 30), match_colors(pixels[:, :, 33:], 33, target, 30)], dim=2)
    assert torch.equal(pieces, matched)  # a pure function of each frame and its number: sections (and a resume) cut anywhere
    extended = match_colors(pixels[:, :, 20:], 20, target, 30, ramp_from=20)  # --extend: the ramp starts at the job's first frame
    assert torch.equal(extended[:, :, 0], pixels[:, :, 20]) and not torch.equal(extended[:, :, 1], pixels[:, :, 21])

    out = ((matched[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
    before, after = lab_mean_distance(drifted, target), lab_mean_distance(out, target)
    print(f"Lab mean distance to the start picture, frame 10/30/69: {before[[10, 30, 69]].round(1)} -> {after[[10, 30, 69]].round(1)}")
    assert before[69] > 20 and after[69] < 0.1 * before[69]  # full strength from 2 s (60 frames) on
    assert after[30] < 0.7 * before[30] and after[10] < before[10]  # ramping in: partly matched earlier
    assert (before[30] - after[30]) / before[30] > (before[10] - after[10]) / before[10]


def test_interpolation_doubles_the_rate_and_keeps_every_frame(tmp_path):
    clip = moving_gradient(19, 32, 32)
    write_mp4(tmp_path / "native.mp4", clip, crf=0)
    native = read_mp4(tmp_path / "native.mp4")[0]
    for fps in (60, 24):
        interpolate_mp4(tmp_path / "native.mp4", tmp_path / f"{fps}.mp4", 30, fps, crf=0, metadata={"comment": f"made at {fps}"})
        assert read_tags(tmp_path / f"{fps}.mp4")["comment"] == f"made at {fps}"  # the description fpgen info reads survives
        times = timestamps(tmp_path / f"{fps}.mp4")
        assert len(times) == FrameRate(30, fps).frames(19) == {60: 37, 24: 15}[fps]
        assert np.allclose(times, np.arange(len(times)) / fps, atol=1e-3)  # frame n at n/fps, the last at the clip's last frame
    doubled = read_mp4(tmp_path / "60.mp4")[0].astype(float)
    assert np.abs(doubled[::2] - native).mean() < 3  # the native frames are all there (the last one too)
    between = np.abs(doubled[1::2] - (native[:-1] + native[1:].astype(float)) / 2).mean()
    assert between < np.abs(doubled[1::2] - native[:-1]).mean()  # made frames lie between their neighbours


def test_a_job_interpolated_to_twice_its_rate(tiny_models, tmp_path):
    """The whole way: segments at 30 fps, joined, interpolated in ``finish``, described at 60 fps (fpgen info reads the MP4's tags)."""
    one = Settings(prompt="a man walks", seconds=1.2, steps=1, size=(32, 32))  # 1 section: 37 frames
    video = generate_video(tiny_models("framepack"), IMAGE, tmp_path / "doubled.mp4", one, interpolate=2)
    times = timestamps(video.output)
    assert video.frames == len(times) == 73 and video.fps == 60 and np.allclose(times, np.arange(73) / 60, atol=1e-3)
    described = read_description(video.output)
    assert described["video"]["fps"] == 60 and described["video"]["frames"] == 73 and described["job"]["interpolate"] == 2
    assert not (tmp_path / "doubled.mp4.job").exists()


@pytest.fixture(scope="module")
def f1(tiny_models):
    return tiny_models("framepack-f1")


@pytest.fixture(scope="module")
def reference(f1, tmp_path_factory):
    """The 2-section F1 video at the native rate, no options."""
    return generate_video(f1, IMAGE, tmp_path_factory.mktemp("reference") / "native.mp4", TWO_SECTIONS)


def test_dropped_frames_and_colour_match_survive_a_resume(f1, reference, tmp_path):
    whole = generate_video(f1, IMAGE, tmp_path / "whole.mp4", TWO_SECTIONS, fps=15, color_match=True)
    times = timestamps(whole.output)
    assert whole.frames == len(times) == 37 and whole.fps == 15  # frames 0, 2, ... 72 of 73
    assert np.allclose(times, np.arange(37) / 15, atol=1e-3)

    def stop_after_first(event):
        if isinstance(event, SectionDone) and event.section.index == 0:
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemoryError):
        generate_video(f1, IMAGE, tmp_path / "cut.mp4", TWO_SECTIONS, fps=15, color_match=True, on_event=stop_after_first)
    resumed = resume_video(f1, tmp_path / "cut.mp4")
    assert resumed.resumed_sections == 1  # the job folder found section 1's segment intact with its kept frames
    frames = read_mp4(whole.output)[0]
    assert np.array_equal(read_mp4(resumed.output)[0], frames)

    described = json.loads((tmp_path / "cut.json").read_text())
    assert described["video"]["fps"] == 15 and described["video"]["frames"] == 37 and described["video"]["color_match"] is True
    assert described["job"]["fps"] == 15 and described["job"]["color_match"] is True

    native = read_mp4(reference.output)[0]
    assert np.abs(frames[0].astype(int) - native[0]).mean() < 1.5  # frame 0: the same picture (only encoded apart)
    target = lab_stats(start_picture())
    late = slice(31, None)  # past the 2-s ramp (native frames 62..72)
    print(f"Lab mean distance to the start picture, late frames: {lab_mean_distance(native[::2][late], target).mean():.1f} -> {lab_mean_distance(frames[late], target).mean():.1f}")
    assert lab_mean_distance(frames[late], target).mean() < 0.5 * lab_mean_distance(native[::2][late], target).mean()


def wrap_seam(video: np.ndarray | torch.Tensor, axis: int) -> float:
    """The jump from the last frame back to the first, over the median frame-to-frame change (like the extend seam)."""
    video = np.moveaxis(np.asarray(video, dtype=float), axis, 0)
    changes = np.abs(np.diff(video, axis=0)).reshape(len(video) - 1, -1).mean(axis=1)
    return float(np.abs(video[-1] - video[0]).mean() / np.median(changes))


def test_loop_ends_where_it_starts(f1, reference, tiny_models, tmp_path):
    """The loop is closed in latent space; what the VAE makes of it only real weights can tell (printed).

    The tiny VAE's random weights decode a latent differently in every temporal context, so its last
    frames are far from its frame 0 even when their latents are equal: the pixel seam is measured and
    printed, not asserted. Likewise the original model's random transformer does not follow the end
    picture it is shown, so for it the test checks that the start picture is its end picture.
    """
    started = []
    looped = generate_video(f1, IMAGE, tmp_path / "loop.mp4", TWO_SECTIONS, loop=True, on_event=lambda e: isinstance(e, SectionStarted) and started.append(e))
    start_latent = looped.result.latents[:, :, :1]
    assert torch.equal(started[-1].context.clean[:, :, 2:3], start_latent)  # F1: the last section sees the start picture after its window
    assert torch.equal(looped.result.latents[:, :, -1:], start_latent)  # and its last latent frame is pinned to it
    seam, plain = wrap_seam(looped.result.latents[0], 1), wrap_seam(reference.result.latents[0], 1)
    assert seam == 0 and plain > 0.5  # latent frames: the wrap-around is no jump at all, where the plain video jumps like any frame
    pixels, plain_pixels = wrap_seam(read_mp4(looped.output)[0], 0), wrap_seam(read_mp4(reference.output)[0], 0)
    print(f"framepack-f1 wrap-around seam: latents {seam:.2f}x / {plain:.2f}x, decoded (random VAE) {pixels:.2f}x / {plain_pixels:.2f}x the median change with / without --loop")

    inverted = tiny_models("framepack")  # its end picture's path into the first section is test_endpoints' test_end_image_original_model
    job = resolve(JobSpec(tmp_path / "inverted.mp4", TWO_SECTIONS, image=IMAGE, model="framepack", loop=True), loaded=inverted)
    assert np.array_equal(job.pictures.end, job.pictures.start)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"fps": 0}, "--fps must be between 1 and 240"),
        ({"interpolate": 0}, "--interpolate must be between 1 and 8"),
        ({"fps": 24, "interpolate": 2}, "--fps and --interpolate cannot be combined"),
        ({"loop": True, "end_image": str(IMAGE)}, "takes no --end-image"),
        ({"loop": True, "extend": str(IMAGE)}, "--loop cannot be combined with --extend"),
    ],
)
def test_bad_output_options_are_refused_before_torch_work(options, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        JobSpec.from_options({"output": "out.mp4", **options})


def test_what_needs_a_picture_or_an_end_frame(f1, tmp_path):
    with pytest.raises(InputError, match="--loop: helios has no end-frame mechanism"):
        check_family_inputs(JobSpec(tmp_path / "x.mp4", loop=True, model="helios"), HELIOS, True)
    with pytest.raises(InputError, match="at least 32x32 pixels"):
        generate_video(f1, IMAGE, tmp_path / "small.mp4", TWO_SECTIONS, interpolate=2)
    assert not (tmp_path / "small.mp4.job").exists()
