"""The drift study (issue 16): does inverted sampling and the packed history keep long videos on track?

Inputs are the demo's held-out stills (``demo.data.HELD_OUT``) under periodic camera paths that stay
inside the start view (a pan back and forth, a rotation wobble, a zoom in and out), rendered by
``demo/data.py``'s own warp (``fit_views``, ``render``), so every frame has an exact ground truth. Each
input and seed runs through the real ``fpgen generate`` (the Python API, models loaded once per order)
in every cell {inverted (framepack), forward (framepack-f1)} x {packed history 1,2,16; short 1,0,0};
the cells are paired on input and seed.

Per frame: PSNR and SSIM against the ground truth (both blurred with sigma 1, so that drift, not
texture phase, is measured), colour drift (dE76 of the mean Lab colour against the first frame),
sharpness (Laplacian variance) against the first frame, and a motion guard (mean absolute frame
difference against the ground truth's), so that a frozen video cannot win. Per video: the paper's
contrast of the last 15% of frames against the first 15%, and the per-section slope (Theil-Sen).
Between cells: paired bootstrap 95% intervals of the mean difference (numpy only).

    python benchmarks/drift.py --models .demo/hub                        # the study: 12 sections, 3 paths, 2 stills, 2 seeds (GPU)
    python benchmarks/drift.py --models demo --sections 8 --steps 15 --paths pan --seeds 0,1,2 --device cpu   # the shipped demo
    python benchmarks/drift.py --smoke                                   # CPU: 2 videos per cell, the tiny golden models, 64x64
    python benchmarks/drift.py --models DIR --sections 4 --paths pan --seeds 0 --device cpu

``--models demo`` runs the demo shipped with fpgen (``--model demo``): it holds the inverted order only, so the
forward cells are written as not trained (no videos), and its short cells are an inference-only ablation.

Writes ``benchmarks/results/drift-<date>.json`` (or ``--out``) and a PNG of the error against the
section per cell beside it (needs matplotlib: ``pip install fpgen[bench]``; skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root, where demo/ lives
from demo import data  # noqa: E402

ORDERS = {"inverted": "framepack", "forward": "framepack-f1"}
HISTORIES = {"packed": (1, 2, 16), "short": (1, 0, 0)}
PROMPTS = {"pan": "the camera pans left and right", "wobble": "the camera rotates back and forth", "zoom": "the camera zooms in and out"}
COMPARISONS = (  # (name, cell a, cell b): a - b, paired on input and seed
    ("inverted-forward/packed", "inverted/packed", "forward/packed"),
    ("inverted-forward/short", "inverted/short", "forward/short"),
    ("packed-short/inverted", "inverted/packed", "inverted/short"),
    ("packed-short/forward", "forward/packed", "forward/short"),
)
FROZEN_BELOW = 0.25  # a last section moving less than a quarter as much as the truth counts as frozen
EDGE_SHARE = 0.15  # the paper's first and last 15% of frames
STUDY = {"sections": 12, "paths": ",".join(PROMPTS), "seeds": "0,1", "size": "128x128", "steps": 25, "device": "auto"}
SMOKE = {"sections": 2, "paths": "pan", "seeds": "0", "size": "64x64", "steps": 2, "device": "cpu"}
SHIPPED = {"demo": {"inverted": "demo"}}  # models inside fpgen: the orders each was trained in
GOLDEN_HUB = ROOT.parent / "shared" / "golden" / "hub"  # the tiny models in the --model-dir layout (the smoke run's default)


# --- ground truth: periodic paths over a held-out still, through demo/data.py's own warp ---------------


def periodic_path(kind: str, frames: int, speed: str = "fast") -> np.ndarray:
    """(frames, 4) camera moves in demo.data's layout (dx, dy, zoom, roll) that oscillate around the start view.

    Each peaks at the demo's own rate for ``speed`` (``data.PAN_PX``, ``ZOOM_RATE``, ``ROLL_DEG``) with the
    demo's sway period, so the content leaves the view and comes back every ``data.SWAY_PERIOD`` frames.
    """
    if kind == "pan":
        return data.motion_path("sway", speed, frames)
    t, rate = np.arange(frames, dtype=np.float64), data.SPEEDS[speed]
    wave = data.SWAY_PERIOD / (2 * math.pi) * np.sin(2 * math.pi * t / data.SWAY_PERIOD)  # its derivative peaks at 1 per frame
    path = np.zeros((frames, 4))
    path[:, 2] = 1.0
    if kind == "wobble":
        path[:, 3] = data.ROLL_DEG * rate * wave
    elif kind == "zoom":
        path[:, 2] = np.exp(data.ZOOM_RATE * rate * wave)
    else:
        raise ValueError(f"unknown path {kind!r}")
    return path


def ground_truth(stills: Path, still: str, kind: str, seed: int, frames: int, size: tuple[int, int]) -> np.ndarray:
    """(frames, H, W, 3) uint8: the exact video of camera path ``kind`` over ``still`` (the view drawn from ``seed``)."""
    photo = data.load_still(stills, still, flip=False)
    views = data.fit_views(periodic_path(kind, frames), (photo.height, photo.width), size, np.random.default_rng([seed, frames]))
    return data.render(photo, views, size)


# --- metrics: pure numpy, (T, H, W, 3) frames in 0..255 ------------------------------------------------


def gaussian_blur(frames: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Separable Gaussian blur over H and W (edges reflected), float64."""
    radius = max(1, int(math.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.asarray(frames, np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        out = sum(w * np.take(padded, range(i, i + out.shape[axis]), axis=axis) for i, w in enumerate(kernel))
    return out


def psnr(frames: np.ndarray, truth: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """(T,) PSNR in dB of each frame against the truth."""
    mse = ((np.asarray(frames, np.float64) - np.asarray(truth, np.float64)) ** 2).reshape(len(frames), -1).mean(1)
    return 10 * np.log10(peak**2 / np.maximum(mse, 1e-12))


def luma(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames, np.float64) @ np.array([0.299, 0.587, 0.114])


def ssim(frames: np.ndarray, truth: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """(T,) SSIM of the luma (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03)."""
    x, y = luma(frames)[..., None], luma(truth)[..., None]
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = gaussian_blur(x, 1.5), gaussian_blur(y, 1.5)
    vx, vy, cxy = gaussian_blur(x * x, 1.5) - mx**2, gaussian_blur(y * y, 1.5) - my**2, gaussian_blur(x * y, 1.5) - mx * my
    index = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return index.reshape(len(frames), -1).mean(1)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of sRGB values in 0..255."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]).T
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def colour_drift(frames: np.ndarray) -> np.ndarray:
    """(T,) dE76 between each frame's mean Lab colour and the first frame's."""
    mean_lab = srgb_to_lab(frames).reshape(len(frames), -1, 3).mean(1)
    return np.linalg.norm(mean_lab - mean_lab[0], axis=-1)


def sharpness(frames: np.ndarray) -> np.ndarray:
    """(T,) variance of the 4-neighbour Laplacian of the luma (inner pixels)."""
    y = luma(frames)
    laplacian = y[:, 1:-1, :-2] + y[:, 1:-1, 2:] + y[:, :-2, 1:-1] + y[:, 2:, 1:-1] - 4 * y[:, 1:-1, 1:-1]
    return laplacian.reshape(len(frames), -1).var(1)


def frame_motion(frames: np.ndarray) -> np.ndarray:
    """(T-1,) mean absolute difference between consecutive frames: how much the video moves."""
    return np.abs(np.diff(np.asarray(frames, np.float64), axis=0)).reshape(len(frames) - 1, -1).mean(1)


def motion_error(frames: np.ndarray, truth: np.ndarray) -> float:
    """|log| of the ratio of the video's mean frame motion to the truth's: 0 moves as much, a frozen video scores high."""
    eps = 1e-3
    return abs(math.log((frame_motion(frames).mean() + eps) / (frame_motion(truth).mean() + eps)))


def edge_contrast(values: np.ndarray, share: float = EDGE_SHARE) -> float:
    """The paper's drift contrast: the mean over the last ``share`` of frames minus the mean over the first."""
    n = max(1, int(round(share * len(values))))
    return float(np.mean(values[-n:]) - np.mean(values[:n]))


def theil_sen(values: np.ndarray) -> float:
    """The median of the slopes between every pair of points (x = 0, 1, ...): a trend that outliers cannot pull."""
    i, j = np.triu_indices(len(values), k=1)
    return float(np.median((np.asarray(values)[j] - np.asarray(values)[i]) / (j - i))) if len(i) else 0.0


def bootstrap_mean(values: np.ndarray, resamples: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """The mean of ``values`` and its percentile bootstrap interval."""
    values = np.asarray(values, np.float64)
    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[picks].mean(1)
    tail = (1 - level) / 2 * 100
    return {"mean": float(values.mean()), "low": float(np.percentile(means, tail)), "high": float(np.percentile(means, 100 - tail)), "pairs": len(values)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """The mean of a - b over pairs and its percentile bootstrap interval (pairs resampled together)."""
    return bootstrap_mean(np.asarray(a, np.float64) - np.asarray(b, np.float64), resamples, seed, level)


def section_means(values: np.ndarray, frames_per_section: int) -> np.ndarray:
    """(sections,) means of per-frame values over each section's frames (frame 0, the start picture, left out)."""
    return np.asarray(values[1:], np.float64).reshape(-1, frames_per_section).mean(1)


def video_metrics(frames: np.ndarray, truth: np.ndarray, frames_per_section: int) -> dict:
    """Per-section curves and per-video summaries of one generated video against its ground truth."""
    blurred, blurred_truth = gaussian_blur(frames), gaussian_blur(truth)
    per_frame = {
        "psnr": psnr(blurred, blurred_truth),
        "ssim": ssim(blurred, blurred_truth),
        "colour_drift": colour_drift(frames),
        "sharpness_ratio": sharpness(frames) / max(sharpness(frames[:1])[0], 1e-9),
        "motion_ratio": np.concatenate([[1.0], (frame_motion(frames) + 1e-3) / (frame_motion(truth) + 1e-3)]),
    }
    sections = {name: section_means(values, frames_per_section) for name, values in per_frame.items()}
    summary = {
        "psnr_mean": float(per_frame["psnr"][1:].mean()),
        "ssim_mean": float(per_frame["ssim"][1:].mean()),
        "psnr_contrast": edge_contrast(per_frame["psnr"]),
        "ssim_contrast": edge_contrast(per_frame["ssim"]),
        "psnr_slope_per_section": theil_sen(sections["psnr"]),
        "colour_drift_last_section": float(sections["colour_drift"][-1]),
        "colour_drift_truth_last_section": float(section_means(colour_drift(truth), frames_per_section)[-1]),
        "sharpness_ratio_last_section": float(sections["sharpness_ratio"][-1]),
        "motion_error": motion_error(frames, truth),
        "motion_ratio_last_section": float(sections["motion_ratio"][-1]),
    }
    return {"sections": {k: v.round(5).tolist() for k, v in sections.items()}, "summary": summary}


# --- the study -------------------------------------------------------------------------------------------


def compare(cells: dict) -> dict:
    """Paired bootstrap intervals of every summary between the cells of COMPARISONS."""
    out = {}
    for name, first, second in COMPARISONS:
        if cells.get(first, {}).get("videos") and cells.get(second, {}).get("videos"):
            a, b = cells[first]["videos"], cells[second]["videos"]
            out[name] = {key: paired_bootstrap([v["summary"][key] for v in a], [v["summary"][key] for v in b]) for key in a[0]["summary"]}
    return out


def plot(cells: dict, path: Path) -> str:
    """PNG of PSNR and SSIM (mean over videos) against the section, one line per cell; a note when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return "matplotlib is not installed: no plot (pip install fpgen[bench])"
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for cell, result in ((c, r) for c, r in cells.items() if r["videos"]):
        for axis, metric in zip(axes, ("psnr", "ssim")):
            curve = np.mean([v["sections"][metric] for v in result["videos"]], 0)
            axis.plot(np.arange(1, len(curve) + 1), curve, marker="o", label=cell)
    for axis, label in zip(axes, ("PSNR vs ground truth (dB)", "SSIM vs ground truth")):
        axis.set_xlabel("section (time order)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"plot: {path}"


def cell_models(args, order: str, history_name: str) -> tuple[str | None, Path | None, str | None]:
    """(model, model folder, note) of one cell: model None when these weights hold no such order."""
    short_weights = history_name == "short" and args.short_models
    note = None if history_name == "packed" or short_weights else "inference-only ablation: weights trained with history 1,2,16"
    if str(args.models) in SHIPPED:
        model = SHIPPED[str(args.models)].get(order)
        return model, None, note if model else f"not trained: the shipped {args.models} model holds the {', '.join(SHIPPED[str(args.models)])} order only"
    return ORDERS[order], args.short_models if short_weights else args.models, note


def run_study(args, inputs: list[tuple[str, str, int]], stills: Path) -> dict:
    """Generate every cell's videos with the real fpgen and measure them against the ground truth."""
    import fpgen
    from fpgen.video import read_mp4

    frames = 1 + 4 * args.window * args.sections
    truths = {item: ground_truth(stills, *item, frames, args.size) for item in inputs}
    cells = {}
    with tempfile.TemporaryDirectory() as tmp:
        for order in ORDERS:
            loaded = {}  # (model, folder) -> this order's models, loaded once
            for history_name, history in HISTORIES.items():
                model, folder, note = cell_models(args, order, history_name)
                cell = cells.setdefault(f"{order}/{history_name}", {"model": model, "history": list(history), "videos": []} | ({"note": note} if note else {}))
                if model is None:
                    continue
                if (model, folder) not in loaded:
                    loaded[(model, folder)] = fpgen.load_models(model, model_dir=folder, device=args.device)
                for still, kind, seed in inputs:
                    settings = fpgen.Settings(prompt=PROMPTS[kind], seconds=args.sections * 4 * args.window / data.FPS, seed=seed, steps=args.steps,
                                              window=args.window, distilled_guidance=args.distilled_guidance, size=args.size, history=history)  # fmt: skip
                    output = Path(tmp) / f"{order}-{history_name}-{still}-{kind}-{seed}.mp4"
                    started = time.perf_counter()
                    fpgen.generate_video(loaded[(model, folder)], truths[(still, kind, seed)][0], output, settings, crf=0)
                    video, _ = read_mp4(output)
                    result = video_metrics(video, truths[(still, kind, seed)], 4 * args.window)
                    cell["videos"].append({"still": still, "path": kind, "seed": seed, "seconds": round(time.perf_counter() - started, 2), **result})
                    print(f"{order}/{history_name} {still} {kind} seed {seed}: PSNR {result['summary']['psnr_mean']:.2f} dB", file=sys.stderr)
            del loaded
    for cell in (cell for cell in cells.values() if cell["videos"]):
        cell["mean"] = {key: float(np.mean([v["summary"][key] for v in cell["videos"]])) for key in cell["videos"][0]["summary"]}
        cell["interval"] = {key: bootstrap_mean([v["summary"][key] for v in cell["videos"]]) for key in cell["videos"][0]["summary"]}
        cell["frozen"] = cell["mean"]["motion_ratio_last_section"] < FROZEN_BELOW  # the guard: such a cell's PSNR cannot count as a win
    return cells


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help=f"model folder in the --model-dir layout holding both orders' transformers (--smoke: the tiny golden models), or a model shipped with fpgen: {', '.join(SHIPPED)}")
    parser.add_argument("--short-models", type=Path, help="model folder trained with --history 1,0,0 for the short cells (default: --models, an inference-only ablation)")
    parser.add_argument("--stills", type=Path, default=ROOT / ".demo" / "data" / "stills", help="folder with the held-out stills (fetched with demo/data.py's pip download when missing)")
    parser.add_argument("--sections", type=int, help="sections per video (study 12, smoke 2)")
    parser.add_argument("--paths", help=f"comma-separated camera paths: {', '.join(PROMPTS)} (study all, smoke pan)")
    parser.add_argument("--seeds", help="comma-separated seeds, each also drawing the view over the still (study 0,1, smoke 0)")
    parser.add_argument("--size", help="HEIGHTxWIDTH of the videos (study 128x128, smoke 64x64)")
    parser.add_argument("--steps", type=int, help="sampling steps (study 25, smoke 2)")
    parser.add_argument("--window", type=int, default=data.WINDOW, help="latent frames per section")
    parser.add_argument("--distilled-guidance", type=float, default=1.0, help="the demo model is trained with guidance 1")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (study auto, smoke cpu)")
    parser.add_argument("--smoke", action="store_true", help="CPU check of the harness: 2 videos per cell, 64x64, 2 sections, 2 steps, the tiny golden models")
    parser.add_argument("--out", type=Path, help="JSON to write (default benchmarks/results/drift[-smoke]-<date>.json); the PNG goes beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    for name, value in ({**SMOKE, "models": GOLDEN_HUB} if args.smoke else STUDY).items():  # given options win over the run's defaults
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    size = re.fullmatch(r"(\d+)x(\d+)", args.size.lower())
    if not size or int(size[1]) % 16 or int(size[2]) % 16 or not re.fullmatch(r"\d+(,\d+)*", args.seeds):
        parser.error(f"--size must be HEIGHTxWIDTH in multiples of 16 and --seeds integers (got {args.size!r}, {args.seeds!r})")
    args.size, args.seeds = (int(size[1]), int(size[2])), [int(v) for v in args.seeds.split(",")]
    args.paths = args.paths.split(",")
    if unknown := [p for p in args.paths if p not in PROMPTS]:
        parser.error(f"unknown --paths {','.join(unknown)}: use {', '.join(PROMPTS)}")
    if str(args.models) not in SHIPPED and (args.models is None or not args.models.is_dir()):
        parser.error(f"--models must be a model folder (got {args.models}); e.g. the demo hub .demo/hub, or --smoke for the tiny golden models")
    if args.short_models is not None and not args.short_models.is_dir():
        parser.error(f"--short-models must be a model folder (got {args.short_models})")
    if args.sections < 2:
        parser.error("--sections must be at least 2 (the per-section slope needs two points)")
    name = f"drift-{'smoke-' if args.smoke else ''}{datetime.date.today().isoformat()}.json"  # a smoke run is never mistaken for the study
    args.out = args.out or ROOT / "benchmarks" / "results" / name
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists: pass --overwrite to replace it, or --out another file")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stills = args.stills if all((args.stills / name).is_file() for name in data.HELD_OUT) else data.fetch_stills(args.stills.parent)
    inputs = [(still, kind, seed) for still in data.HELD_OUT for kind in args.paths for seed in args.seeds]
    started = time.perf_counter()
    cells = run_study(args, inputs, stills)
    result = {
        "command": " ".join(sys.argv),
        "models": str(args.models), "short_models": str(args.short_models or args.models),
        "size": list(args.size), "sections": args.sections, "steps": args.steps, "window": args.window,
        "distilled_guidance": args.distilled_guidance, "inputs": [list(i) for i in inputs], "smoke": args.smoke,
        "seconds": round(time.perf_counter() - started, 1),
        "cells": cells,
        "comparisons": compare(cells),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(plot(cells, args.out.with_suffix(".png")), file=sys.stderr)
    print(json.dumps({"out": str(args.out), "seconds": result["seconds"], "cells": {k: v.get("mean", v.get("note")) for k, v in cells.items()}}))


if __name__ == "__main__":
    main()
