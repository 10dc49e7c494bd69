"""Training samples are the inference steps of the official code, and the training pieces behave as documented."""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, GOLDEN
from safetensors.torch import load_file

from fpgen.training.cache import CachedClip
from fpgen.training.config import TrainConfig
from fpgen.training.data import Clip, usable_sections
from fpgen.training.objective import EVAL_TIMESTEPS, sample_timesteps, shift_timesteps
from fpgen.training.samples import BatchOrder, build_batch, epoch_batches, layout_key, sample_refs, seeded
from fpgen.training.setup import lr_factor


def golden_video(case: dict, golden: dict) -> torch.Tensor:
    """The case's whole video in time order (start latent first), from what the official sampler produced."""
    sections = [golden[f"section{i}.generated"] for i in range(case["sections"])]
    if case["model"] == "i2v":
        sections = sections[::-1]  # the official inverted loop makes the end of the video first
    return torch.cat([golden["section0.clean_latents"][:, :, :1], *sections], dim=2)


@pytest.mark.parametrize("name", ["i2v_two_sections", "i2v_six_sections", "f1_three_sections"])
def test_training_samples_equal_the_official_inference_steps(name):
    """Teacher forcing on the official output rebuilds exactly the context the official code packed at each step."""
    case, golden = CASES[name], load_file(GOLDEN / f"{name}.safetensors")
    order = "inverted" if case["model"] == "i2v" else "forward"
    window = case["latent_window_size"]
    video = golden_video(case, golden)
    stored = {"video": {"latents": video, "start_latent": video[:, :, :1], "image_embeds": golden["image_embeddings"]},
              "text": {"prompt_embeds": golden["prompt_embeds"][:, : int(golden["prompt_embeds_mask"].sum())], "pooled": golden["prompt_poolers"]}}  # fmt: skip
    clips = [CachedClip(Clip(GOLDEN / "x.mp4", case["prompt"], "x"), "video", "text", tuple(case["bucket"]), case["sections"])]
    refs = sample_refs(clips, window, order)
    assert [r.section.index for r in refs] == list(range(case["sections"]))
    for i, ref in enumerate(refs):
        batch = build_batch([ref], clips, window, order, load=stored.__getitem__)
        prefix = f"section{i}."
        assert torch.equal(batch.latents, golden[prefix + "generated"])
        assert torch.equal(batch.context.clean, golden[prefix + "clean_latents"])
        assert torch.equal(batch.context.clean_2x, golden[prefix + "clean_latents_2x"])
        assert torch.equal(batch.context.clean_4x, golden[prefix + "clean_latents_4x"])
        assert batch.context.indices.latents.tolist() == golden[prefix + "latent_indices"][0].tolist()
        assert batch.context.indices.clean.tolist() == golden[prefix + "clean_latent_indices"][0].tolist()
        assert batch.context.indices.clean_2x.tolist() == golden[prefix + "clean_latent_2x_indices"][0].tolist()
        assert batch.context.indices.clean_4x.tolist() == golden[prefix + "clean_latent_4x_indices"][0].tolist()
        assert torch.equal(batch.cond.prompt_embeds[batch.cond.prompt_mask], golden["prompt_embeds"][golden["prompt_embeds_mask"]])


def test_data_order_is_a_pure_function_of_the_seed():
    keys = [("a", 0)] * 5 + [("b", 1)] * 4 + [("a", 2)] * 3
    epoch = epoch_batches(keys, 2, seed=7, epoch=0)
    assert sorted(i for batch in epoch for i in batch) == list(range(12))  # every sample once per epoch
    assert all(len({keys[i] for i in batch}) == 1 for batch in epoch)  # a batch never mixes layouts
    assert epoch == epoch_batches(keys, 2, seed=7, epoch=0)
    assert epoch != epoch_batches(keys, 2, seed=7, epoch=1) and epoch != epoch_batches(keys, 2, seed=8, epoch=0)
    order = BatchOrder(keys, 2, seed=7)
    assert order(3) == (0, epoch[3]) and order(order.per_epoch) == (1, epoch_batches(keys, 2, 7, 1)[0])
    assert torch.equal(torch.randn(4, generator=seeded(7, 3, 11)), torch.randn(4, generator=seeded(7, 3, 11)))
    assert not torch.equal(torch.randn(4, generator=seeded(7, 3, 11)), torch.randn(4, generator=seeded(7, 3, 12)))


def test_layout_keys_separate_sizes_and_paddings():
    clips = [CachedClip(Clip(GOLDEN, "", "a"), "v", "t", (64, 64), 3), CachedClip(Clip(GOLDEN, "", "b"), "v", "t", (64, 80), 1)]
    refs = sample_refs(clips, 3, "inverted")
    assert [layout_key(clips, r) for r in refs] == [((64, 64), 2), ((64, 64), 1), ((64, 64), 0), ((64, 80), 0)]


def test_timesteps_follow_the_shifted_logit_normal():
    t = sample_timesteps(200_000, 3.0, torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    # sigmoid(N(0,1)) has median 0.5; the shift moves it to 3*0.5/(1+2*0.5) = 0.75
    assert abs(t.median().item() - 0.75) < 0.005
    assert torch.allclose(shift_timesteps(torch.tensor(EVAL_TIMESTEPS), 1.0), torch.tensor(EVAL_TIMESTEPS))


def test_learning_rate_schedules():
    assert [lr_factor(s, 4, 10, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(4, 4, 10, "linear") == 1.0 and lr_factor(10, 4, 10, "linear") == 0.0
    assert lr_factor(7, 4, 10, "cosine") == pytest.approx(0.5)


def test_sections_of_a_clip():
    assert usable_sections(37, 9, None) == 1 and usable_sections(36, 9, None) == 0 and usable_sections(200, 9, None) == 5
    assert usable_sections(200, 9, 2) == 2


def test_resume_refuses_other_settings():
    saved = TrainConfig(data=GOLDEN, output=GOLDEN, learning_rate=1e-4)
    assert TrainConfig(data=GOLDEN, output=GOLDEN, learning_rate=1e-4, max_steps=5000, save_every=10).differences(saved) == []
    assert TrainConfig(data=GOLDEN, output=GOLDEN, learning_rate=2e-4).differences(saved) == ["--learning-rate 0.0001 -> 0.0002"]
    cosine = TrainConfig(data=GOLDEN, output=GOLDEN, lr_scheduler="cosine")
    assert TrainConfig(data=GOLDEN, output=GOLDEN, lr_scheduler="cosine", max_steps=2000).differences(cosine) == ["--max-steps 1000 -> 2000"]
