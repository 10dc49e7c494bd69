"""Behaviour tests on the shipped demo model (issue 16): what its trained weights do, each with a margin measured over seeds.

The demo (``--model demo``, demo/README.md) is small and soft, but since round 4 (training clips of 1-4 sections)
its caption steers the camera: zoom against pan, the end picture, the join of ``--extend``, timed prompts,
TeaCache, and a LoRA for a motion it never saw. The models load once per module; every video is the shipped
example picture at 128x128, one or two sections of ``STEPS`` steps, seed ``SEED`` (margins measured on seeds 0, 1
and 2 with the shipped weights, round 10's transformer (4 + 12 blocks) and round 8's decoder, unless a figure says otherwise;
``python benchmarks/demo_margins.py`` prints them).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fpgen
from enginejob import make_frames
from fpgen.buckets import resize_and_center_crop
from fpgen.lora import LoraChoice
from fpgen.registry import DEMO_FOLDER
from fpgen.spec import Settings
from fpgen.video import read_mp4, write_mp4

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where demo/ lives
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from demo import data  # noqa: E402
from demo_lora import spin_angle  # noqa: E402

SIZE = (128, 128)
STEPS = 10
SEED = 1
PROMPT = "the camera zooms in"
SECTION = 1.2  # seconds: one section at the default window
WINDOW = 9  # latent frames a section: 4 * WINDOW video frames after the start
LORA = Path(__file__).parent / "assets" / "demo-spin-lora.safetensors"


@pytest.fixture(scope="module")
def demo():
    return fpgen.load_models("demo", device="cpu")


@pytest.fixture(scope="module")
def example() -> np.ndarray:
    return np.asarray(Image.open(DEMO_FOLDER / "example.png").convert("RGB"))


def make_video(models, picture, prompt: str = PROMPT, sections: int = 1, step_cache: str = "none", **options):
    """``(frames, result)``: the video as (T, 3, H, W) in [-1, 1] and the engine's ``Result``."""
    pieces = []
    settings = Settings(prompt=prompt, seconds=sections * SECTION, steps=STEPS, size=SIZE, seed=SEED, step_cache=step_cache)
    result = make_frames(models, picture, settings, sink=lambda frames, first: pieces.append((first, frames)), **options)
    return torch.cat([frames for _, frames in sorted(pieces, key=lambda piece: piece[0])], 2)[0].transpose(0, 1), result


def as_frames(pictures: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pictures)).permute(0, 3, 1, 2).float() / 127.5 - 1


def frame_changes(frames: torch.Tensor) -> torch.Tensor:
    """Mean absolute change from each frame to the next, (T - 1,)."""
    return (frames[1:] - frames[:-1]).abs().mean((1, 2, 3))


# The measures, one per test (benchmarks/demo_margins.py prints them over seeds for the docstrings' figures).


def end_picture_errors(demo, example, plain_frames) -> tuple[float, float]:
    """Last frame's MSE to the mirrored example with it as ``--end-image``, and the plain video's."""
    end = resize_and_center_crop(example, *SIZE)[:, ::-1].copy()
    arrived, _ = make_video(demo, example, end=end)
    target = as_frames(end[None])[0]
    return tuple(((frames[-1] - target) ** 2).mean().item() for frames in (arrived, plain_frames))


def teacache_effect(demo, example, plain_frames) -> tuple[list[float], float]:
    """TeaCache's skip rate per section and its video's relative L2 distance from the uncached one."""
    cached, result = make_video(demo, example, step_cache="teacache")
    return result.skip_rates, ((cached - plain_frames).norm() / plain_frames.norm()).item()


def extended_video(demo, plain_frames, folder: Path) -> torch.Tensor:
    """The plain video written to an MP4 and extended by one section, read back."""
    given = folder / "given.mp4"
    write_mp4(given, (((plain_frames + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()))
    extended = folder / "extended.mp4"
    fpgen.generate_video(demo, None, extended, Settings(prompt=PROMPT, seconds=SECTION, steps=STEPS, size=SIZE, seed=SEED), extend=given)
    return as_frames(read_mp4(extended)[0])


def join_and_typical_change(frames: torch.Tensor, given_count: int) -> tuple[float, float]:
    """The largest change where the new part begins, and the video's median change."""
    changes = frame_changes(frames)
    return changes[given_count - 1 : given_count + 2].max().item(), changes.median().item()


@pytest.fixture(scope="module")
def plain(demo, example):
    """One section of the base prompt, no step cache: what the other tests compare with."""
    return make_video(demo, example)


def test_end_image_arrives(demo, example, plain):
    """With the example mirrored as ``--end-image`` the last frame lands on it: its mean squared error (in [-1, 1]
    units) to the end picture falls below half of the plain video's. Measured (seeds 0, 1, 2): 0.095x, 0.093x,
    0.096x (round 9's transformer: the same to three places; round 7's: 0.10x each; round 6's VAE: 0.11x; round 5's transformer: 0.11-0.12x; round 5's VAE: 0.19-0.20x)."""
    with_end, without = end_picture_errors(demo, example, plain[0])
    assert with_end < 0.5 * without, f"last frame's MSE to the end picture: {with_end:.4f} with it, {without:.4f} without"


def test_teacache_on_trained_weights(demo, example, plain):
    """TeaCache at its default threshold skips transformer passes on the trained weights and the video stays
    close to the uncached one: relative L2 of the frames below 0.06. Measured (seeds 0, 1, 2): skip rate 0.2 at 10
    steps, relative L2 0.003 each (round 9's transformer: 0.004; round 7's: 0.004; round 6's VAE: 0.004; round 5's transformer: 0.009; round 5's VAE: 0.006; round 3: 0.013-0.015).
    The per-section skip rate is printed (the lead reports it in RESULTS.md)."""
    skip_rates, rel_l2 = teacache_effect(demo, example, plain[0])
    print(f"demo model, TeaCache at the default threshold, {STEPS} steps: skip rate per section {skip_rates}, frames rel L2 {rel_l2:.4f}")
    assert min(skip_rates) >= 0.1, f"TeaCache skipped too little: {skip_rates}"
    assert rel_l2 < 0.06, f"TeaCache's video is {rel_l2:.4f} (relative L2) from the uncached one"


def test_extend_join_is_as_smooth_as_the_video(demo, plain, tmp_path):
    """``--extend`` by one section: the frame-to-frame changes where the new part begins (the given video's last
    frame to the new part's first two) stay within 2.5x the extended video's median change. Measured (seeds 0, 1, 2):
    the largest is 1.58x, 1.59x, 1.56x the median, the first one 0.90x, 1.00x, 0.89x (round 9's transformer: 1.70-1.89x,
    the first 1.02-1.16x; round 7's: 1.94-2.04x, the first 1.22-1.27x; round 6's VAE: 1.78-1.94x, the first 0.81-0.86x; round 5's transformer: 1.64-1.72x; round 5's VAE: 1.15-1.25x; round 3: 1.73-1.78x; round 2: 2.01-2.15x). Not asserted (round 1's weights): where the copied frames
    end and the cross-faded ones begin (frame 3 to 4 here) the change was 3.3x and 3.8x the median, the largest in
    the video (the given video changes 0.007 there; the jump is 2.9 grey levels of noise, no colour or position
    offset: the copied frames are encoded a second time, the cross-faded ones once)."""
    frames = extended_video(demo, plain[0], tmp_path)
    count = len(plain[0])
    assert len(frames) == 2 * count - 1, f"{len(frames)} frames: the extension should add one section ({count - 1} frames)"
    join, typical = join_and_typical_change(frames, count)
    assert join < 2.5 * typical, f"change at the join {join:.4f}, the video's median change {typical:.4f}"


def zoomed(picture: np.ndarray, factor: float) -> torch.Tensor:
    """``picture`` (H, W, 3) uint8 magnified ``factor`` times about its centre, as (3, H, W) in [-1, 1]."""
    height, width = picture.shape[:2]
    inverse = 1 / factor
    coefficients = (inverse, 0, width * (1 - inverse) / 2, 0, inverse, height * (1 - inverse) / 2)
    return as_frames(np.asarray(Image.fromarray(picture).transform((width, height), Image.AFFINE, coefficients, resample=Image.BICUBIC))[None])[0]


def centre_error(frame: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error over the central half (each side) of two (3, H, W) frames: what a zoom or a pan keeps in view."""
    height, width = frame.shape[1:]
    centre = (slice(None), slice(height // 4, height - height // 4), slice(width // 4, width - width // 4))
    return ((frame[centre] - target[centre]) ** 2).mean().item()


def zoom_and_pan_errors(demo, example) -> tuple[dict, dict]:
    """Centre errors of a fast zoom's and a fast pan's last frames to the zoomed and to the panned start picture."""
    start = resize_and_center_crop(example, *SIZE)
    last = {name: make_video(demo, example, prompt)[0][-1] for name, prompt in (("zoom", "the camera zooms quickly in"), ("pan", "the camera pans quickly to the left"))}
    zoom_target = zoomed(start, math.exp(data.ZOOM_RATE * data.SPEEDS["fast"] * 4 * WINDOW))
    pan_target = as_frames(np.roll(start, round(data.PAN_PX * data.SPEEDS["fast"] * 4 * WINDOW), axis=1)[None])[0]
    return ({name: centre_error(frame, zoom_target) for name, frame in last.items()}, {name: centre_error(frame, pan_target) for name, frame in last.items()})


def changes_before_and_after(demo, example) -> tuple[float, float]:
    """Mean frame change in the pan section and in the still one of a timed prompt."""
    frames, _ = make_video(demo, example, "0s: the camera pans to the left | 1.2s: the camera holds still", sections=2)
    changes = frame_changes(frames)
    section = (len(frames) - 1) // 2
    return changes[:section].mean().item(), changes[section:].mean().item()


def spin_angles(demo, spun, example) -> dict[str, float]:
    """Turn in degrees of the last frame of "the camera spins", without and with the spin LoRA."""
    start = resize_and_center_crop(example, *SIZE)
    angles = {}
    for name, models in (("demo", demo), ("demo + spin LoRA", spun)):
        frames = make_video(models, example, "the camera spins")[0]
        last = ((frames[-1].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        angles[name] = spin_angle(np.stack([start, last]))
    return angles


def test_zoom_and_pan_prompts_move_the_picture_their_way(demo, example):
    """One section of "zooms quickly in" and one of "pans quickly to the left": the zoom's last frame matches the
    start picture magnified as the training clips' fast zoom does in a section (x1.127) better than the pan's
    does, and the pan's matches the start picture moved 32 px right (a fast pan left) better than the zoom's: each
    below 0.6x the other's error over the frame's centre. Measured (seeds 0, 1, 2): zoom target 0.13x, 0.14x,
    0.13x, pan target 0.12x, 0.13x, 0.12x (round 9's transformer: 0.14-0.15x and 0.12-0.13x; round 7's: 0.16-0.17x and 0.13-0.15x; round 6's VAE: 0.15-0.16x and 0.15-0.17x; round 5's transformer: 0.20-0.23x and 0.23-0.24x; round 5's VAE: 0.24-0.27x and 0.30-0.35x; round 3's weights did not steer: a pan went either way or nowhere)."""
    zoom, pan = zoom_and_pan_errors(demo, example)
    assert zoom["zoom"] < 0.6 * zoom["pan"], f"error to the zoomed start picture: zoom video {zoom['zoom']:.4f}, pan video {zoom['pan']:.4f}"
    assert pan["pan"] < 0.6 * pan["zoom"], f"error to the panned start picture: pan video {pan['pan']:.4f}, zoom video {pan['zoom']:.4f}"


def test_timed_prompt_changes_motion_at_the_boundary(demo, example):
    """``0s: pan left | 1.2s: hold still`` over two sections: the first section's mean frame-to-frame change is
    more than twice the second's. Measured (seeds 0, 1, 2): 4.96x, 4.61x, 4.91x (round 9's transformer: 3.94-4.07x; round 7's: 3.57-3.69x; round 6's VAE: 3.75-3.87x;
    round 5's transformer: 2.69-2.85x; round 5's VAE: 3.34-3.63x; round 3: 3.38-3.66x). Without the switch
    the pattern was not there (round 1's weights): "holds still" alone changes 0.0042 then 0.0033, and the switch the other way
    (still, then pan) gives 0.0175 then 0.0243 (seed 0; the inverted order makes the pan section first, from the
    start picture alone, and the weak model turns it to texture)."""
    before, after = changes_before_and_after(demo, example)
    assert before > 2 * after, f"mean frame change {before:.4f} in the pan section, {after:.4f} in the still one"


def test_a_lora_teaches_the_demo_a_spin(demo, example):
    """``tests/assets/demo-spin-lora.safetensors`` was trained by ``fpgen finetune --model demo`` (rank 16, 200 steps
    at batch 4 on this CPU, 664 s, on round 10's transformer; kept in bfloat16) on 16 clips of a spin the demo never saw: 1.2 degrees a frame, 43 a section, where
    its fastest trained roll turns 0.2 (``python benchmarks/demo_lora.py --clips 16 --steps 200 --seeds 3 --keep
    tests/assets/demo-spin-lora.safetensors``). One section of "the camera spins" turns the picture by more than 20
    degrees with it and by less than 5 without. Measured (seeds 0, 1, 2): 46, 40, 49 degrees with it, 0 without
    (25 steps, the benchmark: 45, 39, 49; the rendered spin: 43; round 9's LoRA on round 9: 44, 38, 48; round 7's LoRA on round 7: 43, 39, 52; round 5's LoRA on round 7: 26)."""
    angles = spin_angles(demo, fpgen.load_models("demo", device="cpu", loras=[LoraChoice(LORA)]), example)
    assert angles["demo + spin LoRA"] > 20 and abs(angles["demo"]) < 5, f"turn of the last frame in degrees: {angles}"
