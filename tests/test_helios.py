"""Helios through fpgen equals diffusers' Helios pipelines on tiny random models in the real repos' layout.

Seed convention (as HeliosPipeline with ``generator=torch.Generator("cpu").manual_seed(seed)``):
with a picture, encoding draws first (posterior samples, then the history noise), then each chunk
draws its noise in time order; text-to-video draws only the chunk noise (``fpgen.helios``).
The pipelines clean prompts with ftfy, which is not installed here; the tests replace that one
clean-up step with fpgen's (HTML entities and whitespace), so both sides encode the same text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import rel_l2
from heliosmodels import build_helios_cache
from PIL import Image

import fpgen
from fpgen.config import Settings
from fpgen.events import StepDone
from fpgen.helios import clean_prompt
from fpgen.tensorfile import load_tensors

PROMPT = "a red cat walks on the beach, camera moves slowly"
NEGATIVE = "rain at night"
SIZE = (32, 48)


@pytest.fixture(scope="session")
def helios_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("helios")
    return build_helios_cache(root / "repos", root / "hub")


@pytest.fixture
def helios_offline(helios_cache, monkeypatch):
    import huggingface_hub.constants as constants

    import diffusers.pipelines.helios.pipeline_helios as base_module
    import diffusers.pipelines.helios.pipeline_helios_pyramid as pyramid_module

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(helios_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for module in (base_module, pyramid_module):
        monkeypatch.setattr(module, "prompt_clean", clean_prompt)
    monkeypatch.setattr(pyramid_module.torch.linalg, "cholesky", semidefinite_cholesky(torch.linalg.cholesky))
    return helios_cache


def semidefinite_cholesky(cholesky):
    """The reference's block noise factors a covariance that is singular once rounded to float32 (``fpgen.helios.block_noise``),
    which fails on some CPUs: factor it in float64 with its eigenvalues held at the 1e-8 jitter float32 lost."""

    def factor(matrix, **options):
        values, vectors = torch.linalg.eigh(matrix.double())
        return cholesky(vectors @ torch.diag(values.clamp_min(1e-8)) @ vectors.T, **options).to(matrix.dtype)

    return factor


@pytest.fixture
def helios_base(helios_offline):
    return fpgen.load_models("helios", device="cpu", dtype="float32")


def reference_pipeline(models):
    """The diffusers pipeline for the loaded checkpoint, on the same modules (Mid: CFG-zero*, Distilled: DMD)."""
    from diffusers import HeliosPipeline, HeliosPyramidPipeline

    from fpgen.helios import scheduler_from

    parts = (models.tokenizer, models.text_encoder, models.vae, scheduler_from(models.scheduler_config), models.transformer)
    name = models.files.spec.name
    if name == "helios":
        return HeliosPipeline(*parts)
    return HeliosPyramidPipeline(*parts, is_cfg_zero_star=name == "helios-mid", is_distilled=name == "helios-distilled")


def fpgen_latents(models, tmp_path, image, settings: Settings, on_event=None) -> torch.Tensor:
    latents = tmp_path / "latents.safetensors"
    fpgen.generate_video(models, image, tmp_path / "out.mp4", settings, on_event, save_latents=latents)
    return load_tensors(latents)[0]["latents"]


def test_text_to_video_equals_helios_pipeline(helios_base, tmp_path):
    """Two chunks with real CFG: fpgen's chunk latents equal HeliosPipeline's (its history seed, zeros, comes first)."""
    settings = Settings(prompt=PROMPT, negative_prompt=NEGATIVE, seconds=2.0, seed=11, steps=3, cfg=3.0, size=SIZE)
    ours = fpgen_latents(helios_base, tmp_path, None, settings)
    reference = reference_pipeline(helios_base)(
        prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE[0], width=SIZE[1], num_frames=48, num_inference_steps=3,
        guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(11), output_type="latent",
    ).frames  # fmt: skip
    assert ours.shape == (1, 16, 1 + 18, 4, 6) and reference.shape == (1, 16, 18, 4, 6)
    assert not ours[:, :, 0].any()
    assert rel_l2(ours[:, :, 1:], reference) < 1e-3
    assert rel_l2(ours[:, :, 10:], reference[:, :, :9]) > 0.1  # the chunks differ: the comparison can fail


def test_image_to_video_equals_helios_pipeline(helios_base, tmp_path):
    """A start picture: the noised picture latent in the start slot, the noised held picture as the history seed."""
    picture = (np.random.default_rng(3).random((*SIZE, 3)) * 255).astype(np.uint8)
    settings = Settings(prompt=PROMPT, seconds=1.0, seed=5, steps=2, cfg=1.0, size=SIZE)
    ours = fpgen_latents(helios_base, tmp_path, picture, settings)
    reference = reference_pipeline(helios_base)(
        prompt=PROMPT, image=Image.fromarray(picture), height=SIZE[0], width=SIZE[1], num_frames=24, num_inference_steps=2,
        guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(5), output_type="latent",
    ).frames  # fmt: skip
    assert ours.shape == reference.shape == (1, 16, 1 + 9, 4, 6)
    assert rel_l2(ours, reference) < 1e-3


def test_video_to_video_equals_helios_pipeline(helios_offline, tmp_path, monkeypatch, capsys):
    """`fpgen generate --extend` (in-process CLI, offline) equals HeliosPipeline(video=...) with real CFG.

    Chunks of 3 latents (9 frames) keep the VAE's work small. The video has 8 whole chunks and 5
    frames more: the pipeline encodes all 8 from frame 5 on (and draws for each), fpgen encodes the
    last 7 (what the 19-latent history holds) and drops the first one's draws.
    """
    from fpgen.video import read_mp4, write_mp4

    ramp = np.linspace(0, 1, 8 * 9 + 5)[:, None, None, None]
    pattern = np.random.default_rng(6).random((2, *SIZE, 3))
    write_mp4(tmp_path / "given.mp4", ((pattern[0] * (1 - ramp) + pattern[1] * ramp) * 255).astype(np.uint8), crf=4, fps=24)
    given, _ = read_mp4(tmp_path / "given.mp4")
    monkeypatch.chdir(tmp_path)
    args = ["--extend", "given.mp4", "-p", PROMPT, "--negative-prompt", NEGATIVE, "--cfg", "3", "--seconds", "0.3", "--window", "3", "--seed", "4", "--steps", "2"]
    code = fpgen.cli.run(["generate", "-m", "helios", *args, "--device", "cpu", "--dtype", "float32", "-o", "v2v.mp4", "--save-latents", "v2v.safetensors", "-q"])
    assert code == 0, capsys.readouterr().err
    ours = load_tensors(tmp_path / "v2v.safetensors")[0]["latents"]
    models = fpgen.load_models("helios", device="cpu", dtype="float32")
    reference = reference_pipeline(models)(
        prompt=PROMPT, negative_prompt=NEGATIVE, video=[Image.fromarray(frame) for frame in given], height=SIZE[0], width=SIZE[1], num_frames=9,
        num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(4), output_type="latent", num_latent_frames_per_chunk=3,
    ).frames  # fmt: skip
    assert ours.shape == (1, 16, 1 + 21 + 3, 4, 6) and reference.shape == (1, 16, 24 + 3, 4, 6)
    assert not ours[:, :, 0].any()
    assert rel_l2(ours[:, :, 1:22], reference[:, :, 3:24]) < 1e-3  # the video's noised chunk latents
    assert rel_l2(ours[:, :, 22:], reference[:, :, 24:]) < 1e-3  # the new chunk
    frames, fps = read_mp4(tmp_path / "v2v.mp4")
    assert fps == 24 and len(frames) == len(given) + 9
    assert np.abs(frames[: len(given)].astype(int) - given).mean() < 6  # the video's own frames, kept (re-encoded)


@pytest.mark.parametrize("name", ["helios-mid", "helios-distilled"])
def test_pyramid_stages_equal_helios_pyramid_pipeline(name, helios_offline, tmp_path):
    """Two chunks of text-to-video through three resolution stages; Mid with CFG-zero*, Distilled with DMD steps."""
    models = fpgen.load_models(name, device="cpu", dtype="float32")
    cfg = 4.0 if name == "helios-mid" else 1.0
    settings = Settings(prompt=PROMPT, negative_prompt=NEGATIVE, seconds=2.0, seed=2, steps=2, cfg=cfg, size=(64, 64))
    steps = []
    ours = fpgen_latents(models, tmp_path, None, settings, lambda event: steps.append((event.step, event.steps)) if isinstance(event, StepDone) else None)
    assert steps == [(step, 6) for step in range(1, 7)] * 2  # progress counts every stage's steps: 2 steps x 3 stages per chunk
    # HeliosPyramidPipeline's CFG-zero* calls .view on the transformer's output, which on the CPU is not contiguous
    models.transformer.register_forward_hook(lambda module, args, output: tuple(o.contiguous() for o in output))
    reference = reference_pipeline(models)(
        prompt=PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_frames=48, pyramid_num_inference_steps_list=[2, 2, 2],
        guidance_scale=cfg, generator=torch.Generator("cpu").manual_seed(2), output_type="latent",
    ).frames  # fmt: skip
    assert ours.shape == (1, 16, 1 + 18, 8, 8) and reference.shape == (1, 16, 18, 8, 8)
    assert rel_l2(ours[:, :, 1:], reference) < 1e-3


def test_command_makes_text_to_video_with_latents(helios_cache, tmp_path):
    """`fpgen generate -m helios-distilled` without IMAGE, offline: a 24 fps MP4 of whole chunks and float32 latents in time order."""
    from conftest import run_fpgen

    from fpgen.video import read_mp4

    latents = tmp_path / "t2v.safetensors"
    args = ["-m", "helios-distilled", "-p", PROMPT, "--seconds", "1", "--size", "64x64", "--seed", "9", "--steps", "1", "--device", "cpu", "--dtype", "float32"]
    done = run_fpgen("generate", *args, "-o", tmp_path / "t2v.mp4", "--save-latents", latents, "--json", cache=helios_cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed, described = json.loads(done.stdout), json.loads((tmp_path / "t2v.json").read_text())["video"]
    assert (printed["fps"], printed["frames"], described["fps"], described["seconds"]) == (24, 33, 24, round(33 / 24, 3))
    saved = load_tensors(latents)[0]["latents"]
    assert saved.dtype == torch.float32 and saved.shape == (1, 16, 1 + 9, 8, 8)
    assert not saved[:, :, 0].any() and saved[:, :, 1:].std() > 0.1
    frames, fps = read_mp4(tmp_path / "t2v.mp4")
    assert len(frames) == 33 and frames[0].shape == (64, 64, 3) and fps == 24


@pytest.mark.parametrize(
    ("model", "args", "needles"),
    [
        ("helios", ["--end-image", "end.png"], ["--end-image", "no end-frame mechanism"]),
        ("helios-distilled", ["--step-cache", "teacache"], ["--step-cache", "no step cache"]),
        ("helios-mid", ["--lora", "style.safetensors:1"], ["style.safetensors is a FramePack LoRA", "Helios model"]),
        ("helios", ["start.png", "--extend", "given.mp4"], ["IMAGE with --extend", "own first frame", "drop IMAGE or --extend"]),
        ("framepack", [], ["missing IMAGE", "framepack"]),
    ],
)
def test_what_the_family_lacks_is_a_one_line_error(model, args, needles, helios_cache, tmp_path):
    from conftest import run_fpgen

    from fpgen.lora import Lora, LoraModule, write_lora

    for name in ("end.png", "start.png"):
        Image.new("RGB", (64, 64)).save(tmp_path / name)
    (tmp_path / "given.mp4").write_bytes(b"")
    write_lora(tmp_path / "style.safetensors", Lora({"transformer_blocks.0.attn.to_q": LoraModule(torch.zeros(2, 32), torch.zeros(32, 2), 2.0)}))
    done = run_fpgen("generate", "-m", model, "-p", PROMPT, "-o", tmp_path / "x.mp4", *args, cache=helios_cache, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert all(needle in done.stderr for needle in needles)


def test_finetune_refuses_a_helios_model_in_one_line_before_any_work(helios_cache, tmp_path):
    from conftest import run_fpgen
    from synthetic import make_dataset

    make_dataset(tmp_path / "data", 1, 40)
    done = run_fpgen("finetune", tmp_path / "data", "-m", "helios-distilled", "-o", tmp_path / "run", "--max-steps", "1", cache=helios_cache, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Helios model" in done.stderr and "--model framepack" in done.stderr and not (tmp_path / "run").exists()


def test_fast_mode_runs_helios_without_the_step_cache_it_brings():
    """``--fast`` picks TeaCache; Helios has none, so it takes the rest of fast mode and says so. A cache asked for by name is still refused."""
    from fpgen.config import check_family_inputs, fast_without_step_cache
    from fpgen.errors import InputError
    from fpgen.families import FRAMEPACK, HELIOS_DISTILLED
    from fpgen.spec import JobSpec

    fast = JobSpec.from_options({"output": "x.mp4", "model": "helios-distilled", "fast": True})
    assert fast.settings.step_cache == "teacache"
    spec, notes = fast_without_step_cache(fast, HELIOS_DISTILLED)
    assert spec.fast and spec.settings.step_cache == "none" and len(notes) == 1 and "no step cache" in notes[0]
    check_family_inputs(spec, HELIOS_DISTILLED, has_picture=False)
    assert fast_without_step_cache(fast, FRAMEPACK) == (fast, ())
    named = JobSpec.from_options({"output": "x.mp4", "model": "helios-distilled", "step_cache": "magcache"})
    assert fast_without_step_cache(named, HELIOS_DISTILLED) == (named, ())
    with pytest.raises(InputError, match="no step cache"):
        check_family_inputs(named, HELIOS_DISTILLED, has_picture=False)


def test_fp8_linears_swap_every_helios_block_linear():
    """Fast mode's FP8 swap reaches Helios' ``blocks`` (attention and FFN linears), and the pass stays close to bf16's."""
    from heliosmodels import tiny_transformer

    from fpgen.acceleration import Float8Linear, float8_linears

    torch.manual_seed(0)
    model = tiny_transformer().to(torch.bfloat16).eval()
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 8, 8, dtype=torch.bfloat16), timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 7, model.config.text_dim, dtype=torch.bfloat16))
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0].float()
        swapped = float8_linears(model)
        out = model(**inputs, return_dict=False)[0].float()
    fp8 = [name for name, module in model.named_modules() if isinstance(module, Float8Linear)]
    assert swapped == len(fp8) == 10 * len(model.blocks) and all(name.startswith("blocks.") for name in fp8)
    assert isinstance(model.proj_out, torch.nn.Linear) and 0 < rel_l2(out, expected) < 0.1


@pytest.mark.parametrize("name", ["helios", "helios-distilled"])
def test_a_stopped_job_resumes_to_the_identical_latents(name, helios_offline, tmp_path):
    """Image-to-video stopped after its first chunk, resumed: the generator is replayed past the encoding and chunk draws."""
    from fpgen.api import generate_video, resume_video
    from fpgen.errors import OutOfMemoryError
    from fpgen.events import SectionDone

    models = fpgen.load_models(name, device="cpu", dtype="float32")
    picture = (np.random.default_rng(4).random((64, 64, 3)) * 255).astype(np.uint8)
    settings = Settings(prompt=PROMPT, seconds=2.0, seed=8, steps=2, cfg=1.0, size=(64, 64))
    reference = generate_video(models, picture, tmp_path / "full.mp4", settings)

    def stop_after_first(event):
        if isinstance(event, SectionDone) and event.section.index == 0:
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemoryError):
        generate_video(models, picture, tmp_path / "cut.mp4", settings, on_event=stop_after_first)
    resumed = resume_video(models, tmp_path / "cut.mp4")
    assert resumed.resumed_sections == 1 and resumed.result.latents.shape[2] == 1 + 18
    assert torch.equal(resumed.result.latents, reference.result.latents)


def test_download_fetches_the_five_folders_and_models_lists_them(helios_cache, tmp_path):
    """`fpgen download helios-distilled` against a local Hub: exactly HeliosPipeline's folders, then listed complete."""

    from conftest import run_fpgen
    from hubserver import FakeHub
    from test_download import hub_env

    repos = helios_cache.parent / "repos"
    repo = repos / "BestWishYsh/Helios-Distilled"
    needed = {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()} - {"model_index.json"}
    with FakeHub(repos) as hub:
        env = hub_env(tmp_path / "home", hub.url, tmp_path / "hf" / "hub")
        fetched = run_fpgen("download", "helios-distilled", "--json", env=env, timeout=120)
        assert fetched.returncode == 0, fetched.stderr
        assert {f["path"] for f in json.loads(fetched.stdout)["files"]} == needed
        assert {path.split("/")[0] for path in needed} == {"transformer", "text_encoder", "tokenizer", "vae", "scheduler"}
        listed = run_fpgen("models", "--json", env=env)
    rows = {row["name"]: row for row in json.loads(listed.stdout)["models"]}
    assert rows["helios-distilled"]["complete"] and not rows["helios"]["complete"]


def test_helios_lora_merges_as_diffusers_loads_it(helios_offline, tmp_path):
    """A LoRA in diffusers/peft keys, merged at scale 0.5 as the transformer loads, gives the transformer diffusers' load_lora_weights gives."""
    from diffusers import HeliosPipeline, HeliosTransformer3DModel

    from fpgen.api import Components, find_model
    from fpgen.helios import history_inputs
    from fpgen.lora import Lora, LoraChoice, LoraModule, write_lora
    from fpgen.packing import pack_forward
    from fpgen.runtime import RuntimePlan

    torch.manual_seed(0)
    names = ["blocks.0.attn1.to_q", "blocks.1.attn2.to_v", "blocks.1.ffn.net.2"]
    shapes = {"blocks.0.attn1.to_q": (32, 32), "blocks.1.attn2.to_v": (32, 32), "blocks.1.ffn.net.2": (32, 64)}
    path = write_lora(tmp_path / "helios.safetensors", Lora({n: LoraModule(torch.randn(4, shapes[n][1]), torch.randn(shapes[n][0], 4), 2.0) for n in names}))
    files = find_model("helios")
    runtime = RuntimePlan(torch.device("cpu"), torch.float32, torch.float32, mode="exact", reason="test")
    ours = Components(files, runtime, fpgen.lora.load_loras([LoraChoice(path, 0.5)], "Helios")).load_transformer().transformer
    reference = HeliosTransformer3DModel.from_pretrained(files.paths["transformer"])
    state, metadata = HeliosPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    HeliosPipeline.load_lora_into_transformer(state, transformer=reference, adapter_name="style", metadata=metadata)
    reference.set_adapters(["style"], weights=[0.5])
    context = pack_forward(torch.randn(1, 16, 1, 4, 6), torch.randn(1, 16, 12, 4, 6), 3)
    inputs = {"hidden_states": torch.randn(1, 16, 3, 4, 6), "timestep": torch.tensor([500]), "encoder_hidden_states": torch.randn(1, 7, 32), **history_inputs(context, torch.float32)}
    plain = HeliosTransformer3DModel.from_pretrained(files.paths["transformer"])(**inputs, return_dict=False)[0]
    with torch.no_grad():
        merged, loaded = ours(**inputs, return_dict=False)[0], reference(**inputs, return_dict=False)[0]
    assert rel_l2(merged, loaded) < 1e-5 and rel_l2(merged, plain.detach()) > 1e-2


def test_low_vram_releases_umt5_then_streams_the_transformer(helios_offline, tmp_path, monkeypatch):
    """Low-vram on the CPU: UMT5 streamed and dropped before the transformer loads, the transformer streamed, the same latents."""
    import gc
    import weakref

    from diffusers.hooks import HookRegistry

    from fpgen import helios
    from fpgen.api import Components, find_model
    from fpgen.runtime import RuntimePlan

    phases = []
    stream = helios.stream_module_layers

    def streamed_layers(module, device, **options):
        stream(module, device, **options)
        layers = module.block if hasattr(module, "block") else module.blocks
        hooked = all(HookRegistry.check_if_exists_or_initialize(layer).get_hook("group_offloading") is not None for layer in layers)
        phases.append(f"stream {type(module).__name__}, every layer: {hooked}")

    monkeypatch.setattr(helios, "stream_module_layers", streamed_layers)
    load_transformer = helios.HeliosComponents.load_transformer
    monkeypatch.setattr(helios.HeliosComponents, "load_transformer", lambda self: (phases.append(f"load transformer, UMT5 alive: {umt5() is not None}"), load_transformer(self))[1])
    runtime = RuntimePlan(torch.device("cpu"), torch.float32, torch.float32, mode="low-vram", reason="test")
    streamed = Components(find_model("helios"), runtime).load()
    umt5 = weakref.ref(streamed.text_encoder)
    settings = Settings(prompt=PROMPT, negative_prompt=NEGATIVE, seconds=0.1, window=1, seed=3, steps=2, cfg=2.0, size=SIZE)  # chunks of one frame: little VAE work
    gc.disable()  # only the release's own collection may free UMT5
    try:
        low = fpgen_latents(streamed, tmp_path / "low", None, settings)
    finally:
        gc.enable()
    assert phases == ["stream UMT5Stack, every layer: True", "load transformer, UMT5 alive: False", "stream HeliosTransformer3DModel, every layer: True"]
    resident = fpgen_latents(fpgen.load_models("helios", device="cpu", dtype="float32"), tmp_path / "resident", None, settings)
    assert low.shape == (1, 16, 1 + 2, 4, 6) and torch.equal(low, resident)
