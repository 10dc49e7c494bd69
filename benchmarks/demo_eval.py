"""Has the shipped demo model (``--model demo``) learnt motion? One section per held-out clip against the clip's exact truth.

Each held-out clip of ``make demo-data CLIPS=0`` (coffee.png, rocket.jpg: never trained on) whose camera path moves gives
its first frame as the picture and its caption as the prompt; the demo makes ONE section (1 + 4 * window frames,
128x128, 25 steps, guidance 1) and every frame after the first is scored against the clip's ground truth, re-rendered
exactly from ``clip-N.json``'s views with ``demo/data.py``'s own warp (not read back from the lossy MP4). The scores
are drift.py's: PSNR and mean absolute error after a sigma-1 blur; per clip the mean over the section's frames.

Two "it did not move" baselines, paired on the clip: ``repeat-first`` repeats the clip's exact first frame (the
brief's bar), ``repeat-decoded`` repeats the model's own frame 0, which went through the demo VAE like every
generated frame, so that the VAE's reconstruction error is not counted against the motion. ``--wrong-captions N``
also generates the first N clips with the caption of the opposite motion (pan left for pan right, zoom out for
zoom in...) to show whether the prompt steers the motion. ``truth-through-vae`` is the truth section encoded and
decoded by the same VAE and written to the same lossless MP4: what a perfect transformer would score, so the
ceiling the VAE puts on every generated video. Paired bootstrap 95% intervals from drift.py.

    python benchmarks/demo_eval.py                                   # 18 clips, two per moving motion, 25 steps (CPU)
    python benchmarks/demo_eval.py --clips 9 --wrong-captions 8 --steps 15
    python benchmarks/demo_eval.py --skip 18 --clips 9 --cfg 2       # a setting tried on 9 other clips
    python benchmarks/demo_eval.py --model-dir HUB --ceiling-only     # a newly trained VAE's ceiling, before any transformer
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import drift  # benchmarks/drift.py: the metrics and the bootstrap (it puts the repository root on sys.path)
from drift import ROOT, data

OPPOSITE = {"pan_left": "pan_right", "tilt_up": "tilt_down", "zoom_in": "zoom_out", "roll_cw": "roll_ccw"}
OPPOSITE |= {b: a for a, b in OPPOSITE.items()}
GROUPS = {"pan_left": "pan", "pan_right": "pan", "tilt_up": "tilt", "tilt_down": "tilt", "zoom_in": "zoom", "zoom_out": "zoom",
          "roll_cw": "roll", "roll_ccw": "roll", "sway": "sway"}  # fmt: skip
SCORES = ("psnr", "mae")  # higher PSNR is better, lower MAE is better


def pick_clips(folder: Path, count: int) -> list[dict]:
    """``count`` moving clips in turn over the motions (clip order within a motion), so that each motion is represented."""
    by_motion = defaultdict(list)
    for path in sorted(folder.glob("clip-*.json")):
        clip = json.loads(path.read_text())
        if clip["motion"] != "still":
            by_motion[clip["motion"]].append({**clip, "name": path.stem})
    turns = [clips[i] for i in range(max(map(len, by_motion.values()), default=0)) for _, clips in sorted(by_motion.items()) if i < len(clips)]
    return turns[:count]


def wrong_caption(clip: dict) -> str:
    """A caption of the opposite motion at the clip's speed (demo.data's own templates), drawn from the clip's seed."""
    subject = data.STILLS[clip["still"]][1]
    return data.caption(OPPOSITE[clip["motion"]], clip["speed"], subject, np.random.default_rng([clip["seed"], clip["index"], 1]))


def section_scores(frames: np.ndarray, truth: np.ndarray) -> dict:
    """Mean PSNR and mean absolute error (sigma-1 blur on both) over the frames after the first."""
    blurred, blurred_truth = drift.gaussian_blur(frames[1:]), drift.gaussian_blur(truth[1:])
    return {"psnr": float(drift.psnr(blurred, blurred_truth).mean()), "mae": float(np.abs(blurred - blurred_truth).mean())}


def summarise(videos: list[dict], pairs: list[tuple[str, str]]) -> dict:
    """Per motion group and overall: each variant's mean scores and the paired bootstrap of each (a, b) difference."""
    groups = {"overall": videos} | {g: [v for v in videos if v["group"] == g] for g in sorted({v["group"] for v in videos})}
    out = {}
    for name, members in groups.items():
        out[name] = {"clips": len(members)}
        for a, b in pairs:
            both = [v for v in members if a in v["scores"] and b in v["scores"]]
            if both:
                out[name][f"{a} - {b}"] = {s: drift.paired_bootstrap([v["scores"][a][s] for v in both], [v["scores"][b][s] for v in both]) for s in SCORES}
    return out


def through_vae(models, truth: np.ndarray, output: Path) -> np.ndarray:
    """The truth section after the demo's VAE round trip and the MP4 writer every generated video goes through."""
    from fpgen.conditioning import encode_latents
    from fpgen.decode import decode_latents
    from fpgen.pixels import to_pixels, to_uint8
    from fpgen.video import read_mp4, write_mp4

    write_mp4(output, to_uint8(decode_latents(models.vae, encode_latents(models.vae, to_pixels(truth)))), crf=0)
    return read_mp4(output)[0]


def run(args) -> list[dict]:
    """Generate every picked clip's section (and its wrong-caption twin) with the real fpgen and score it."""
    import fpgen
    from fpgen.sampling import get_schedule
    from fpgen.video import read_mp4

    models = fpgen.load_models("framepack" if args.model_dir else "demo", model_dir=args.model_dir, device=args.device)
    if args.shift is not None:  # a fixed schedule shift instead of the family's resolution-dependent one
        models.family = dataclasses.replace(models.family, schedule=functools.partial(get_schedule, shift=args.shift))
    frames = 1 + 4 * args.window
    videos = []
    for number, clip in enumerate(pick_clips(args.data, args.skip + args.clips)[args.skip :]):
        photo = data.load_still(args.stills, clip["still"], clip["flip"])
        truth = data.render(photo, np.asarray(clip["views"][:frames]), tuple(clip["size"]))
        prompts = {} if args.ceiling_only else {"model": clip["caption"]} | ({"model-wrong-caption": wrong_caption(clip)} if number < args.wrong_captions and clip["motion"] in OPPOSITE else {})
        video = {"clip": clip["name"], "still": clip["still"], "motion": clip["motion"], "speed": clip["speed"], "group": GROUPS[clip["motion"]],
                 "prompts": prompts, "scores": {"repeat-first": section_scores(np.repeat(truth[:1], frames, 0), truth)}}  # fmt: skip
        for variant, prompt in prompts.items():
            settings = fpgen.Settings(prompt=prompt, seconds=4 * args.window / data.FPS, seed=args.seed, steps=args.steps, window=args.window,
                                      distilled_guidance=1.0, cfg=args.cfg, size=tuple(clip["size"]))  # fmt: skip
            output = args.work / f"{clip['name']}-{variant}.mp4"
            started = time.perf_counter()
            fpgen.generate_video(models, truth[0], output, settings, crf=0, overwrite=True)
            generated, _ = read_mp4(output)
            video["scores"][variant] = section_scores(generated, truth)
            video["scores"][variant]["motion_ratio"] = float(drift.frame_motion(generated).mean() / drift.frame_motion(truth).mean())
            video["scores"][variant]["sharpness_ratio"] = float(drift.sharpness(generated[1:]).mean() / drift.sharpness(truth[1:]).mean())  # below 1: softer than the truth
            video["scores"][variant]["seconds"] = round(time.perf_counter() - started, 1)
            if variant == "model":
                video["scores"]["repeat-decoded"] = section_scores(np.repeat(generated[:1], frames, 0), truth)
        video["scores"]["truth-through-vae"] = section_scores(through_vae(models, truth, args.work / f"{clip['name']}-vae.mp4"), truth)
        videos.append(video)
        shown = ", ".join(f"{k} {v['psnr']:.2f}" for k, v in video["scores"].items())
        print(f"{clip['name']} {clip['motion']} {clip['speed']}: PSNR {shown}", file=sys.stderr)
    return videos


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 3)[3], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="evaluate the inverted transformer of this hub (demo/train_h200.sh's) instead of the shipped demo")
    parser.add_argument("--data", type=Path, default=ROOT / ".demo" / "data" / "heldout", help="held-out clips (make demo-data CLIPS=0)")
    parser.add_argument("--stills", type=Path, default=ROOT / ".demo" / "data" / "stills", help="the stills the clips were rendered from")
    parser.add_argument("--clips", type=int, default=18, help="moving clips, taken in turn over the 9 moving motions")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N of those clips (another set of clips, e.g. to choose settings on)")
    parser.add_argument("--wrong-captions", type=int, default=0, help="also run the first N clips with the opposite motion's caption")
    parser.add_argument("--ceiling-only", action="store_true", help="score only repeat-first and truth-through-vae (no generation): judges a VAE before a transformer is trained on it")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--shift", type=float, help="sample with this fixed schedule shift (e^mu) instead of the resolution-dependent one (1.74 at 128x128)")
    parser.add_argument("--cfg", type=float, default=1.0, help="real classifier-free guidance against the empty prompt (the demo trained with caption dropout 0.1)")
    parser.add_argument("--window", type=int, default=data.WINDOW, help="latent frames of the one section")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"demo-eval-{datetime.date.today().isoformat()}.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if not sorted(args.data.glob("clip-*.json")):
        parser.error(f"no held-out clips in {args.data}: run `make demo-data CLIPS=0` first")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists: pass --overwrite to replace it, or --out another file")
    return args


def main(argv: list[str] | None = None) -> None:
    import tempfile

    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        args.work = Path(work)
        videos = run(args)
    pairs = [("model", "repeat-first"), ("model", "repeat-decoded"), ("model", "model-wrong-caption"), ("truth-through-vae", "repeat-first"), ("model", "truth-through-vae")]
    result = {"command": " ".join(sys.argv), "model": str(args.model_dir or "demo"), "steps": args.steps, "window": args.window, "seed": args.seed, "distilled_guidance": 1.0, "cfg": args.cfg, "shift": args.shift, "skip": args.skip,
              "seconds": round(time.perf_counter() - started, 1), "summary": summarise(videos, pairs), "videos": videos}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"out": str(args.out), "seconds": result["seconds"], "overall": result["summary"]["overall"]}))


if __name__ == "__main__":
    main()
