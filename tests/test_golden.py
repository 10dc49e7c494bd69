"""The engine reproduces the official implementation's outputs (../shared/golden), through the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CASES, GOLDEN, rel_l2, run_fpgen
from helpers import offline_hub
from safetensors.torch import load_file

import fpgen
from fpgen.buckets import load_image
from fpgen.packing import pack_section, window_bounds
from enginejob import prepare

from fpgen.spec import Settings
from fpgen.engine import generate_frames
from fpgen.video import read_mp4


def settings_of(case: dict) -> Settings:
    return Settings(
        prompt=case["prompt"], negative_prompt=case["n_prompt"], seconds=case["seconds"], seed=case["seed"],
        steps=case["steps"], window=case["latent_window_size"], distilled_guidance=case["gs"], cfg=case["cfg"],
        guidance_rescale=case["rs"], step_cache="teacache" if case["use_teacache"] else "none", size=tuple(case["bucket"]),
    )  # fmt: skip


def tolerance(case: dict) -> float:
    return 2e-2 if case.get("bf16") else 1e-3


def model_name(case: dict) -> str:
    return {"i2v": "framepack", "f1": "framepack-f1"}[case["model"]]


@pytest.fixture(scope="module")
def loaded(hf_cache):
    """Models per (model, dtype), loaded once from the offline HF cache."""
    cache = {}

    def get(case):
        key = (model_name(case), "bfloat16" if case.get("bf16") else "float32")
        if key not in cache:
            cache[key] = fpgen.load_models(key[0], device="cpu", dtype=key[1])
        return cache[key]

    with offline_hub(hf_cache):
        yield get


@pytest.mark.parametrize("name", sorted(CASES))
def test_api_reproduces_golden(name, loaded):
    case, golden = CASES[name], load_file(GOLDEN / f"{name}.safetensors")
    models, settings = loaded(case), settings_of(case)
    image = load_image(GOLDEN / case["image"])

    job, inputs = prepare(models, image, settings)
    # The golden stores the embeddings in the transformer's dtype (bf16 in the bf16 case).
    as_transformer = (lambda t: t.to(torch.bfloat16)) if case.get("bf16") else (lambda t: t)
    assert torch.equal(inputs.positive.mask, golden["prompt_embeds_mask"])
    assert rel_l2(as_transformer(inputs.positive.embeds), golden["prompt_embeds"]) < 1e-5
    assert rel_l2(as_transformer(inputs.positive.pooled), golden["prompt_poolers"]) < 1e-5
    assert rel_l2(as_transformer(inputs.image_embeds), golden["image_embeddings"]) < 1e-5
    if case["cfg"] != 1:
        assert rel_l2(as_transformer(inputs.negative.embeds), golden["negative_prompt_embeds"]) < 1e-5

    pieces = []
    result = generate_frames(models, inputs, job.plan, job.settings, lambda frames, start: pieces.append((start, frames)), step_cache=job.step_cache)
    assert result.plan.count == case["sections"]
    for section in result.plan.sections:
        i = section.index
        begin, end = window_bounds(section.slot, result.plan.window)
        assert rel_l2(result.latents[:, :, begin:end], golden[f"section{i}.generated"]) < tolerance(case), f"section {i}"
        assert result.transformer_passes[i] == int(golden[f"section{i}.transformer_passes"])
        # The context the section saw, rebuilt by the packing module from the finished video's latents.
        context = pack_section(result.plan.order, result.latents, section, result.plan.window)
        assert context.indices.latents.tolist() == golden[f"section{i}.latent_indices"][0].tolist()
        assert context.indices.clean.tolist() == golden[f"section{i}.clean_latent_indices"][0].tolist()
        assert context.indices.clean_2x.tolist() == golden[f"section{i}.clean_latent_2x_indices"][0].tolist()
        assert context.indices.clean_4x.tolist() == golden[f"section{i}.clean_latent_4x_indices"][0].tolist()
        for ours, theirs in [(context.clean, "clean_latents"), (context.clean_2x, "clean_latents_2x"), (context.clean_4x, "clean_latents_4x")]:
            expected = golden[f"section{i}.{theirs}"]
            assert ours.shape == expected.shape
            assert (ours - expected).abs().max() <= tolerance(case) * max(expected.abs().max().item(), 1e-6), theirs

    starts = [start for start, _ in sorted(pieces, key=lambda p: p[0])]
    pixels = torch.cat([frames for _, frames in sorted(pieces, key=lambda p: p[0])], dim=2)
    assert starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:]))
    assert list(pixels.shape) == case["pixel_shape"]
    assert rel_l2(pixels, golden["pixels"]) < tolerance(case)


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of the luma plane: yuv420p halves chroma resolution, which noise-like tiny-model frames do not survive."""
    weights = np.array([0.299, 0.587, 0.114])
    mse = np.mean((a.astype(np.float64) @ weights - b.astype(np.float64) @ weights) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_reproduces_golden(name, hf_cache, tmp_path):
    case, golden = CASES[name], load_file(GOLDEN / f"{name}.safetensors")
    h, w = case["bucket"]
    out, latents = tmp_path / "video.mp4", tmp_path / "latents.safetensors"
    args = [
        "generate", GOLDEN / case["image"], "--prompt", case["prompt"], "--negative-prompt", case["n_prompt"],
        "--seconds", case["seconds"], "--seed", case["seed"], "--steps", case["steps"], "--window", case["latent_window_size"],
        "--distilled-guidance", case["gs"], "--cfg", case["cfg"], "--guidance-rescale", case["rs"],
        "--step-cache", "teacache" if case["use_teacache"] else "none", "--model", model_name(case), "--size", f"{h}x{w}",
        "--crf", case["crf"], "-o", out, "--save-latents", latents, "--device", "cpu",
        "--dtype", "bfloat16" if case.get("bf16") else "float32", "--json",
    ]  # fmt: skip
    proc = run_fpgen(*args, cache=hf_cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] == case["pixel_shape"][2] and report["output"] == str(out)

    frames, fps = read_mp4(out)
    assert fps == case["fps"]
    assert frames.shape == (case["pixel_shape"][2], h, w, 3)
    expected = (golden["pixels"].float().clamp(-1, 1) * 127.5 + 127.5).to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    assert luma_psnr(frames, expected) > 32  # lossy H.264 at CRF 16 on top of the exact pixels
    assert luma_psnr(frames[1:], expected[:-1]) < 25  # and a one-frame shift would show

    saved = load_file(latents)["latents"]
    assert saved.dtype == torch.float32 and saved.shape[2] == 1 + case["sections"] * case["latent_window_size"]
    order = range(case["sections"] - 1, -1, -1) if case["model"] == "i2v" else range(case["sections"])
    in_time = torch.cat([golden[f"section{i}.generated"] for i in order], dim=2)
    assert rel_l2(saved[:, :, 1:], in_time) < tolerance(case)
    assert not list(tmp_path.glob("*.job")), "the job folder is cleaned up after success"
