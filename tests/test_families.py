"""A model family is a description: a new one runs through the unchanged engine."""

from __future__ import annotations

from dataclasses import replace

from conftest import GOLDEN

from fpgen import registry
from fpgen.config import resolve
from fpgen.spec import JobSpec, Settings
from fpgen.families import FORWARD, Family
from fpgen.families import Defaults
from fpgen.geometry import latents_to_frames
from fpgen.hub import find_model
from fpgen.loading import Components
from fpgen.run import run_job
from fpgen.video import read_mp4

TOY = Family("toy", FORWARD, defaults=Defaults(steps=2, window=5, distilled_guidance=6.0))


def test_a_toy_family_needs_only_its_description(tiny_models, offline_cache, monkeypatch, tmp_path):
    """F1's layout with other defaults: registered as data, resolved and run with no change elsewhere."""
    monkeypatch.setitem(registry.MODELS, "toy", replace(registry.MODELS["framepack-f1"], name="toy", family=TOY))
    f1 = tiny_models("framepack-f1")
    components = Components(find_model("toy"), f1.runtime).use_transformer(f1.transformer)
    for name in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "feature_extractor", "image_encoder", "vae"):
        setattr(components, name, getattr(f1, name))

    spec = JobSpec(tmp_path / "toy.mp4", Settings(prompt="a toy walks", seconds=1.2, size=(32, 32)), image=GOLDEN / "input.png", model="toy")
    job = resolve(spec, loaded=components)
    assert (job.settings.window, job.settings.steps, job.settings.distilled_guidance) == (5, 2, 6.0)  # the family's defaults
    assert job.plan.order == "forward" and job.plan.window == 5 and job.plan.count == 2  # 1.2 s = 36 frames = 2 sections of 20

    seen = []
    video = run_job(components, job, seen.append)
    frames, _ = read_mp4(video.output)
    assert len(frames) == video.frames == latents_to_frames(1 + 2 * 5)
    assert sum(1 for e in seen if type(e).__name__ == "StepDone") == 2 * 2  # 2 sections of the family's 2 steps
    assert video.result.latents.shape[2] == 11
