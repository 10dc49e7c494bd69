"""The behaviour tests' measures on the shipped demo over several seeds: the margins their docstrings quote.

``tests/test_demo_model.py`` asserts each measure at one seed against a bound; after the demo's weights change,
this prints every measure for seeds 0, 1, 2 (CPU, about 4 minutes on 2 cores) as one JSON line per seed and
writes them to ``--out``.

Usage: ``python benchmarks/demo_margins.py [--seeds 0,1,2] [--lora tests/assets/demo-spin-lora.safetensors] --out FILE``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def margins(t, demo, spun, example, seed: int) -> dict:
    """Every test's measure at ``seed``, as the ratio or figure its assertion bounds."""
    t.SEED = seed
    plain = t.make_video(demo, example)[0]
    with_end, without = t.end_picture_errors(demo, example, plain)
    skip_rates, rel_l2 = t.teacache_effect(demo, example, plain)
    with tempfile.TemporaryDirectory() as folder:
        frames = t.extended_video(demo, plain, Path(folder))
    join, typical = t.join_and_typical_change(frames, len(plain))
    first = t.frame_changes(frames)[len(plain) - 1].item()
    zoom, pan = t.zoom_and_pan_errors(demo, example)
    before, after = t.changes_before_and_after(demo, example)
    return {
        "seed": seed,
        "end_picture_ratio": with_end / without,  # bound < 0.5
        "teacache_skip_rates": skip_rates,  # bound >= 0.1
        "teacache_rel_l2": rel_l2,  # bound < 0.06
        "extend_join_ratio": join / typical,  # bound < 2.5
        "extend_first_ratio": first / typical,
        "zoom_target_ratio": zoom["zoom"] / zoom["pan"],  # bound < 0.6
        "pan_target_ratio": pan["pan"] / pan["zoom"],  # bound < 0.6
        "timed_prompt_ratio": before / after,  # bound > 2
        "spin_degrees": t.spin_angles(demo, spun, example),  # bound > 20 with the LoRA, |.| < 5 without
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lora", type=Path, default=ROOT / "tests" / "assets" / "demo-spin-lora.safetensors", help="the spin LoRA to measure")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import numpy as np
    from PIL import Image

    import fpgen
    import test_demo_model as t
    from fpgen.lora import LoraChoice
    from fpgen.registry import DEMO_FOLDER

    demo = fpgen.load_models("demo", device="cpu")
    spun = fpgen.load_models("demo", device="cpu", loras=[LoraChoice(args.lora)])
    example = np.asarray(Image.open(DEMO_FOLDER / "example.png").convert("RGB"))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(margins(t, demo, spun, example, seed))
        print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"command": " ".join(["benchmarks/demo_margins.py", *(argv or sys.argv[1:])]), "lora": str(args.lora), "seeds": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
