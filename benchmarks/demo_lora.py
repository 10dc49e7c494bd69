"""A LoRA teaches the shipped demo a motion it never saw: camera shake (issue 16).

Renders shake clips (the view jitters around the start: two sines per axis, periods of 5.3 and 7.1 frames,
``--amplitude`` output pixels) over training stills with demo/data.py's renderer, trains a LoRA on them
with ``fpgen finetune --model demo``, then generates from the demo's held-out example picture with and
without it, prompt "the camera shakes". The measure is the one shake has and the demo's learnt motions
(zoom, pan) lack: how often the frame-to-frame shift (phase correlation) reverses direction, and how large
it is. The rendered truth over the same picture is measured too, as the ceiling.

Usage: python benchmarks/demo_lora.py --out benchmarks/results/demo-lora-DATE.json [--clips 8 --steps 150]
(CPU; about 5 minutes on an idle 2-core box with the defaults.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from demo import data  # noqa: E402

PROMPT = "the camera shakes"
PERIODS = (5.3, 7.1)


def shake_path(frames: int, amplitude: float, phase: float) -> np.ndarray:
    """(frames, 4) demo/data.py's camera path: x and y jitter, no zoom or roll."""
    t = np.arange(frames, dtype=np.float64)
    path = np.zeros((frames, 4))
    path[:, 2] = 1.0
    path[:, 0] = amplitude * (np.sin(2 * np.pi * t / PERIODS[0] + phase) + 0.5 * np.sin(2 * np.pi * t / PERIODS[1]))
    path[:, 1] = amplitude * (np.sin(2 * np.pi * t / PERIODS[1] + 2 * phase) + 0.5 * np.sin(2 * np.pi * t / PERIODS[0] + 1))
    return path


def render_shake(photo, frames: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    views = data.fit_views(shake_path(frames, amplitude, float(rng.uniform(0, 2 * np.pi))), (photo.height, photo.width), (128, 128), rng)
    return data.render(photo, views, (128, 128))


def write_clips(folder: Path, stills: Path, clips: int, frames: int, amplitude: float, seed: int) -> None:
    from fpgen.video import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    trained = [name for name in data.STILLS if name not in data.HELD_OUT]
    for index in range(clips):
        photo = data.load_still(stills, trained[index % len(trained)], bool(rng.random() < 0.5))
        write_mp4(folder / f"shake-{index:03d}.mp4", render_shake(photo, frames, amplitude, rng), crf=10, fps=data.FPS)
        (folder / f"shake-{index:03d}.txt").write_text(PROMPT + "\n")


def shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(dx, dy) moving frame ``a`` onto ``b``: the peak of the phase correlation of their grey images, refined by a parabola."""
    fa, fb = (np.fft.fft2(frame.astype(np.float64).mean(-1) - frame.mean()) for frame in (a, b))
    cross = fb * np.conj(fa)
    surface = np.fft.fftshift(np.real(np.fft.ifft2(cross / (np.abs(cross) + 1e-9))))
    y, x = np.unravel_index(np.argmax(surface), surface.shape)
    refined = []
    for axis, at in ((1, x), (0, y)):
        line = surface[y, :] if axis == 1 else surface[:, x]
        left, mid, right = line[max(at - 1, 0)], line[at], line[min(at + 1, len(line) - 1)]
        denominator = left - 2 * mid + right
        refined.append(at + (0.5 * (left - right) / denominator if denominator else 0.0) - len(line) // 2)
    return np.array(refined)


def shake_measure(frames: np.ndarray) -> dict:
    """Direction reversals of the frame-to-frame shift (share of consecutive pairs, either axis) and its mean size in pixels."""
    steps = np.array([shift(frames[i], frames[i + 1]) for i in range(len(frames) - 1)])
    moving = np.abs(steps) > 0.25
    reversals = (np.sign(steps[1:]) * np.sign(steps[:-1]) < 0) & moving[1:] & moving[:-1]
    return {"reversal_rate": float(reversals.any(axis=1).mean()), "mean_shift_px": float(np.linalg.norm(steps, axis=1).mean())}


def read_frames(path: Path) -> np.ndarray:
    from fpgen.video import read_mp4

    frames, _ = read_mp4(path)
    return np.asarray(frames)


def fpgen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fpgen", *args, "-q"], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stills", type=Path, default=ROOT / ".demo/data/stills", help="make demo-data CLIPS=0's stills")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=37, help="frames per clip (37: one 9-latent section)")
    parser.add_argument("--amplitude", type=float, default=3.0, help="shake amplitude in output pixels")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3, help="videos per arm")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_clips(work / "clips", args.stills, args.clips, args.frames, args.amplitude, seed=0)
        trained_at = time.perf_counter()
        fpgen("finetune", str(work / "clips"), "-o", str(work / "run"), "--model", "demo", "--size", "128x128", "--window", "9", "--rank", str(args.rank),
              "--max-steps", str(args.steps), "--batch-size", "4", "--learning-rate", "1e-3", "--guidance", "1", "--shift", "2", "--device", "cpu")  # fmt: skip
        train_s = time.perf_counter() - trained_at
        from fpgen.registry import MODELS

        example = MODELS["demo"].example
        arms = {"demo": [], "demo+shake LoRA": []}
        for seed in range(args.seeds):
            for arm, extra in (("demo", ()), ("demo+shake LoRA", ("--lora", str(work / "run" / "lora.safetensors")))):
                video = work / f"{arm.replace(' ', '_').replace('+', '_')}-{seed}.mp4"
                fpgen("generate", str(example), "--model", "demo", "-p", PROMPT, "--seconds", "1.2", "--seed", str(seed), "-o", str(video), *extra)
                arms[arm].append(shake_measure(read_frames(video)))
        from PIL import Image

        truth = [shake_measure(render_shake(Image.open(example).convert("RGB"), 37, args.amplitude, np.random.default_rng(100 + s))) for s in range(args.seeds)]
    summary = {arm: {key: float(np.mean([m[key] for m in runs])) for key in runs[0]} for arm, runs in {**arms, "truth (rendered shake)": truth}.items()}
    result = {"prompt": PROMPT, "clips": args.clips, "frames": args.frames, "amplitude_px": args.amplitude, "steps": args.steps, "rank": args.rank,
              "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - started, 1), "summary": summary, "runs": {**arms, "truth": truth}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": summary, "train_s": result["train_s"], "total_s": result["total_s"]}))


if __name__ == "__main__":
    main()
