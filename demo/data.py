"""``make demo-data``: the demo model's training clips, camera paths over licence-clean photographs, with a seed.

Sources come through the package registries: scikit-image's wheel (``pip download``) carries photos
whose licences are stated one by one in ``skimage/data/_fetchers.py``; only the CC0 and public-domain
ones are kept (``STILLS``). Optionally (``--footage``) the real clips of Debian's ``opencv-doc`` and
``python3-imageio`` are extracted for held-out evaluation only (their provenance is not stated).

Each clip is one camera path (pan, tilt, zoom, roll, still, back and forth) over one photo, rendered
by resampling the full-size photo (anti-aliased once, then one affine warp per frame), so the
ground truth is exact: ``<clip>.json`` records the photo and every frame's view (centre, scale,
angle in photo pixels). A training clip's photo is first varied by a seeded ``Look`` (colours,
quarter turns, drawn shapes; a quarter of the clips plain), so that nine photos teach motion rather
than themselves; held-out clips are always plain. Camera words follow film usage: "the camera pans to the left" means the
view moves left over the scene, so the content moves right in the frame.

Layout written (``fpgen finetune OUT/train`` reads the first folder; nothing else is trained on)::

    OUT/train/clip-00000.mp4 .txt .json   camera paths over the training stills
    OUT/heldout/clip-00000.mp4 .txt .json the same paths over HELD_OUT stills, never trained on
    OUT/stills/NAME                       the photos, with LICENCES.json
    OUT/footage/*                         (--footage) real clips, evaluation only

Usage: ``python demo/data.py OUT --clips 2000 --seed 0 --workers 16``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = "scikit-image==0.26.0"
# The platform-specific wheel's data files are the same everywhere; one fixed wheel keeps the sources identical on every machine.
SKIMAGE_WHEEL = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp")
# name -> (licence as skimage/data/_fetchers.py states it, subject for captions). Left out: coins (Brooklyn Museum),
# moon, motorcycle, ihc, color, logo and the rest, whose docstrings state no CC0 or public-domain licence.
STILLS = {
    "astronaut.png": ("public domain (NASA)", "an astronaut"),
    "brick.png": ("CC0 (CC0Textures)", "a brick wall"),
    "camera.png": ("CC0 (Lav Varshney)", "a man with a camera"),
    "cell.png": ("CC0 (Paul Mueller)", "a cell under a microscope"),
    "chelsea.png": ("CC0 (Stefan van der Walt)", "a cat"),
    "coffee.png": ("CC0 (Rachel Michetti)", "a cup of coffee"),
    "grass.png": ("CC0 (CC0Textures)", "grass"),
    "gravel.png": ("CC0 (CC0Textures)", "gravel"),
    "hubble_deep_field.jpg": ("public domain (NASA)", "galaxies in deep space"),
    "retina.jpg": ("CC0 (retina image)", "a human retina"),
    "rocket.jpg": ("public domain (SpaceX)", "a rocket on its launch pad"),
}
HELD_OUT = ("coffee.png", "rocket.jpg")  # fixed: evaluation and the example picture, never trained on

WINDOW = 9
FPS = 30
SPEEDS = {"slow": 1.0, "fast": 2.5}
PAN_PX = 0.4  # output pixels per frame at "slow" (12 px/s on a 128-px frame)
ZOOM_RATE = 0.0015  # log-zoom per frame at "slow"
ROLL_DEG = 0.08  # degrees per frame at "slow"
SWAY_PERIOD = 60  # frames of one back-and-forth
SHORT_SECTIONS = (1, 2, 3, 4)  # lengths of the short training clips (--short-share)

MOTIONS = ("pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "roll_cw", "roll_ccw", "still", "sway")
CAPTIONS = {
    "pan_left": ["the camera pans {speed} to the left", "a {adj} pan to the left", "the view moves {speed} left"],
    "pan_right": ["the camera pans {speed} to the right", "a {adj} pan to the right", "the view moves {speed} right"],
    "tilt_up": ["the camera tilts {speed} up", "a {adj} tilt upwards", "the view moves {speed} up"],
    "tilt_down": ["the camera tilts {speed} down", "a {adj} tilt downwards", "the view moves {speed} down"],
    "zoom_in": ["the camera zooms {speed} in", "a {adj} zoom into the centre", "the camera moves {speed} closer"],
    "zoom_out": ["the camera zooms {speed} out", "a {adj} zoom out from the centre", "the camera moves {speed} away"],
    "roll_cw": ["the camera rotates {speed} clockwise", "a {adj} clockwise rotation", "the picture turns {speed} clockwise"],
    "roll_ccw": ["the camera rotates {speed} counterclockwise", "a {adj} counterclockwise rotation", "the picture turns {speed} counterclockwise"],
    "still": ["the camera holds still", "a still shot", "nothing moves"],
    "sway": ["the camera pans {speed} left and right", "the camera sways {speed} from side to side", "the view moves {speed} back and forth"],
}
SPEED_WORDS = {"slow": (("slowly", "gently"), ("slow", "gentle")), "fast": (("quickly", "fast"), ("quick", "fast"))}


@dataclass(frozen=True)
class Look:
    """How a training photo is varied before its camera path, drawn per clip: nine photos are too few to teach motion
    rather than memorise them, so colours, orientation and drawn shapes make each clip's picture new (held-out clips are plain)."""

    channels: tuple[int, int, int] = (0, 1, 2)  # RGB taken from these channels
    hue: int = 0  # rotation of PIL's 0..255 hue
    saturation: float = 1.0
    gamma: float = 1.0
    quarter_turns: int = 0
    shapes: int = 0  # opaque ellipses, boxes and triangles drawn on the photo, from shape_seed
    shape_seed: int = 0


PLAIN = Look()
PLAIN_SHARE = 0.25  # training clips over the photo as it is


def draw_look(rng: np.random.Generator) -> Look:
    if rng.random() < PLAIN_SHARE:
        return PLAIN
    return Look(
        tuple(int(c) for c in rng.permutation(3)) if rng.random() < 0.5 else (0, 1, 2),
        int(rng.integers(0, 256)) if rng.random() < 0.5 else 0,
        float(rng.uniform(0.4, 1.5)),
        float(np.exp(rng.uniform(-0.4, 0.4))),
        int(rng.integers(0, 4)),
        int(rng.integers(0, 40)) if rng.random() < 0.5 else 0,
        int(rng.integers(0, 2**31)),
    )


def apply_look(photo: Image.Image, look: Look) -> Image.Image:
    """The photo as ``look`` varies it: a new picture (PLAIN: the photo itself), the given one is never drawn on."""
    if look == PLAIN:
        return photo
    for _ in range(look.quarter_turns):
        photo = photo.transpose(Image.ROTATE_90)
    if look.hue or look.saturation != 1.0:
        hsv = np.asarray(photo.convert("HSV")).astype(np.int32)
        hsv[..., 0] = (hsv[..., 0] + look.hue) % 256
        hsv[..., 1] = np.clip(np.rint(hsv[..., 1] * look.saturation), 0, 255)
        photo = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    curve = np.rint(255 * (np.arange(256) / 255) ** look.gamma).astype(np.uint8)
    photo = Image.fromarray(curve[np.asarray(photo)[..., list(look.channels)]])
    if look.shapes:
        draw_shapes(photo, look.shapes, np.random.default_rng(look.shape_seed))
    return photo


def draw_shapes(photo: Image.Image, count: int, rng: np.random.Generator) -> None:
    """``count`` opaque shapes of random colour, 3-25% of the photo's shorter side, in place."""
    from PIL import ImageDraw

    draw, side = ImageDraw.Draw(photo), min(photo.size)
    for _ in range(count):
        x, y = rng.uniform(0, photo.width), rng.uniform(0, photo.height)
        r = side * rng.uniform(0.015, 0.125)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x - r, y - r * rng.uniform(0.4, 1), x + r, y + r * rng.uniform(0.4, 1)), fill=colour)
        elif kind == 1:
            draw.rectangle((x - r, y - r * rng.uniform(0.3, 1), x + r, y + r * rng.uniform(0.3, 1)), fill=colour)
        else:
            angles = rng.uniform(0, 2 * math.pi, 3)
            draw.polygon([(x + r * math.cos(a), y + r * math.sin(a)) for a in angles], fill=colour)


@dataclass(frozen=True)
class ClipSpec:
    """What one clip is, drawn from its seed: enough to render it again exactly."""

    still: str
    motion: str
    speed: str
    flip: bool
    frames: int
    caption: str
    look: Look = PLAIN


def motion_path(motion: str, speed: str, frames: int) -> np.ndarray:
    """(frames, 4) camera moves relative to the first frame: dx, dy (output pixels at the start scale), zoom, roll (degrees)."""
    t, v = np.arange(frames, dtype=np.float64), SPEEDS[speed]
    path = np.zeros((frames, 4))
    path[:, 2] = 1.0
    axis, sign = {"pan_left": (0, -1), "pan_right": (0, 1), "tilt_up": (1, -1), "tilt_down": (1, 1)}.get(motion, (None, 0))
    if axis is not None:
        path[:, axis] = sign * PAN_PX * v * t
    elif motion in ("zoom_in", "zoom_out"):
        path[:, 2] = np.exp((1 if motion == "zoom_in" else -1) * ZOOM_RATE * v * t)
    elif motion in ("roll_cw", "roll_ccw"):
        path[:, 3] = (1 if motion == "roll_cw" else -1) * ROLL_DEG * v * t
    elif motion == "sway":
        path[:, 0] = -PAN_PX * v * SWAY_PERIOD / (2 * math.pi) * np.sin(2 * math.pi * t / SWAY_PERIOD)  # starts moving left
    elif motion != "still":
        raise ValueError(f"unknown motion {motion!r}")
    return path


def view_offsets(path: np.ndarray, height: int, width: int) -> np.ndarray:
    """(frames, 4, 2) the output frame's corners in photo units of the start scale, relative to the start centre."""
    corners = np.array([[-width / 2, -height / 2], [width / 2, -height / 2], [-width / 2, height / 2], [width / 2, height / 2]])
    angle = np.radians(path[:, 3])
    rotation = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    return path[:, None, :2] + np.einsum("fij,cj->fci", rotation, corners) / path[:, 2, None, None]


def fit_views(path: np.ndarray, photo_hw: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(frames, 4) views in photo pixels: centre x, y, scale (photo pixels per output pixel), angle; every frame inside the photo."""
    offsets = view_offsets(path, *out_hw)
    low, high = offsets.reshape(-1, 2).min(0), offsets.reshape(-1, 2).max(0)
    fits = (np.array(photo_hw[::-1]) - 2) / (high - low)  # x, y
    scale = float(fits.min()) * rng.uniform(0.55, 1.0)
    centre = np.array([rng.uniform(1 - scale * low[i], photo_hw[::-1][i] - 1 - scale * high[i]) for i in range(2)])
    views = np.zeros_like(path)
    views[:, :2] = centre + scale * path[:, :2]
    views[:, 2] = scale / path[:, 2]
    views[:, 3] = path[:, 3]
    return views


def render(photo: Image.Image, views: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(frames, H, W, 3) uint8: each view resampled from the photo (anti-aliased once to the finest scale the clip uses)."""
    height, width = out_hw
    shrink = max(1.0, float(views[:, 2].min()))
    source = photo if shrink == 1.0 else photo.resize((round(photo.width / shrink), round(photo.height / shrink)), Image.LANCZOS)
    fx, fy = photo.width / source.width, photo.height / source.height
    frames = np.empty((len(views), height, width, 3), np.uint8)
    for i, (cx, cy, scale, degrees) in enumerate(views):
        a = math.radians(degrees)
        cos, sin = math.cos(a) * scale, math.sin(a) * scale
        # output (x, y) -> photo: centre + scale * R(a) @ (x - W/2, y - H/2), then into the shrunk source
        coeffs = (cos / fx, -sin / fx, (cx - cos * width / 2 + sin * height / 2) / fx, sin / fy, cos / fy, (cy - sin * width / 2 - cos * height / 2) / fy)
        frames[i] = np.asarray(source.transform((width, height), Image.AFFINE, coeffs, resample=Image.BICUBIC))
    return frames


def caption(motion: str, speed: str, subject: str, rng: np.random.Generator) -> str:
    adverbs, adjectives = SPEED_WORDS[speed]
    text = str(rng.choice(CAPTIONS[motion])).format(speed=rng.choice(adverbs), adj=rng.choice(adjectives))
    return text if rng.random() < 0.5 else f"{text}, {subject}"


def caption_words() -> list[str]:
    """Every word the captions can use, for the demo tokenizer's vocabulary (demo/build.py)."""
    texts = [t for templates in CAPTIONS.values() for t in templates] + [s for _, s in STILLS.values()]
    texts += [w for words in SPEED_WORDS.values() for group in words for w in group]
    return sorted({w for text in texts for w in re.findall(r"[a-z]+", text.replace("{speed}", "").replace("{adj}", ""))})


def draw_clip(seed: int, index: int, stills: tuple[str, ...], sections: int, varied: bool = False) -> tuple[ClipSpec, np.random.Generator]:
    """Clip ``index``'s spec and the generator its views are then drawn from; ``varied`` (training clips) draws a Look."""
    rng = np.random.default_rng([seed, index])
    still, motion, speed = str(rng.choice(stills)), str(rng.choice(MOTIONS)), str(rng.choice(list(SPEEDS)))
    frames = 1 + 4 * WINDOW * sections
    flip, text = bool(rng.random() < 0.5), caption(motion, speed, STILLS[still][1], rng)
    return ClipSpec(still, motion, speed, flip, frames, text, draw_look(rng) if varied else PLAIN), rng


def load_still(folder: Path, name: str, flip: bool, look: Look = PLAIN) -> Image.Image:
    photo = Image.open(folder / name).convert("RGB")
    return apply_look(photo.transpose(Image.FLIP_LEFT_RIGHT) if flip else photo, look)


def make_clip(job: tuple) -> str:
    """Render and write clip ``index`` of ``split`` (a worker's unit); returns its name."""
    from fpgen.video import write_mp4

    out, split, seed, index, stills, sections, out_hw, crf = job
    spec, rng = draw_clip(seed, index, stills, sections, varied=split == "train")
    photo = load_still(out / "stills", spec.still, spec.flip, spec.look)
    views = fit_views(motion_path(spec.motion, spec.speed, spec.frames), (photo.height, photo.width), out_hw, rng)
    name = f"clip-{index:05d}"
    folder = out / split
    write_mp4(folder / f"{name}.mp4", render(photo, views, out_hw), crf=crf, fps=FPS)
    (folder / f"{name}.txt").write_text(spec.caption + "\n")
    truth = {**asdict(spec), "seed": seed, "index": index, "size": list(out_hw), "views": np.round(views, 6).tolist(),
             "views_are": "centre x, centre y, photo pixels per output pixel, angle in degrees; photo flipped, then varied by look, first"}  # fmt: skip
    (folder / f"{name}.json").write_text(json.dumps(truth) + "\n")
    return name


def fetch_stills(out: Path) -> Path:
    """The CC0/public-domain photos of the scikit-image wheel in OUT/stills (downloaded once), with their licences."""
    folder = out / "stills"
    if all((folder / name).is_file() for name in STILLS):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *SKIMAGE_WHEEL, SKIMAGE], check=True)
        (wheel,) = Path(tmp).glob("scikit_image-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in STILLS:
                (folder / name).write_bytes(archive.read(f"skimage/data/{name}"))
    licences = {name: {"licence": licence, "source": f"{SKIMAGE} skimage/data/{name}", "held_out": name in HELD_OUT} for name, (licence, _) in STILLS.items()}
    (folder / "LICENCES.json").write_text(json.dumps(licences, indent=2) + "\n")
    return folder


FOOTAGE = {  # Debian package -> files inside it; real footage, provenance unstated: held-out evaluation only
    "opencv-doc": ("usr/share/doc/opencv-doc/examples/data/vtest.avi", "usr/share/doc/opencv-doc/examples/data/tree.avi"),
    "python3-imageio": ("usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4", "usr/lib/python3/dist-packages/imageio/resources/images/realshort.mp4"),
}


def fetch_footage(out: Path) -> Path:
    """Debian's real clips in OUT/footage via ``apt-get download`` (no install), for evaluation only."""
    folder = out / "footage"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for package, files in FOOTAGE.items():
            if all((folder / Path(f).name).is_file() for f in files):
                continue
            subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True)
            (deb,) = Path(tmp).glob(f"{package}_*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / package)], check=True)
            for file in files:
                shutil.copy(Path(tmp) / package / file, folder / Path(file).name)
    return folder


def clip_sections(seed: int, index: int, sections: int, short_share: float) -> int:
    """Clip ``index``'s length in sections: ``short_share`` of the clips are 1 to 4 sections long, the rest ``sections``.

    A generation of n sections starts from a section sample of a clip of n sections only (its padding, blank history:
    ``fpgen.plan``), so short videos, the usual demo, need short clips; drawn apart from the clip's own stream."""
    rng = np.random.default_rng([seed, index, 2])
    return int(rng.choice(SHORT_SECTIONS)) if rng.random() < short_share else sections


def make_split(out: Path, split: str, clips: int, seed: int, stills: tuple[str, ...], sections: int, out_hw: tuple[int, int], crf: int, workers: int,
               short_share: float = 0.0) -> list[str]:  # fmt: skip
    (out / split).mkdir(parents=True, exist_ok=True)
    jobs = [(out, split, seed, i, stills, clip_sections(seed, i, sections, short_share), out_hw, crf) for i in range(clips)]
    if workers <= 1:
        return [make_clip(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(make_clip, jobs, chunksize=8))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (train/, heldout/, stills/)")
    parser.add_argument("--clips", type=int, default=2000, help="training clips")
    parser.add_argument("--heldout-clips", type=int, default=64, help="evaluation clips over the held-out stills")
    parser.add_argument("--sections", type=int, default=8, help="sections per clip (1 + 36*sections frames)")
    parser.add_argument("--short-share", type=float, default=0.5, help="share of training clips 1 to 4 sections long (what short generations start from)")
    parser.add_argument("--size", default="128x128", help="HEIGHTxWIDTH of the clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crf", type=int, default=10, help="H.264 quality of the written clips")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips")
    parser.add_argument("--footage", action="store_true", help="also extract Debian's real clips (apt-get download), for evaluation only")
    args = parser.parse_args(argv)
    out_hw = tuple(int(v) for v in args.size.lower().split("x"))
    fetch_stills(args.out)
    training = tuple(name for name in STILLS if name not in HELD_OUT)
    made = make_split(args.out, "train", args.clips, args.seed, training, args.sections, out_hw, args.crf, args.workers, args.short_share)
    held = make_split(args.out, "heldout", args.heldout_clips, args.seed + 1, HELD_OUT, args.sections, out_hw, args.crf, args.workers)
    if args.footage:
        fetch_footage(args.out)
    print(json.dumps({"train": len(made), "heldout": len(held), "out": str(args.out)}))


if __name__ == "__main__":
    main()
