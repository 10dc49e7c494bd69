"""`fpgen finetune` end to end on the CPU: real MP4s through ffmpeg, the cache, training, resuming, and generating with the result."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HUB, fpgen_env, run_fpgen
from PIL import Image
from safetensors.torch import load_file
from synthetic import BLACK, COLOURS, WHITE, make_clip, make_dataset
from helpers import assert_one_line_error

from fpgen.errors import ExitCode
from fpgen.tensorfile import load_tensors
from fpgen.video import read_mp4

SMALL = ("--size", "64x64", "--window", "3", "--device", "cpu")  # 25-frame clips = 2 sections of 3 latent frames
PROBE_START = (90, 60, 130)


def finetune(cache: Path, *args, timeout: float = 600):
    """Run `fpgen finetune ... --json` on one thread (the tiny models are overhead-bound; threads only contend)."""
    proc = run_fpgen("finetune", *args, "--json", env=fpgen_env(cache, OMP_NUM_THREADS="1"), timeout=timeout)
    return proc, (json.loads(proc.stdout) if proc.returncode == 0 else None)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_tensors(a: Path, b: Path) -> bool:
    left, right = load_file(str(a)), load_file(str(b))
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    """The golden tiny transformer made 128 wide instead of 32 (same modules, names and LoRA targets).

    A 32-wide hidden state cannot even carry one 2x2x16 latent patch (64 values), so no adapter of the
    golden model can learn to denoise: overfitting a single sample, a rank-16 LoRA of it stalls at a
    loss of 0.62, one of this model reaches 0.17. Its weights are random (seeded), like the golden ones.
    """
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    config = json.loads((HUB / "lllyasviel/FramePackI2V_HY/config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")} | {"attention_head_dim": 64, "rope_axes_dim": [16, 24, 24]}
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("wide") / "framepack-wide"
    HunyuanVideoFramepackTransformer3DModel(**config).save_pretrained(folder)
    return folder


def fade_data(folder: Path, end) -> Path:
    for i in range(8):
        make_clip(folder, f"clip{i}", 25, 64, COLOURS[i], end, "the picture fades")
    return folder


def latent_means(latents: torch.Tensor) -> torch.Tensor:
    """(1, channels, frames): the spatial mean of a video's latents after its start frame, what fading changes."""
    return latents.mean(dim=(3, 4))[:, :, 1:]


def test_lora_learns_and_moves_generation_the_trained_way(hf_cache, wide_model, tmp_path_factory):
    """Two LoRAs trained on the same pictures fading to white or to black steer one start picture their own way.

    Measured on the latents generation saves: each generated frame's per-channel means, placed on the
    line from the ground truth of the picture fading to black (-0.5) to that of it fading to white
    (+0.5). The white LoRA's frames must lie further towards white than the black LoRA's, every one.
    """
    root = tmp_path_factory.mktemp("fade")
    common = (*SMALL, "--model", wide_model, "--rank", "16", "--lr", "5e-3", "--max-steps", "200", "--holdout", "1", "--eval-every", "100", "--no-gradient-checkpointing")
    runs = {}
    for name, end in (("white", WHITE), ("black", BLACK)):
        proc, result = finetune(hf_cache, fade_data(root / name, end), "-o", root / f"run-{name}", *common)
        assert proc.returncode == 0, proc.stderr
        runs[name] = result

    white = runs["white"]
    log = rows(root / "run-white" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 201)) and all(isinstance(r["loss"], float) for r in log)
    (start_step, start_loss), *_, (end_step, end_loss) = white["eval_loss"]
    assert (start_step, end_step) == (0, 200)
    assert end_loss < 0.6 * start_loss, white["eval_loss"]  # the held-out clip's loss, at fixed noise and timesteps
    assert rows(root / "run-white" / "eval.jsonl")[-1]["eval_loss"] == end_loss

    probe = root / "probe"
    ground_truth = {}
    from fpgen.conditioning import encode_latents
    from fpgen.loading import load_vae
    from fpgen.pixels import to_pixels

    vae = load_vae(HUB / "hunyuanvideo-community/HunyuanVideo/vae", torch.float32)
    for name, end in (("white", WHITE), ("black", BLACK)):
        frames, _ = read_mp4(make_clip(probe, name, 25, 64, PROBE_START, end, None))
        ground_truth[name] = latent_means(encode_latents(vae, to_pixels(frames)))
    Image.fromarray(frames[0]).save(probe / "start.png")

    generated = {}  # at the guidance the LoRAs were trained with: the tiny model's guidance embedding is random, untrained
    for name in ("white", "black"):
        latents = probe / f"generated-{name}.safetensors"
        proc = run_fpgen(
            "generate", probe / "start.png", "-p", "the picture fades", "--seconds", "0.8", *SMALL, "--model", wide_model, "--steps", "10",
            "--distilled-guidance", "1", "--lora", f"{root / f'run-{name}' / 'lora.safetensors'}:1.0", "-o", probe / f"generated-{name}.mp4",
            "--save-latents", latents, "--json", env=fpgen_env(hf_cache, OMP_NUM_THREADS="1"),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        generated[name] = latent_means(load_file(str(latents))["latents"])

    # Where each generated frame lies on the axis from the black ground truth (-0.5) to the white one (+0.5).
    axis = ground_truth["white"] - ground_truth["black"]
    middle = (ground_truth["white"] + ground_truth["black"]) / 2

    def position(video: str) -> torch.Tensor:
        return ((generated[video] - middle) * axis).sum(dim=1)[0] / axis.square().sum(dim=1)[0]

    lead = position("white") - position("black")  # per generated latent frame
    assert lead.mean() > 0.25 and lead.min() > 0.1, lead


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small") / "clips"
    make_dataset(folder, 4, 25)
    make_clip(folder, "short", 9, 64, COLOURS[0], WHITE, "too short for a section")
    Image.fromarray(read_mp4(folder / "clip00.mp4")[0][0]).save(folder.parent / "start.png")
    return folder


RESUMABLE = (*SMALL, "--rank", "4", "--lr", "1e-3", "--batch-size", "2", "--grad-accum", "2", "--warmup-steps", "15", "--save-every", "10")


def validation_options(data: Path) -> tuple:
    return ("--validate-every", "10", "--validation-image", data.parent / "start.png", "--validation-prompt", "fade", "--validation-seconds", "0.4", "--validation-steps", "2")


@pytest.fixture(scope="module")
def straight_run(hf_cache, small_data, tmp_path_factory):
    """20 steps in one go, with validation videos (which must not disturb training)."""
    output = tmp_path_factory.mktemp("straight") / "run"
    proc, result = finetune(hf_cache, small_data, "-o", output, *RESUMABLE, "--max-steps", "20", *validation_options(small_data))
    assert proc.returncode == 0, proc.stderr
    return output, result


def test_straight_run_outputs(straight_run):
    output, result = straight_run
    assert result["steps"] == 20 and Path(result["weights"]) == output / "lora.safetensors"
    assert result["cache"]["too_short"] == ["short.mp4"]
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-0000010", "step-0000020"]
    assert sorted(p.name for p in (output / "validation").glob("*.mp4")) == ["step-0000000.mp4", "step-0000010.mp4", "step-0000020.mp4"]
    frames, fps = read_mp4(output / "validation" / "step-0000020.mp4")
    assert frames.shape == (13, 64, 64, 3) and fps == 30  # 0.4 s = 1 section of 3 latent frames
    assert [r["lr"] for r in rows(output / "log.jsonl")][:2] == pytest.approx([1e-3 / 15, 2e-3 / 15])


def test_resume_continues_exactly(hf_cache, small_data, straight_run, tmp_path):
    """10 steps, then --resume to 20: the same LoRA, bit for bit, and the same loss curve as 20 steps in one go."""
    output = tmp_path / "run"
    proc, first = finetune(hf_cache, small_data, "-o", output, *RESUMABLE, "--max-steps", "10")
    assert proc.returncode == 0, proc.stderr
    assert first["cache"]["encoders_loaded"] == [] and first["cache"]["videos_encoded"] == 0  # warm cache: no VAE, no text encoder
    proc, second = finetune(hf_cache, small_data, "-o", output, *RESUMABLE, "--max-steps", "20", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert same_tensors(output / "lora.safetensors", straight_run[0] / "lora.safetensors")
    assert [(r["step"], r["loss"]) for r in rows(output / "log.jsonl")] == [(r["step"], r["loss"]) for r in rows(straight_run[0] / "log.jsonl")]

    from fpgen.errors import InputError
    from fpgen.training.config import load_run
    from fpgen.training.checkpoint import check_output

    saved = load_run(output / "run.json")
    with pytest.raises(InputError, match="already holds a training run; pass --resume"):
        check_output(saved, resume=False)
    with pytest.raises(InputError, match="--learning-rate 0.001 -> 0.002"):
        check_output(dataclasses.replace(saved, learning_rate=2e-3), resume=True)


def train_in_process(config, listener):
    """``loop.train`` in this process on one thread, like the `fpgen finetune` children (so its numbers match theirs)."""
    from fpgen.training.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(config, on_event=listener)
    finally:
        torch.set_num_threads(threads)


def signal_at(kind, signals=(signal.SIGINT,), step=None):
    """A listener that sends itself ``signals`` on the first event of type ``kind`` (at ``step`` for Logged): a known moment."""
    sent = []

    def listener(event):
        if isinstance(event, kind) and not sent and getattr(event, "step", step) == step:
            sent.append(event)
            for number in signals:
                signal.raise_signal(number)  # Python runs the handler before raise_signal returns

    return listener


def resumable_config(data: Path, output: Path, **changes):
    """RESUMABLE's settings for 20 steps (the other fields' defaults are the command's: tests/test_training_cli.py)."""
    from fpgen.training.config import TrainConfig

    return TrainConfig(data=data, output=output, size=(64, 64), window=3, device="cpu", rank=4, learning_rate=1e-3, batch_size=2,
                       grad_accum=2, warmup_steps=15, save_every=10, max_steps=20, **changes)  # fmt: skip


def test_stop_at_a_step_leaves_a_checkpoint_that_resumes_exactly(hf_cache, offline_cache, small_data, straight_run, tmp_path):
    """SIGTERM after step 2's log row: the run stops at step 2 with its checkpoint (exit 130), and --resume ends where 20 straight steps do."""
    from fpgen.errors import Interrupted
    from fpgen.training.events import Logged

    output = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        train_in_process(resumable_config(small_data, output), signal_at(Logged, (signal.SIGTERM,), step=2))
    assert stopped.value.exit_code == ExitCode.INTERRUPTED == 130
    assert str(stopped.value) == f"training stopped at step 2; the checkpoint is in {output / 'checkpoints'}; continue with the same command and --resume"
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-0000002"]
    assert [r["step"] for r in rows(output / "log.jsonl")] == [1, 2]

    proc, _ = finetune(hf_cache, small_data, "-o", output, *RESUMABLE, "--max-steps", "20", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert same_tensors(output / "lora.safetensors", straight_run[0] / "lora.safetensors")
    assert [(r["step"], r["loss"]) for r in rows(output / "log.jsonl")] == [(r["step"], r["loss"]) for r in rows(straight_run[0] / "log.jsonl")]


@pytest.mark.parametrize("moment", ["caching", "loaded", "twice"])
def test_stop_before_training_or_at_once_says_what_is_kept(offline_cache, small_data, tmp_path, moment):
    """A stop while clips are encoded, once the model is loaded, or a second signal (at once): exit 130, what is kept, nothing half-written."""
    from fpgen.errors import Interrupted
    from fpgen.training.events import CacheProgress, Logged, Started

    listener = {"caching": signal_at(CacheProgress), "loaded": signal_at(Started), "twice": signal_at(Logged, (signal.SIGINT, signal.SIGINT), step=1)}[moment]
    cache = tmp_path / "cache"
    with pytest.raises(Interrupted) as stopped:
        train_in_process(resumable_config(small_data, tmp_path / "run", cache_dir=cache), listener)
    when = "at once" if moment == "twice" else "before its first step"
    assert stopped.value.exit_code == 130
    assert str(stopped.value) == f"training stopped {when}; kept: the cache entries made so far, in {cache}; run the same command again: the cache is reused"
    entries = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert len(entries) == (1 if moment == "caching" else 5 + 4)  # 5 videos (one too short), 4 captions and not [e for e in entries if e.endswith(".partial")]  # the clip at hand is finished
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_planted_pickle_in_a_checkpoint_is_refused_unrun(hf_cache, small_data, straight_run, tmp_path):
    """A checkpoint holds tensors and JSON only; --resume refuses one with a pickle in it, before loading anything, and never unpickles it."""
    output = tmp_path / "run"
    shutil.copytree(straight_run[0], output)
    checkpoint = output / "checkpoints" / "step-0000020"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["lora.safetensors", "optimizer.safetensors", "rng-0.json", "state.json"]
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 20

    class Payload:
        def __init__(self, marker: Path):
            self.marker = marker

        def __reduce__(self):  # unpickling calls open(marker, "w"): it creates the marker file
            return open, (str(self.marker), "w")

    proof = tmp_path / "unpickling-runs-this"
    pickle.loads(pickle.dumps(Payload(proof)))
    assert proof.is_file()  # the payload is live: loading it would leave its marker
    marker = tmp_path / "payload-ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        (checkpoint / name).write_bytes(pickle.dumps(Payload(marker)))
    proc = run_fpgen("finetune", small_data, "-o", output, *RESUMABLE, *validation_options(small_data), "--max-steps", "30", "--resume", env=fpgen_env(hf_cache))
    assert_one_line_error(proc, ExitCode.USAGE, "custom_checkpoint_0.pkl, random_states_0.pkl", "never pickles", str(checkpoint))
    assert not marker.exists()

    for planted in checkpoint.glob("*.pkl"):  # without them, a checkpoint whose state lacks the schedule is damaged, not a bug
        planted.unlink()
    (checkpoint / "state.json").write_text(json.dumps({"step": 20, "micro_batches": 2}))
    proc = run_fpgen("finetune", small_data, "-o", output, *RESUMABLE, *validation_options(small_data), "--max-steps", "30", "--resume", env=fpgen_env(hf_cache))
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Loading" not in line]
    assert proc.returncode == ExitCode.USAGE and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1] == f"error: the checkpoint {checkpoint} is damaged (KeyError: 'scheduler'); remove that folder to resume from the one before it"


def test_unreadable_clips_are_named_and_skipped(hf_cache, small_data, tmp_path):
    """Two clips ffmpeg cannot read: one warning names both, the others are cached, the command succeeds."""
    data = tmp_path / "clips"
    shutil.copytree(small_data, data, ignore=shutil.ignore_patterns(".fpgen-cache"))
    for name in ("broken", "empty"):
        (data / f"{name}.mp4").write_bytes(os.urandom(2000) if name == "broken" else b"")
        (data / f"{name}.txt").write_text("never read")
    proc, result = finetune(hf_cache, data, "--cache-only", *SMALL, "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert result["cache"]["unreadable"] == ["broken.mp4", "empty.mp4"] and result["clips"] == 4
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: 2 clip(s) cannot be read as video and are skipped: broken.mp4, empty.mp4"]


def test_no_usable_clip_is_one_error(offline_cache, tmp_path):
    from fpgen.errors import InputError
    from fpgen.training.config import TrainConfig
    from fpgen.training.setup import cache_only

    make_clip(tmp_path / "clips", "short", 9, 64, COLOURS[0], WHITE, "too short for a section")
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "clips" / "broken.txt").write_text("never read")
    with pytest.raises(InputError, match=r"none of the 2 clip\(s\) can be trained on: 1 shorter than one section, 1 unreadable; a clip needs at least 13 frames"):
        cache_only(TrainConfig(data=tmp_path / "clips", size=(64, 64), window=3, device="cpu", cache_dir=tmp_path / "cache"))


def test_cache_is_reused_and_invalidated(offline_cache, monkeypatch, tmp_path):
    """The second pass encodes nothing and loads no encoder; a new caption re-runs only the text encoders."""
    from fpgen.hub import find_model
    from fpgen.runtime import RuntimePlan, choose_device
    from fpgen.training import cache
    from fpgen.training.data import discover_clips

    data = tmp_path / "clips"
    for i in range(3):
        make_clip(data, f"clip{i}", 25, 64, COLOURS[i], WHITE, f"caption {i}")
    calls = {"vae": 0, "text": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(cache, "encode_latents", counted("vae", cache.encode_latents))
    monkeypatch.setattr(cache, "encode_prompt", counted("text", cache.encode_prompt))
    model, runtime = find_model("framepack"), RuntimePlan(*choose_device("cpu"))
    built = []

    def build(**settings):
        before = dict(calls)
        options = {"size": (64, 64), "resolution": 640, "window": 3, "max_sections": None} | settings
        cached, _, report = cache.build_cache(discover_clips(data), cache.CacheSettings(**options), model, runtime, data / ".fpgen-cache")
        assert [c.sections for c in cached] == [options["max_sections"] or 2] * 3
        built.append(cached)
        return report, {k: calls[k] - before[k] for k in calls}

    report, work = build()
    assert (report.videos_encoded, report.texts_encoded, work) == (3, 3, {"vae": 6, "text": 3})  # each clip, and its first frame alone
    assert report.loaded == ["vae", "image_encoder", "text_encoders"]

    # The start latent and the image embeddings are what generation computes from the clip's first frame.
    import fpgen
    from enginejob import prepare

    first_frame = read_mp4(data / "clip0.mp4")[0][0]
    _, inputs = prepare(fpgen.load_models("framepack", device="cpu"), first_frame, fpgen.Settings(prompt="caption 0", size=(64, 64)))
    cached, _ = load_tensors(built[0][0].video)
    assert torch.equal(cached["start_latent"], inputs.start_latent) and torch.equal(cached["image_embeds"], inputs.image_embeds)
    assert not torch.allclose(cached["latents"][:, :, :1], inputs.start_latent, atol=1e-3)  # the clip's own first latent is not
    files = sorted((data / ".fpgen-cache").rglob("*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in files]

    report, work = build()
    assert (report.videos_reused, report.texts_reused, work, report.loaded) == (3, 3, {"vae": 0, "text": 0}, [])  # no encoder even loaded
    assert [f.stat().st_mtime_ns for f in files] == stamps

    (data / "clip1.txt").write_text("a new caption")
    report, work = build()
    assert (report.videos_encoded, report.texts_encoded, work, report.loaded) == (0, 1, {"vae": 0, "text": 1}, ["text_encoders"])

    make_clip(data, "clip2", 25, 64, COLOURS[5], BLACK, "caption 2")  # same name, other pictures
    report, work = build()
    assert (report.videos_encoded, report.texts_encoded, work["vae"]) == (1, 0, 2)

    report, work = build(max_sections=1)  # settings are part of the key
    assert (report.videos_encoded, work["vae"]) == (3, 6)


def test_full_finetune_is_a_model_generate_loads(hf_cache, small_data, offline_cache, tmp_path):
    output = tmp_path / "full"
    proc, result = finetune(hf_cache, small_data, "-o", output, *SMALL, "--full", "--model", "framepack-f1", "--max-steps", "3", "--lr", "1e-3", "--save-every", "0")
    assert proc.returncode == 0, proc.stderr
    assert Path(result["weights"]) == output and not (output / "checkpoints").exists()  # --save-every 0: the result only
    assert json.loads((output / "fpgen.json").read_text()) == {"order": "forward", "base_model": "framepack-f1", "steps": 3}

    resumed = tmp_path / "full-resumed"  # 2 steps, then --resume the third: every weight as in 3 steps at once
    for steps, again in (("2", ()), ("3", ("--resume",))):
        proc, _ = finetune(hf_cache, small_data, "-o", resumed, *SMALL, "--full", "--model", "framepack-f1", "--max-steps", steps, "--lr", "1e-3", "--save-every", "2", *again)
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (resumed / "checkpoints" / "step-0000002").iterdir()) == ["model.safetensors", "optimizer.safetensors", "rng-0.json", "state.json"]
    assert same_tensors(resumed / "diffusion_pytorch_model.safetensors", output / "diffusion_pytorch_model.safetensors")

    import fpgen
    from fpgen.loading import load_transformer

    models = fpgen.load_models(str(output), device="cpu")  # what `fpgen generate --model DIR` does
    assert models.family.sections.name == "forward"  # from fpgen.json: the folder's name says nothing
    base = load_transformer(HUB / "lllyasviel/FramePack_F1_I2V_HY_20250503", torch.float32)
    changed = [name for (name, a), b in zip(models.transformer.state_dict().items(), base.state_dict().values()) if not torch.equal(a, b)]
    assert "transformer_blocks.0.attn.to_q.weight" in changed and "x_embedder.proj.weight" in changed  # every weight trains
    video = fpgen.generate_video(models, small_data.parent / "start.png", tmp_path / "v.mp4", fpgen.Settings(seconds=0.4, window=3, steps=2, size=(64, 64)))
    assert video.frames == 13 and video.output.is_file()


@pytest.mark.parametrize(("full", "save_every", "free_gb", "needle"), [
    (True, 250, 100.0, "a checkpoint of this run takes 120.0 GB and its result 20.0 GB, and OUT has 100.0 GB free"),  # 10e9 weights: 4 + 8 bytes each, bf16 result
    (True, 0, 19.0, "the result takes 20.0 GB, and OUT has 19.0 GB free"),
    (False, 250, 130.0, "a checkpoint of this run takes 120.0 GB and its result 40.0 GB, and OUT has 130.0 GB free"),  # a LoRA's result is float32
    (True, 250, 140.5, None),
])  # fmt: skip
def test_a_run_refuses_a_disk_its_checkpoint_cannot_fit(tmp_path, monkeypatch, full, save_every, free_gb, needle):
    from types import SimpleNamespace

    from fpgen.errors import InputError
    from fpgen.training import checkpoint
    from fpgen.training.config import TrainConfig

    trainee = SimpleNamespace(parameters=[torch.empty(1).expand(10**9) for _ in range(10)])  # 10e9 weights, no memory
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: SimpleNamespace(free=free_gb * 1e9))
    config = TrainConfig(data=tmp_path, output=tmp_path / "OUT", full=full, save_every=save_every)
    if needle is None:
        checkpoint.check_room(tmp_path / "OUT", trainee, config, "bf16")
        return
    with pytest.raises(InputError) as error:
        checkpoint.check_room(tmp_path / "OUT", trainee, config, "bf16")
    assert error.value.message.replace(str(tmp_path / "OUT"), "OUT") == needle
    assert ("--save-every 0" in error.value.hint) == bool(save_every)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"max_steps": 0}, "--max-steps must be at least 1"),
        ({"full": True, "fp8_base": True}, "--fp8-base cannot be combined with --full"),
        ({"optimizer": "sgd"}, "unknown --optimizer"),
        ({"validate_every": 5}, "--validate-every needs --validation-image"),
        ({"gradient_checkpointing": False, "offload_activations": True}, "--offload-activations needs --gradient-checkpointing"),
        ({"fp8_base": True, "mixed_precision": "no"}, "--fp8-base computes in bf16"),
        ({"holdout": -1}, "--holdout must not be negative"),
    ],
)
def test_bad_settings(options, needle, tmp_path):
    from fpgen.errors import InputError
    from fpgen.training.config import TrainConfig

    with pytest.raises(InputError, match=needle):
        TrainConfig(data=tmp_path, output=tmp_path / "run", **options).validate()


def test_bad_input_ends_in_one_line(small_data, tmp_path):
    assert_one_line_error(run_fpgen("finetune", small_data, "-o", tmp_path / "run", "--size", "65x64"), ExitCode.USAGE, "multiples of 16")
    (tmp_path / "clips").mkdir()
    make_clip(tmp_path / "clips", "a", 25, 64, COLOURS[0], WHITE, None)
    assert_one_line_error(run_fpgen("finetune", tmp_path / "clips", "-o", tmp_path / "run"), ExitCode.USAGE, "have no caption: a.mp4", "a.txt")
    assert not (tmp_path / "run").exists()


def test_eight_bit_adam_needs_bitsandbytes(monkeypatch, tmp_path):
    from fpgen.errors import InputError
    from fpgen.training.config import TrainConfig
    from fpgen.training.setup import make_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails, as when it is not installed
    with pytest.raises(InputError, match="needs bitsandbytes.*pip install bitsandbytes"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(data=tmp_path, output=tmp_path, optimizer="adamw8bit"))


def test_bad_data(tmp_path):
    from fpgen.errors import InputError
    from fpgen.training.config import TrainConfig
    from fpgen.training.data import discover_clips
    from fpgen.training.checkpoint import check_output
    from fpgen.training.loop import train

    with pytest.raises(InputError, match="training data not found"):
        train(TrainConfig(data=tmp_path / "nothing", output=tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # a run that cannot start leaves nothing behind
    folder = tmp_path / "clips"
    make_clip(folder, "a", 25, 64, COLOURS[0], WHITE, None)
    with pytest.raises(InputError, match="have no caption: a.mp4; .* a.txt"):
        discover_clips(folder)
    listing = tmp_path / "clips.jsonl"
    listing.write_text(json.dumps({"video": "clips/missing.mp4", "caption": "x"}) + "\n")
    with pytest.raises(InputError, match="entry 1: video not found"):
        discover_clips(listing)
    with pytest.raises(InputError, match="--output is required"):
        check_output(TrainConfig(data=folder), resume=False)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not an empty folder"):
        check_output(TrainConfig(data=folder, output=taken), resume=False)
    with pytest.raises(InputError, match="nothing to resume"):
        check_output(TrainConfig(data=folder, output=taken), resume=True)
    assert (taken / "notes.txt").read_text() == "mine"


def test_clips_listed_in_jsonl_and_csv(tmp_path):
    from fpgen.training.data import discover_clips

    make_clip(tmp_path / "videos", "a", 25, 64, COLOURS[0], WHITE, None)
    (tmp_path / "list.jsonl").write_text(json.dumps({"video": "videos/a.mp4", "caption": " it fades "}) + "\n\n")
    (tmp_path / "list.csv").write_text('video,caption\nvideos/a.mp4,"it fades, slowly"\n')
    assert [(c.video, c.caption) for c in discover_clips(tmp_path / "list.jsonl")] == [((tmp_path / "videos/a.mp4").resolve(), "it fades")]
    assert [c.caption for c in discover_clips(tmp_path / "list.csv")] == ["it fades, slowly"]


def test_benchmark_script_runs_tiny(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", str(tmp_path / "r.json"), "--steps", "1", "--warmup", "0", "--configs", "bf16,fp8,fp8+offload"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["runs"]) == {"bf16", "fp8", "fp8+offload"}
    assert all(run["loss_finite"] and run["s_per_step"] > 0 for run in result["runs"].values())
    assert "fp8+offload" in proc.stdout
