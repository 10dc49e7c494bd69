"""Step caches (TeaCache, First-Block-Cache, MagCache) as block-stack hooks, `fpgen calibrate` and `fpgen warmup`.

Random tiny weights say nothing about real skip rates: these tests check the decisions and their counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import GOLDEN
from enginejob import prepare

from fpgen.acceleration import compile_cache_key
from fpgen.buckets import buckets_for
from fpgen.engine import generate_frames
from fpgen.errors import InputError
from fpgen.spec import JobSpec, Settings
from fpgen.stepcache import MagCache, MagnitudeRecorder, StepCachePlan

STEPS = 6
SETTINGS = Settings(prompt="a man walks", seconds=1.2, seed=3, steps=STEPS, size=(16, 16))
RATIOS = (1.0, 0.9, 0.98, 0.99, 1.01, 1.2)


@pytest.fixture(scope="module")
def generate(tiny_models):
    """``generate(plan)``: the job's latents with that step cache (encoded once)."""
    models = tiny_models()
    job, inputs = prepare(models, GOLDEN / "input.png", SETTINGS)
    return lambda plan: generate_frames(models, inputs, job.plan, job.settings, lambda frames, first: None, step_cache=plan)


@pytest.fixture(scope="module")
def uncached(generate):
    return generate(StepCachePlan())


@pytest.mark.parametrize("kind", ["teacache", "fbcache", "magcache"])
def test_each_cache_skips_nothing_at_threshold_0_and_its_most_at_a_huge_one(kind, generate, uncached):
    exact = generate(StepCachePlan(kind, 0.0, RATIOS))
    assert torch.equal(exact.latents, uncached.latents)  # bit for bit: the hook only ever ran the blocks
    assert exact.transformer_passes == exact.transformer_calls == [STEPS] and exact.skip_rates == [0.0]
    skipping = generate(StepCachePlan(kind, 1e9, RATIOS))
    # TeaCache and First-Block-Cache compute only the section's first and last step; MagCache also
    # step 4, after 3 skips in a row (its retained first fifth is step 0 alone).
    computed = 3 if kind == "magcache" else 2
    assert skipping.transformer_calls == [STEPS] and skipping.transformer_passes == [computed]
    assert skipping.skip_rates == [round(1 - computed / STEPS, 4)]
    assert not torch.equal(skipping.latents, uncached.latents) and torch.isfinite(skipping.latents).all()


def test_magcache_accumulates_the_ratios_error():
    """After the retained steps, skip while the summed |1 - running product of ratios| stays under the threshold."""
    ratios = (1.0, 0.9, 0.98, 0.99, 1.01, 1.0, 0.97, 1.2)
    cache = MagCache(ratios, 8, threshold=0.05)
    decisions = [cache.skip(step, None, step in (0, 7)) for step in range(8)]
    # steps 0-1 retained; step 2: |1-0.98| = 0.02 -> skip; step 3: 0.02 + |1-0.9702| = 0.0498 -> skip;
    # step 4: + |1-0.97990| = 0.070 -> compute (and start again); step 5: error 0 -> skip; step 6: 0.03 -> skip; step 7: last
    assert decisions == [False, False, True, True, False, True, True, False]


def test_the_recorder_measures_residual_magnitude_ratios():
    recorder = MagnitudeRecorder(steps=3)
    hidden = torch.ones(1, 4, 2)
    for scale in (2.0, 3.0, 1.5, 2.0, 2.0, 2.0):  # two sections of three steps: residuals of these magnitudes
        recorder(lambda h, *rest, s=scale: h + s, hidden, None, None, None, None)
        if recorder.calls == 3:
            recorder.reset()
    assert recorder.sections == [[1.0, 1.5, 0.5], [1.0, 1.0, 1.0]]
    assert recorder.ratios() == pytest.approx((1.0, 1.25, 0.75))


def test_step_cache_options_and_older_names():
    out = {"output": "a.mp4"}
    assert JobSpec.from_options(out).settings.step_cache == "none"
    assert JobSpec.from_options({**out, "fast": True}).settings.step_cache == "teacache"  # fast mode's default cache
    assert JobSpec.from_options({**out, "fast": True, "step_cache": "fbcache"}).settings.step_cache == "fbcache"
    older = JobSpec.from_options({**out, "teacache": True, "teacache_threshold": 0.3}).settings  # an older video's metadata
    assert (older.step_cache, older.step_cache_threshold) == ("teacache", 0.3)
    for bad in ({"teacache": True, "step_cache": "magcache"}, {"step_cache": "deepcache"}, {"step_cache_threshold": -1}):
        with pytest.raises(InputError):
            JobSpec.from_options({**out, **bad})


def test_calibrate_then_magcache(cli, tiny_models, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    common = ["--steps", "4", "--size", "16x16", "--seconds", "1.2", "--device", "cpu"]
    missing = cli("generate", GOLDEN / "input.png", *common, "--step-cache", "magcache", "-o", "a.mp4")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "fpgen calibrate" in missing.stderr
    made = cli("calibrate", GOLDEN / "input.png", *common, "--json")
    assert made.returncode == 0, made.stderr
    calibration = json.loads(made.stdout)
    ratios = calibration["ratios"]
    assert len(ratios) == 4 and ratios[0] == 1.0 and all(math.isfinite(r) and r > 0 for r in ratios) and ratios != [1.0] * 4
    assert calibration["path"].startswith(str(tmp_path / "cache" / "fpgen" / "magcache"))
    settings = replace(SETTINGS, steps=4, step_cache="magcache", step_cache_threshold=1e9)
    job, inputs = prepare(tiny_models(), GOLDEN / "input.png", settings)
    assert job.step_cache.ratios == tuple(ratios)  # found by the same key from generate's side
    result = generate_frames(tiny_models(), inputs, job.plan, job.settings, lambda frames, first: None, step_cache=job.step_cache)
    # 4 steps: step 0 retained (a fifth of 4, rounded), 1 and 2 skipped (the ratios' error is under the threshold), 3 the last
    assert (result.transformer_passes, result.skip_rates) == ([2], [0.5])
    other_steps = cli("generate", GOLDEN / "input.png", *common[2:], "--steps", "5", "--step-cache", "magcache", "-o", "b.mp4")
    assert other_steps.returncode == 2 and "--steps 5" in other_steps.stderr  # calibrations are per step count
    split = cli("generate", GOLDEN / "input.png", *common, "--step-cache", "fbcache", "--gpus", "2", "-o", "c.mp4")
    assert split.returncode == 2 and "fbcache" in split.stderr  # block 0 apart cannot run on a split sequence; said before loading


def test_warmup_plan_and_listing(cli, monkeypatch, tmp_path):
    import fpgen.acceleration as acceleration

    monkeypatch.setattr(acceleration, "COMPILE_CACHE", tmp_path / "inductor")
    listed = cli("warmup", "--dry-run", "--json", "--device", "cpu", "--fast", "--size", "64x96", "--size", "64x96", "--size", "32x32")
    assert listed.returncode == 0, listed.stderr
    plan = json.loads(listed.stdout)
    assert plan["cache"] == str(tmp_path / "inductor" / compile_cache_key(torch.__version__, "cpu", torch.float32, "fused"))
    assert [run["size"] for run in plan["runs"]] == ["64x96", "32x32"] and plan["cached_files"] == 0
    assert len({run["prompt"] for run in plan["runs"]}) == 2  # two prompt lengths: the text length becomes dynamic
    usual = json.loads(cli("warmup", "--dry-run", "--json", "--device", "cpu").stdout)
    assert usual["cache"].endswith("-eager_rounding") and len(usual["runs"]) == 5
    assert {tuple(map(int, run["size"].split("x"))) for run in usual["runs"]} <= set(buckets_for(640))
    refused = cli("warmup", "--device", "cpu")
    assert refused.returncode == 2 and "--dry-run" in refused.stderr
