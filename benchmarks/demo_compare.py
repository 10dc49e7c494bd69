"""Did a new demo transformer gain? Two ``demo_eval.py`` results compared clip by clip (same clips, same truth).

Each result scores its model against the exact truth of the same held-out clips, so the difference of the two
models' scores on a clip is a paired measurement: the variation between clips (some are easy, some hard) drops out.
Printed and written: over all common clips and per motion group, new - old PSNR with its paired bootstrap 95%
interval (drift.py's), how many clips got better, and both models against ``repeat-first`` (the bar) with the
number of clips above it; and, as geometric means of new / old per clip, the sharpness and motion ratios, so that a
gain bought by blurring or by moving less shows.

    python benchmarks/demo_compare.py results/demo-eval-2026-12-02e.json /tmp/r10/eval-c4.json
    python benchmarks/demo_compare.py OLD.json NEW.json OLD-2.json NEW-2.json --out results/demo-compare-DATE.json  # two sets of clips pooled
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import drift  # benchmarks/drift.py: the paired bootstrap

BAR = "repeat-first"


def common_clips(old: dict, new: dict) -> list[tuple[dict, dict]]:
    """The (old, new) video records of the clips both results scored, matched by name and checked to be the same clip."""
    by_name = {v["clip"]: v for v in old["videos"]}
    pairs = [(by_name[v["clip"]], v) for v in new["videos"] if v["clip"] in by_name and "model" in v["scores"] and "model" in by_name[v["clip"]]["scores"]]
    for a, b in pairs:
        if abs(a["scores"][BAR]["psnr"] - b["scores"][BAR]["psnr"]) > 1e-6:  # the bar is computed from the truth alone
            raise SystemExit(f"error: {a['clip']} has different truth in the two results (were they made on different held-out clips?)")
    return pairs


def compare(pairs: list[tuple[dict, dict]]) -> dict:
    """New - old on these clips: PSNR, clips better, each model's margin over the bar, sharpness and motion ratios."""
    psnr = {side: np.array([p[k]["scores"]["model"]["psnr"] for p in pairs]) for k, side in enumerate(("old", "new"))}
    bar = np.array([p[0]["scores"][BAR]["psnr"] for p in pairs])

    def geometric_ratio(score: str) -> float:
        return float(np.exp(np.mean([np.log(b["scores"]["model"][score] / a["scores"]["model"][score]) for a, b in pairs])))

    return {
        "clips": len(pairs),
        "new - old": drift.paired_bootstrap(psnr["new"], psnr["old"]),
        "clips better": int((psnr["new"] > psnr["old"]).sum()),
        **{f"{side} - {BAR}": drift.paired_bootstrap(psnr[side], bar) | {"clips over": int((psnr[side] > bar).sum())} for side in ("old", "new")},
        "sharpness new / old": geometric_ratio("sharpness_ratio"),
        "motion new / old": geometric_ratio("motion_ratio"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", metavar="OLD NEW", help="demo_eval.py's JSON for the model before, then after on the same clips; more such pairs (other clips) are pooled")
    parser.add_argument("--out", type=Path, help="also write the comparison here (not replaced if it exists)")
    args = parser.parse_args(argv)
    if len(args.results) % 2:
        parser.error("give the results in pairs: each old file followed by its new one")
    for path in args.results:
        if not path.is_file():
            parser.error(f"{path} not found: give files written by benchmarks/demo_eval.py")
    if args.out and args.out.exists():
        parser.error(f"{args.out} exists: choose another --out")
    loaded = [json.loads(path.read_text()) for path in args.results]
    pairs = [pair for old, new in zip(loaded[::2], loaded[1::2]) for pair in common_clips(old, new)]
    if not pairs:
        parser.error("the results share no clip with a model score: were they run on the same --data, --skip and --clips?")
    groups = {"overall": pairs} | {g: [p for p in pairs if p[1]["group"] == g] for g in sorted({p[1]["group"] for p in pairs})}
    result = {"command": " ".join(sys.argv), "old": [str(p) for p in args.results[::2]], "new": [str(p) for p in args.results[1::2]]}
    result |= {name: compare(members) for name, members in groups.items()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
