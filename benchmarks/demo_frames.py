"""docs/demo.jpg: every 12th frame of three 2-second demo videos from the shipped example picture, one row each.

    python benchmarks/demo_frames.py --out docs/demo.jpg       # CPU, about a minute idle
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PROMPTS = ("the camera zooms in", "the camera pans to the left", "the camera rotates clockwise")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=int, default=12, help="frame step between the pictures of a row")
    parser.add_argument("--seed", type=int, default=31337)
    args = parser.parse_args(argv)
    import fpgen
    from fpgen.registry import MODELS
    from fpgen.video import read_mp4

    models = fpgen.load_models("demo", device="cpu")
    picture = np.asarray(Image.open(MODELS["demo"].example).convert("RGB"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for prompt in PROMPTS:
            video = Path(tmp) / "video.mp4"
            fpgen.generate_video(models, picture, video, fpgen.Settings(prompt=prompt, seconds=2.0, seed=args.seed, distilled_guidance=1.0, size=(128, 128)), crf=0, overwrite=True)
            frames = np.asarray(read_mp4(video)[0])
            rows.append(np.concatenate(list(frames[:: args.every]), axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, quality=90)
    print(f"{args.out}: {len(rows)} rows of {rows[0].shape[1] // frames.shape[2]} frames")


if __name__ == "__main__":
    main()
