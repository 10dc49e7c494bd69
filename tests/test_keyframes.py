"""--keyframe and --prompt-blend on the tiny models: which latents reach which section, which embeddings each section sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import GOLDEN
from helpers import assert_one_line_error

from fpgen.buckets import load_image, resize_and_center_crop
from fpgen.conditioning import encode_latents
from fpgen.engine import generate_frames
from fpgen.errors import ExitCode
from fpgen.events import SectionStarted
from fpgen.packing import window_bounds
from fpgen.pixels import picture_to_pixels
from fpgen.plan import Section, plan_sections
from fpgen.config import resolve
from fpgen.spec import JobSpec, Settings
from enginejob import prepare

SIZE = (32, 32)
IMAGE = GOLDEN / "input.png"


@pytest.fixture
def key_picture(tmp_path):
    """Another picture than the start (it upside down, colours rotated), as a file."""
    picture = np.ascontiguousarray(np.flip(load_image(IMAGE), axis=0)[:, :, [1, 2, 0]])
    path = tmp_path / "key.png"
    Image.fromarray(picture).save(path)
    return path, picture


def run(models, settings, **options):
    started = []
    job, inputs = prepare(models, IMAGE, settings, **options)
    result = generate_frames(models, inputs, job.plan, job.settings, lambda f, s: None, lambda e: started.append(e) if isinstance(e, SectionStarted) else None)
    return job, result, {e.section.slot: e for e in started}


def latent_of(models, picture):
    return encode_latents(models.vae, picture_to_pixels(resize_and_center_crop(picture, *SIZE)))


def test_keyframe_original_model(tiny_models, key_picture):
    models, (path, picture) = tiny_models("framepack"), key_picture
    settings = Settings(prompt="she turns", seconds=2.4, steps=1, size=SIZE)  # 2 sections of 1.2 s
    job, result, started = run(models, settings, keyframe=(f"1.3:{path}",))
    assert job.notes == ("keyframe at 1.3s snaps to the section boundary at 1.20s",)
    assert "  keyframe at 1.20s (the end of section 1)" in job.describe()
    key = latent_of(models, picture)
    first = started[0]  # the section ending at 1.2 s, made last
    assert first.section.index == 1
    assert torch.equal(first.context.clean[:, :, 1:2], key)  # its nearest future frame (1x slot) is the keyframe
    assert first.context.indices.clean[1] == first.context.indices.latents[-1] + 1
    after = window_bounds(1, 9)[0]  # the frames made after the boundary follow it
    assert torch.equal(first.context.clean_2x, result.latents[:, :, after : after + 2])
    assert torch.equal(first.context.clean_4x[:, :, :7], result.latents[:, :, after + 2 :])
    assert torch.count_nonzero(first.context.clean_4x[:, :, 7:]) == 0
    assert torch.count_nonzero(started[1].context.clean[:, :, 1:]) == 0  # the video's end arrives nowhere: no end picture


def test_keyframe_f1_is_pinned(tiny_models, key_picture):
    models, (path, picture) = tiny_models("framepack-f1"), key_picture
    settings = Settings(prompt="she turns", seconds=2.4, steps=1, size=SIZE)
    _, result, started = run(models, settings, keyframe=(f"1.2:{path}",))
    key = latent_of(models, picture)
    assert torch.equal(started[0].context.clean[:, :, 2:3], key) and started[0].context.indices.clean.tolist() == [0, 19, 29]
    assert torch.equal(result.latents[:, :, 9:10], key)  # the first section's last latent frame is pinned to it
    assert (result.latents[:, :, 8:9] - key).abs().mean() > 0.5  # (the frame before it is the model's own)
    assert started[1].context.clean.shape[2] == 2  # the last section arrives nowhere (no end picture)
    assert torch.equal(started[1].context.clean[:, :, 1:2], key)  # and continues from the keyframe


def test_keyframe_at_the_end_is_the_end_picture(tiny_models, key_picture, tmp_path):
    models = tiny_models("framepack")
    spec = JobSpec(tmp_path / "out.mp4", Settings(seconds=2.4, size=SIZE), image=IMAGE, model=models.files.spec.name, keyframe=(f"2.4s:{key_picture[0]}",))
    job = resolve(spec, loaded=models)
    assert job.pictures.keyframes == () and np.array_equal(job.pictures.end, key_picture[1])


@pytest.mark.parametrize(
    ("keyframe", "needles"),
    [
        ("soon", ["--keyframe 'soon' is not TIME:IMAGE"]),
        ("-1:key.png", ["is not TIME:IMAGE"]),
        ("2:missing.png", ["image not found", "missing.png"]),
        ("0.2:key.png", ["snaps to 0.00s, outside the video's section boundaries"]),
        ("9:key.png", ["snaps to 9.60s, outside"]),
    ],
)
def test_bad_keyframe(keyframe, needles, cli, tmp_path, key_picture):
    assert_one_line_error(cli("generate", IMAGE, "--keyframe", keyframe, "--seconds", "2.4", "-o", "out.mp4"), ExitCode.USAGE, *needles)
    assert not (tmp_path / "out.mp4.job").exists()


def test_prompt_blend_weights():
    plan = plan_sections(6, 9, "inverted", prompts=("a", "a", "b", "b", "b", "c"), prompt_blend=2)
    mixes = [plan.prompt_mix(Section(0, slot, 0)) for slot in range(6)]
    assert mixes == [("a", "a", 1.0), ("a", "a", 1.0), ("a", "b", 1 / 3), ("a", "b", 2 / 3), ("b", "b", 1.0), ("b", "c", 1 / 3)]
    assert {plan_sections(3, 9, "forward", prompts=("a", "b", "b")).prompt_mix(Section(0, s, 0)) for s in range(1, 3)} == {("b", "b", 1.0)}


def test_prompt_blend_embeddings(tiny_models):
    models = tiny_models("framepack-f1")
    settings = Settings(prompt="0s: a man walks | 1.2s: a dog runs", seconds=2.4, steps=1, size=SIZE, prompt_blend=2)
    job, inputs = prepare(models, IMAGE, settings)
    started = []
    generate_frames(models, inputs, job.plan, job.settings, lambda f, s: None, lambda e: started.append(e) if isinstance(e, SectionStarted) else None)
    walk, dog = inputs.prompts["a man walks"], inputs.prompts["a dog runs"]
    assert len(started) == 2
    for event, weight in zip(started, (0.0, 1 / 3)):  # every weight of a longer blend: test_prompt_blend_weights
        expected = walk.embeds + weight * (dog.embeds - walk.embeds)
        torch.testing.assert_close(event.conditioning.prompt_embeds, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(event.conditioning.pooled, walk.pooled + weight * (dog.pooled - walk.pooled), rtol=0, atol=1e-6)
        assert torch.equal(event.conditioning.prompt_mask, walk.mask | dog.mask if weight else walk.mask)
    assert not torch.equal(walk.embeds, dog.embeds)


def test_keyframes_in_a_prompts_file(tmp_path):
    from fpgen.cli.generate import job_options

    (tmp_path / "story.txt").write_text("0s: a man walks in\n2.4s: keyframe: sit.png\n2.4s: he sits down\n")
    options = job_options({"prompt": "", "prompts_file": tmp_path / "story.txt", "keyframe": ["1:wave.png"]})
    assert options["prompt"] == "0s: a man walks in\n2.4s: he sits down"
    assert options["keyframe"] == ["1:wave.png", f"2.4:{tmp_path / 'sit.png'}"]
    assert job_options({"prompt": "a man | keyframe: x", "keyframe": []})["prompt"] == "a man | keyframe: x"  # not timed: a plain prompt


def test_keyframes_survive_a_resume(tmp_path):
    from fpgen.conditioning import JobInputs, PromptEmbedding
    from fpgen.jobfolder import load_inputs, save_inputs

    prompt = PromptEmbedding(torch.ones(1, 4, 2), torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 3), 4, False)
    keyframes = {1: torch.randn(1, 16, 1, 4, 4), 3: torch.randn(1, 16, 1, 4, 4)}
    save_inputs(tmp_path / "inputs.safetensors", JobInputs(np.zeros((32, 32, 3), np.uint8), torch.zeros(1, 16, 1, 4, 4), torch.zeros(1, 2, 3), prompt, None, keyframes=keyframes))
    loaded = load_inputs(tmp_path / "inputs.safetensors").keyframes
    assert loaded.keys() == keyframes.keys() and all(torch.equal(loaded[b], keyframes[b]) for b in keyframes)


def test_helios_refuses_keyframes(key_picture, tmp_path):
    from fpgen.config import check_family_inputs
    from fpgen.errors import InputError
    from fpgen.families import HELIOS

    spec = JobSpec(tmp_path / "out.mp4", image=IMAGE, model="helios", keyframe=(f"1.2:{key_picture[0]}",))
    with pytest.raises(InputError, match="--keyframe: helios has no end-frame mechanism"):
        check_family_inputs(spec, HELIOS, False)
