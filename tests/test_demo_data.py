"""The demo's training data (demo/data.py): seeded clips, camera paths whose motion is what the caption and the ground truth say."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fpgen.video import read_mp4

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where demo/ lives
from demo import data  # noqa: E402


def textured_photo(height: int = 300, width: int = 400, seed: int = 0) -> Image.Image:
    """Smooth random texture: every shift changes many pixels, so a wrong shift cannot match."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def test_pan_left_moves_the_view_left_by_the_stated_pixels():
    frames = 11
    path = data.motion_path("pan_left", "slow", frames)
    assert path[10, 0] == -10 * data.PAN_PX  # the view's stated move: 4 output pixels left after 10 frames
    views = data.fit_views(path, (300, 400), (64, 64), np.random.default_rng(0))
    video = data.render(textured_photo(), views, (64, 64)).astype(np.float64)
    shift = round(-path[10, 0])  # the content moves right by 4 pixels
    errors = {s: np.abs(video[10][:, 8 + s : 56 + s] - video[0][:, 8:56]).mean() for s in range(-6, 7)}
    assert min(errors, key=errors.get) == shift
    assert errors[shift] < 0.5 < 5 < min(errors[shift - 1], errors[shift + 1])
    assert views[10, 0] < views[0, 0] and views[10, 1] == views[0, 1]  # the view centre moved left in the photo, not up or down


def test_zoom_in_magnifies_the_centre():
    views = data.fit_views(data.motion_path("zoom_in", "fast", 37), (300, 400), (64, 64), np.random.default_rng(1))
    assert np.isclose(views[0, 2] / views[36, 2], np.exp(data.ZOOM_RATE * data.SPEEDS["fast"] * 36))
    assert np.allclose(views[:, :2], views[0, :2])  # about a fixed centre


def test_every_caption_states_the_speed_its_path_depends_on():
    """A path whose size depends on its speed has that speed in its caption (round 9's sway captions did not: slow and
    fast sways, 4 and 9.5 px, shared their words, so no model could tell which to make). Every caption word is in
    the shipped demo's word-level tokenizer, so no word of a template is unknown to the text encoder."""
    frames = 33
    for motion in data.MOTIONS:
        moves = {speed: data.motion_path(motion, speed, frames) for speed in data.SPEEDS}
        if np.allclose(moves["slow"], moves["fast"]):  # still: no speed to state
            continue
        for seed in range(6):
            slow, fast = (data.caption(motion, speed, "a cup", np.random.default_rng(seed)) for speed in ("slow", "fast"))
            assert slow != fast, f"{motion}: {slow!r} says nothing of the speed"
            said = {speed: {w for group in data.SPEED_WORDS[speed] for w in group} for speed in data.SPEEDS}
            assert said["slow"] & set(slow.replace(",", "").split()) and said["fast"] & set(fast.replace(",", "").split()), (slow, fast)
    shipped = json.loads((Path(data.__file__).parents[1] / "src/fpgen/demo_model/tokenizer/tokenizer.json").read_text())["model"]["vocab"]
    assert set(data.caption_words()) <= set(shipped), set(data.caption_words()) - set(shipped)


def test_views_stay_inside_the_photo():
    for motion in data.MOTIONS:
        path = data.motion_path(motion, "fast", 73)
        views = data.fit_views(path, (300, 400), (64, 96), np.random.default_rng(2))
        corners = views[0, :2] + views[0, 2] * data.view_offsets(path, 64, 96)  # the start view's centre and scale
        assert corners[..., 0].min() >= 0 and corners[..., 0].max() <= 400, motion
        assert corners[..., 1].min() >= 0 and corners[..., 1].max() <= 300, motion


def write_stills(out: Path) -> None:
    """Stand-ins for every still under OUT/stills, as ``make_split`` reads them."""
    (out / "stills").mkdir(parents=True)
    for name in data.STILLS:
        textured_photo(seed=len(name)).save(out / "stills" / name)


def test_a_tiny_run_is_deterministic_for_a_seed(tmp_path):
    def run(out: Path, seed: int) -> list:
        write_stills(out)
        data.make_split(out, "train", 2, seed, ("astronaut.png", "chelsea.png"), 1, (64, 64), 10, 1)
        return [(p.name, p.read_text()) for p in sorted((out / "train").glob("*.[jt][sx][ot]*"))] + [read_mp4(p)[0] for p in sorted((out / "train").glob("*.mp4"))]

    first, again, other = run(tmp_path / "a", 5), run(tmp_path / "b", 5), run(tmp_path / "c", 6)
    assert len(first) == 6 and first[:4] == again[:4] and all(np.array_equal(x, y) for x, y in zip(first[4:], again[4:]))
    assert first[:4] != other[:4]
    truth = json.loads(first[0][1])
    assert truth["frames"] == 37 and len(truth["views"]) == 37 and first[1][1].strip() == truth["caption"]
    assert first[4].shape == (37, 64, 64, 3)


def test_a_look_varies_the_photo_as_recorded_and_held_out_clips_stay_plain(tmp_path):
    photo = textured_photo()
    assert data.apply_look(photo, data.PLAIN) is photo
    swapped = np.asarray(data.apply_look(photo, data.Look(channels=(2, 0, 1))))
    assert np.array_equal(swapped, np.asarray(photo)[..., [2, 0, 1]])
    turned = data.apply_look(photo, data.Look(quarter_turns=1, shapes=5, shape_seed=3))
    assert turned.size == (300, 400) and np.abs(np.asarray(turned).astype(int) - np.asarray(photo.transpose(Image.ROTATE_90))).max() > 0

    write_stills(tmp_path)
    for split in ("train", "heldout"):
        data.make_split(tmp_path, split, 6, 0, ("astronaut.png", "chelsea.png"), 1, (64, 64), 0, 1)
    looks = {split: [json.loads(p.read_text())["look"] for p in sorted((tmp_path / split).glob("*.json"))] for split in ("train", "heldout")}
    assert all(look == json.loads(json.dumps(vars(data.PLAIN))) for look in looks["heldout"])
    assert sum(look != looks["heldout"][0] for look in looks["train"]) >= 3  # most training clips are varied (a quarter plain)

    # the recorded look and views render a varied clip again: far closer to its MP4 than the plain photo's rendering
    name = next(p.stem for p in sorted((tmp_path / "train").glob("*.json")) if json.loads(p.read_text())["look"] != looks["heldout"][0])
    clip = json.loads((tmp_path / "train" / f"{name}.json").read_text())
    look = data.Look(**{**clip["look"], "channels": tuple(clip["look"]["channels"])})
    written = read_mp4(tmp_path / "train" / f"{name}.mp4")[0].astype(int)
    error = {kind: np.abs(written - data.render(data.load_still(tmp_path / "stills", clip["still"], clip["flip"], chosen), np.asarray(clip["views"]), (64, 64)).astype(int)).mean()
             for kind, chosen in (("recorded", look), ("plain", data.PLAIN))}  # fmt: skip
    assert error["recorded"] < 0.5 * error["plain"], error


def test_short_share_makes_that_share_of_clips_one_to_four_sections_long(tmp_path):
    """Short generations start from samples only clips of their own length give (``fpgen.plan``'s padding, blank
    history), so ``--short-share`` makes that share of the training clips 1-4 sections long, the rest as asked."""
    lengths = [data.clip_sections(0, index, 8, 0.5) for index in range(400)]
    assert set(lengths) == {1, 2, 3, 4, 8}
    assert 0.4 < np.mean([n < 8 for n in lengths]) < 0.6
    assert lengths == [data.clip_sections(0, index, 8, 0.5) for index in range(400)]
    assert {data.clip_sections(0, index, 8, 0.0) for index in range(400)} == {8}

    write_stills(tmp_path)
    data.make_split(tmp_path, "train", 6, 0, ("astronaut.png", "chelsea.png"), 8, (32, 32), 10, 1, short_share=1.0)
    clips = [json.loads(p.read_text()) for p in sorted((tmp_path / "train").glob("*.json"))]
    assert [clip["frames"] for clip in clips] == [1 + 36 * data.clip_sections(0, index, 8, 1.0) for index in range(6)]
    assert len({clip["frames"] for clip in clips}) > 1 and max(clip["frames"] for clip in clips) <= 1 + 36 * 4
    assert [len(read_mp4(p)[0]) for p in sorted((tmp_path / "train").glob("*.mp4"))] == [clip["frames"] for clip in clips]
    # the length is drawn apart from the clip's own stream: photo, motion and caption are those of a full-length clip
    assert [clip["caption"] for clip in clips] == [data.draw_clip(0, index, ("astronaut.png", "chelsea.png"), 8, varied=True)[0].caption for index in range(6)]


def test_the_path_probe_reads_a_rendered_pan_in_whole_pixels():
    """``benchmarks/demo_path_probe.py``'s shift: a fast pan left moves the content right by 1 px a frame (PAN_PX x 2.5)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from demo_path_probe import horizontal_shift

    path = data.motion_path("pan_left", "fast", 9)
    video = data.render(textured_photo(), data.fit_views(path, (300, 400), (128, 128), np.random.default_rng(0)), (128, 128))
    assert [horizontal_shift(video[0], frame) for frame in video] == [round(-x) for x in path[:, 0]] == list(range(9))
    assert horizontal_shift(video[8], video[0]) == -8
