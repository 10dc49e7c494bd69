"""Where does the demo move the picture? The horizontal shift of each frame against frame 0, model against truth.

One section per held-out clip from its first frame and caption (as ``demo_eval.py`` makes it); the shift is the
peak of the phase correlation over the frame's central 96 px, in whole output pixels (negative: the content moved
left). It shows the shape of a path, which PSNR does not: round 9's sway clips came out the right way round, at the
fast sway's amplitude whatever their speed, as their captions did not say it.

    python benchmarks/demo_path_probe.py clip-00015 clip-00044 clip-00029 --out results/demo-path-probe-DATE.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fpgen.video import read_mp4

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 33  # one section at the demo's window


def horizontal_shift(reference: np.ndarray, frame: np.ndarray, margin: int = 16) -> int:
    """Whole pixels the central content of ``frame`` sits right of ``reference``'s (phase correlation)."""
    a, b = (x.mean(-1)[margin:-margin, margin:-margin] for x in (reference.astype(np.float64), frame.astype(np.float64)))
    cross = np.fft.fft2(b - b.mean()) * np.conj(np.fft.fft2(a - a.mean()))
    peak = np.unravel_index(np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real.argmax(), a.shape)[1]
    return int(peak - a.shape[1] if peak > a.shape[1] // 2 else peak)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="+", help="held-out clip names (clip-00015)")
    parser.add_argument("--data", type=Path, default=ROOT / ".demo/data/heldout", help="make demo-data CLIPS=0's held-out clips")
    parser.add_argument("--every", type=int, default=4, help="report every N-th frame")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in args.clips:
            truth = np.asarray(read_mp4(args.data / f"{clip}.mp4")[0])[:FRAMES]
            spec = json.loads((args.data / f"{clip}.json").read_text())
            picture, video = Path(tmp) / f"{clip}.png", Path(tmp) / f"{clip}.mp4"
            Image.fromarray(truth[0]).save(picture)
            subprocess.run([sys.executable, "-m", "fpgen", "generate", str(picture), "--model", "demo", "-p", spec["caption"], "--seconds", "1.1", "-o", str(video), "-q"], check=True)
            made = np.asarray(read_mp4(video)[0])[:FRAMES]
            row = {"clip": clip, "motion": spec["motion"], "speed": spec["speed"], "caption": spec["caption"], "frames": list(range(0, FRAMES, args.every)),
                   "truth_px": [horizontal_shift(truth[0], f) for f in truth[:: args.every]], "model_px": [horizontal_shift(made[0], f) for f in made[:: args.every]]}  # fmt: skip
            print(json.dumps(row))
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(["benchmarks/demo_path_probe.py", *(argv or sys.argv[1:])]), "clips": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
