"""A minute of video on the CPU with the tiny models: 1801 frames, and memory that does not grow with length."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

from conftest import GOLDEN, fpgen_env, run_fpgen

from fpgen.buckets import load_image
from fpgen.pipeline import SectionDone, Settings, generate_frames
from fpgen.video import iter_mp4

MARGIN_KB = 40 * 1024  # run-to-run noise of the peak at this size: 427-468 MiB over four standalone runs of either length
TREND_KB = 10 * 1024  # resident memory jumps by up to ~30 MiB between sections (allocator), but its floor stays within ~4 MiB


def generate(seconds: float, output: Path, cache, *extra: str) -> tuple[int, list[int]]:
    """Run one real `fpgen generate`; return its peak resident memory (its own, from wait4) and its RSS after each section."""
    args = ["generate", GOLDEN / "input.png", "--prompt", "a man walks", "--seconds", seconds, "--steps", "1", "--size", "16x16", "--device", "cpu", "-o", output, *extra]
    child = subprocess.Popen([sys.executable, "-m", "fpgen", *map(str, args)], env=fpgen_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    after_sections = []
    for line in child.stderr:  # plain progress lines: stderr is not a terminal
        if re.match(r"section \d+/\d+ done", line):
            status = Path(f"/proc/{child.pid}/status").read_text()
            after_sections.append(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)))
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss, after_sections


def test_a_minute_of_video_in_constant_memory(hf_cache, tmp_path):
    short, _ = generate(10, tmp_path / "short.mp4", hf_cache)
    long, sections = generate(60, tmp_path / "long.mp4", hf_cache, "--preview")
    drift = min(sections[-10:]) - min(sections[5:15])  # the floor: what stays resident, not what comes and goes
    print(f"peak RSS: 10 s video {short / 1024:.0f} MiB, 60 s video {long / 1024:.0f} MiB; lowest RSS after sections 41-50 minus 6-15: {drift / 1024:.1f} MiB")
    assert len(sections) == 50
    assert long <= short * 1.10 + MARGIN_KB
    assert drift < TREND_KB, [kb // 1024 for kb in sections]  # 35 more sections leave nothing behind

    meta, frames = iter_mp4(tmp_path / "long.mp4")
    assert sum(1 for _ in frames) == 1801 and meta["fps"] == 30
    info = json.loads(run_fpgen("info", tmp_path / "long.mp4", "--json").stdout)
    assert info["video"]["frames"] == 1801 and info["video"]["sections"] == 50 and info["job"]["seconds"] == 60
    assert not (tmp_path / "long.mp4.job").exists() and not (tmp_path / "long.partial.mp4").exists()


def test_decoded_frames_are_let_go(tiny_models):
    """No decoded frame outlives its trip to the sink (beyond the cross-fade overlap): what keeps memory flat at any size."""
    alive = []
    handed = []

    def sink(frames, first_frame):
        handed.append(weakref.ref(frames))

    def check(event):
        if isinstance(event, SectionDone):
            gc.collect()
            alive.append(sum(ref() is not None for ref in handed))

    generate_frames(tiny_models("framepack-f1"), load_image(GOLDEN / "input.png"), Settings(seconds=3.6, steps=1, size=(16, 16)), sink, check)
    assert len(handed) == 3 and max(alive) <= 1  # only the piece of the section being reported (SectionDone carries it)
