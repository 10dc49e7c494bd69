"""Does the demo's transformer read the caption? Held-out loss with the right and the opposite caption, per sample layout.

For the first N held-out clips with an opposite motion (pan left/right, tilt, zoom, roll), each clip is cached
twice by ``fpgen finetune``'s own cache, once with its caption and once with the opposite motion's
(``demo_eval.wrong_caption``), cut to ``--sections`` sections; every section sample of that length's
generation plan (``fpgen.plan``: its padding, with or without history) is scored by the training objective at
fixed timesteps and noise (``evaluation_loss``). A model that uses the caption has a lower loss with the right one.

This is how round 4 found why the demo did not steer (benchmarks/RESULTS.md): all its training clips were 8
sections long, so the first section of a 1- or 2-section video (padding 0 or 1, blank history) had never been
trained, and there the caption made no difference.

    python benchmarks/demo_caption_loss.py --sections 1                # the shipped demo, 8 clips, one-section videos
    python benchmarks/demo_caption_loss.py --sections 4 --model-dir /tmp/r5/hub
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from demo_eval import OPPOSITE, wrong_caption  # benchmarks/: puts the repository root on sys.path
from drift import ROOT, bootstrap_mean


def link_clips(folder: Path, source: Path, clips: list[dict], caption) -> None:
    folder.mkdir(parents=True)
    for clip in clips:
        (folder / f"{clip['name']}.mp4").symlink_to((source / f"{clip['name']}.mp4").resolve())
        (folder / f"{clip['name']}.txt").write_text(caption(clip) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 3)[3], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".demo/data/heldout", help="held-out clips (make demo-data CLIPS=0)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--sections", type=int, default=1, help="clip length, so the plan of a video this long")
    parser.add_argument("--model-dir", type=Path, help="a hub (demo/train_h200.sh's) instead of the shipped demo")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import fpgen
    from fpgen.training.config import TrainConfig
    from fpgen.training.objective import FlowMatchingLoss, evaluation_loss
    from fpgen.training.samples import build_batch, sample_refs
    from fpgen.training.setup import cache_only

    clips = [{**json.loads(path.read_text()), "name": path.stem} for path in sorted(args.data.glob("clip-*.json"))]
    clips = [clip for clip in clips if clip["motion"] in OPPOSITE][: args.clips]
    model, model_dir = ("framepack", args.model_dir) if args.model_dir else ("demo", None)
    losses = defaultdict(lambda: defaultdict(list))
    with tempfile.TemporaryDirectory() as tmp:
        cached = {}
        for variant, caption in (("right", lambda clip: clip["caption"]), ("opposite", wrong_caption)):
            link_clips(Path(tmp) / variant, args.data, clips, caption)
            config = TrainConfig(data=Path(tmp) / variant, model=model, model_dir=model_dir, size=(128, 128), max_sections=args.sections,
                                 cache_dir=Path(tmp) / "cache", device="cpu")  # fmt: skip
            cached[variant], _ = cache_only(config)
        transformer = fpgen.load_models(model, model_dir=model_dir, device="cpu").transformer.float()
        objective = FlowMatchingLoss(transformer, guidance=1.0)  # the demo's order is the original, inverted one
        for variant, entries in cached.items():
            seen = set()
            for ref in sample_refs(entries, 9, "inverted"):
                layout = f"padding {ref.section.padding}, " + ("first made (blank history)" if ref.clip not in seen else "with history")
                seen.add(ref.clip)
                losses[layout][variant].append(evaluation_loss(objective, [build_batch([ref], entries, 9, "inverted")], 2.0, 0))
    result = {"sections": args.sections, "clips": len(clips), "model": str(args.model_dir or "demo"), "layouts": {}}
    for layout, by in losses.items():
        right, opposite = np.array(by["right"]), np.array(by["opposite"])
        result["layouts"][layout] = {"right": float(right.mean()), "opposite": float(opposite.mean()), "opposite - right": bootstrap_mean(opposite - right)}
        print(f"{layout}: loss right {right.mean():.4f}, opposite {opposite.mean():.4f}, opposite - right {result['layouts'][layout]['opposite - right']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
