"""Whole 5-second jobs at the 640 bucket with full-size random models: baseline, exact, fast, low-vram.

    python benchmarks/bench_job.py --part resident --out results/job_resident.json   # load, steps, exact job, warm start, baseline job, VAE
    python benchmarks/bench_job.py --part lowvram-fast --exact-latents exact_latents.safetensors --out results/job_fast.json  # fast, low-vram
    python benchmarks/bench_job.py --part summary --raw job_resident.json job_fast.json --out results/h200-DATE.json  # the issue's keys
    python benchmarks/bench_job.py --part lowvram --out results/job_lowvram.json     # low-vram under a 6 GiB cap
    python benchmarks/bench_job.py --part lowvram-exact --out results/job_ratio.json # low-vram, then exact, both cold
    python benchmarks/bench_job.py --part stepcaches --budget-s 500 --out results/job_stepcaches.json  # fast mode: MagCache, FBCache, TeaCache, a profile
    python benchmarks/bench_job.py --part resident --tiny --size 32x32 --seconds 5 --steps 1 --models /tmp/tiny --assets DIR --out /tmp/r.json  # CPU smoke run

``--assets`` holds the ``tokenizer``, ``tokenizer_2`` and ``feature_extractor`` folders written beside the
random models (tests/test_benchmarks.py copies the golden repos' ones; default ``.bench/assets``).

The models are written once as a ``--model-dir`` folder and loaded through fpgen's own loader
(``Components`` placed by ``plan_runtime``), so the load time is the real one. A job is
``fpgen.generate_video`` on a square picture (bucket 640x608), 5 s (4 sections, 145 frames), 25
steps, MP4 included, model loading excluded. The exact and fast modes run with what loading
attaches: the runtime plan's attention backend (FlashAttention-3, FP8 in the fast mode, where it is
installed on Hopper), compiled blocks and VAE tile reuse. The baseline is the official arithmetic as
the official demo runs it: eager, diffusers' own SDPA attention processor, the VAE as diffusers
decodes (no tile reuse).

``--part stepcaches`` loads the fast mode once and runs the same job with each step cache (none,
then by value: magcache, fbcache, a profile of one fast step, teacache); ``--budget-s`` skips what
would not finish in time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fullsize  # noqa: E402
from bench_step import fpgen_call, official_call, section_inputs, sync, timed  # noqa: E402

from fpgen.api import generate_video  # noqa: E402
from fpgen.config import resolve, step_cache_key  # noqa: E402
from fpgen.events import SectionDone, SectionStarted, StepDone  # noqa: E402
from fpgen.hub import find_model  # noqa: E402
from fpgen.loading import Components, load_vae  # noqa: E402
from fpgen.offload import release_cached_memory  # noqa: E402
from fpgen.plan import SectionPlan  # noqa: E402
from fpgen.run import run_job as run_resolved_job  # noqa: E402
from fpgen.runtime import plan_runtime  # noqa: E402
from fpgen.spec import JobSpec, RuntimeRequest, Settings  # noqa: E402
from fpgen.stepcache import DEFAULT_THRESHOLDS, MagnitudeRecorder, save_calibration  # noqa: E402
from fpgen.tensorfile import load_tensors, save_tensors  # noqa: E402
from fpgen.vae_reuse import reuse_vae_tiles  # noqa: E402

GIB = 2**30
ASSETS = Path(__file__).resolve().parents[1] / ".bench" / "assets"


def picture(size: int = 768) -> np.ndarray:
    """A smooth square test picture (bucket 640x608)."""
    y, x = np.mgrid[0:size, 0:size] / size
    return (np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1) * 255).astype(np.uint8)


def default_models_dir() -> Path:
    """tmpfs when it can hold the ~43 GB of weights (files then load as from a warm HF cache), else /tmp."""
    import shutil

    shm = Path("/dev/shm")
    return shm / "fpgen-bench-models" if shm.is_dir() and shutil.disk_usage(shm).free > 50 * GIB else Path("/tmp/fpgen-bench-models")


def model_dir(root: Path, tiny: bool, assets: Path = ASSETS) -> Path:
    """``root`` holding the benchmark's models, written first when it does not (tokenizers from ``assets``)."""
    if not (root / "lllyasviel/FramePackI2V_HY/config.json").exists():
        started = time.perf_counter()
        fullsize.write_model_dir(root, assets, "cuda" if torch.cuda.is_available() else "cpu", tiny)
        print(f"wrote {root} in {time.perf_counter() - started:.1f} s", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return root


class Results(dict):
    """Written to disk after every stage, so a run cut off by its time limit keeps what it measured."""

    def __init__(self, path: Path, **initial):
        super().__init__(initial)
        self.path = path

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self, indent=1))


class StepClock:
    """Times the transformer part of a job from its step events (sections' decode excluded), and
    notes the prompt's token count (a step measured alone at that count reuses the job's compiled blocks)."""

    def __init__(self):
        self.steps, self.step_time, self.decode_time = 0, 0.0, 0.0
        self.started = self.last = time.perf_counter()
        self.first_step_s, self.prompt_tokens = None, None

    def __call__(self, event):
        now = time.perf_counter()
        if isinstance(event, SectionStarted):
            self.prompt_tokens = int(event.conditioning.prompt_mask.sum())
        elif isinstance(event, StepDone):
            if self.first_step_s is None:  # the encoders, the blocks' compile and one step
                self.first_step_s = now - self.started
            if event.step > 1:  # the first step of a section follows the previous decode
                self.step_time += now - self.last
                self.steps += 1
        elif isinstance(event, SectionDone):
            self.decode_time += now - self.last
        self.last = now


def run_job(components: Components, settings: Settings, out: Path, name: str) -> dict:
    """One job through ``fpgen.generate_video`` (a left-over output or job folder of an earlier run replaced)."""
    clock = StepClock()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    video = generate_video(components, picture(), out, settings, on_event=clock, overwrite=True)
    elapsed = time.perf_counter() - started
    result = {
        "s_per_frame": elapsed / video.frames, "job_s": elapsed, "frames": video.frames, "size": f"{video.height}x{video.width}",
        "s_per_step": clock.step_time / max(clock.steps, 1), "decode_s_per_section": clock.decode_time / video.result.plan.count,
        "transformer_passes": video.result.transformer_passes,
        "skip_rates": video.result.skip_rates,  # random weights say nothing about real skip rates
        "first_step_s": clock.first_step_s, "prompt_tokens": clock.prompt_tokens,
    }  # fmt: skip
    if torch.cuda.is_available():
        result.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB, peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB)
    print(name, json.dumps(result), flush=True)
    return {"result": result, "latents": video.result.latents, "plan": video.result.plan}


def job_settings(args) -> Settings:
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    return Settings(prompt="A person walks through a sunny park, waving at the camera.", seconds=args.seconds, steps=args.steps, size=size)


def saved_latents(path: Path) -> torch.Tensor:
    """A job's latents as an earlier run of this script saved them."""
    return load_tensors(path)[0]["latents"]


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@contextmanager
def official_arithmetic(transformer):
    """The blocks as the official code runs them: eager, diffusers' own SDPA attention processor.

    The loader attached the runtime plan's attention backend and compiled the blocks; both come back
    when the block ends (compiled graphs are dropped, so a later compiled call compiles again).
    """
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

    blocks = (*transformer.transformer_blocks, *transformer.single_transformer_blocks)
    attached = [(block.attn.processor, block._compiled_call_impl) for block in blocks]
    torch._dynamo.reset()
    for block in blocks:
        block.attn.set_processor(HunyuanVideoAttnProcessor2_0())
        block._compiled_call_impl = None
    try:
        yield
    finally:
        for block, (processor, compiled) in zip(blocks, attached):
            block.attn.set_processor(processor)
            block._compiled_call_impl = compiled


def official_step(components: Components, results: dict):
    """The baseline step at the job's shapes: diffusers' forward, eager, SDPA."""
    transformer, device = components.transformer, components.runtime.device
    x, cond, context = step_inputs(device)
    with torch.no_grad(), official_arithmetic(transformer):
        seconds, baseline = timed(lambda: official_call(transformer, x, torch.tensor([0.8], device=device), cond, context))
    results["baseline_step"] = {"s_per_step": seconds}
    return baseline


def step_inputs(device, text_tokens: int | None = None):
    """A section's inputs at the job's shapes (tiny models on the CPU) with ``text_tokens`` prompt tokens (128 on CUDA, 20 on the CPU unless given)."""
    tiny = device.type != "cuda"
    return section_inputs(tiny, device, text_tokens or (20 if tiny else 128))


def mode_step(components: Components, results: dict, name: str, baseline=None, text_tokens: int | None = None):
    """One step at the job's shapes in the runtime plan's mode: the first call (the compile) and the median of 3."""
    transformer, blocks, device = components.transformer, components.blocks, components.runtime.device
    x, cond, context = step_inputs(device, text_tokens)
    sigma = torch.tensor([0.8], device=device)
    with torch.no_grad():
        started = time.perf_counter()
        fpgen_call(transformer, x, sigma, cond, context, blocks)
        first = time.perf_counter() - started
        seconds, out = timed(lambda: fpgen_call(transformer, x, sigma, cond, context, blocks), warmup=1, reps=3)
    results[f"{name}_step"] = {"s_per_step": seconds, "first_call_s": first}
    if baseline is not None:
        results[f"{name}_step"]["rel_l2_vs_baseline"] = rel_l2(out, baseline)
    print(name, "step", json.dumps(results[f"{name}_step"]), flush=True)


def kernel_kind(key: str) -> str:
    """A CUDA kernel's group in a step profile: attention, gemm, quantize (the FP8 casts: per-token and
    per-head amax, scale and clamp; inductor may fuse a norm into them) or other (element-wise)."""
    k = key.lower()
    if "attention" in k or "fmha" in k or "flash" in k or ("cudnn" in k and "sdpa" in k):
        return "attention"
    quantize = "amax" in k or ("clamp" in k and "to_copy" in k) or "float8" in k or "e4m3" in k
    if k.startswith("triton_"):  # inductor's fused element-wise kernels, named after what they feed ("_scaled_mm") too
        return "quantize" if quantize else "other"
    if "gemm" in k or "sm90_xmma" in k or "cutlass" in k or "nvjet" in k or "scaled_mm" in k or "mm" == k:
        return "gemm"
    return "quantize" if quantize else "other"


def profile_step(components: Components, results: dict, name: str, top: int = 14, text_tokens: int | None = None):
    """Where one step's GPU time goes: the top kernels by total time, grouped by ``kernel_kind``; with
    the step's wall time from ``mode_step``, the host gaps are what the kernels leave of it."""
    from torch.profiler import ProfilerActivity, profile

    device = components.runtime.device
    x, cond, context = step_inputs(device, text_tokens)
    sigma = torch.tensor([0.8], device=device)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fpgen_call(components.transformer, x, sigma, cond, context, components.blocks)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        groups[kernel_kind(e.key)] = groups.get(kernel_kind(e.key), 0.0) + e.device_time_total
    step = results.get(f"{name}_step")
    results[f"{name}_profile"] = {
        "gpu_ms": total / 1e3,
        "ms": {k: round(v / 1e3, 1) for k, v in groups.items()},
        "share": {k: round(v / total, 3) for k, v in groups.items()},
        "host_gap_ms": step["s_per_step"] * 1e3 - total / 1e3 if step else None,
        "top": [(e.key[:90], round(e.device_time_total / 1e3, 2), e.count) for e in sorted(events, key=lambda e: -e.device_time_total)[:top]],
    }
    print(name, "profile", json.dumps(results[f"{name}_profile"]), flush=True)


def framepack_components(models: Path, mode: str, compile: bool = True) -> Components:
    """The benchmark's models in ``models`` (a ``--model-dir`` folder) as fpgen's loader places them:
    the runtime plan for ``mode`` on a GPU (exact on the CPU: a smoke run). Nothing is loaded yet."""
    cuda = torch.cuda.is_available()
    request = RuntimeRequest(dtype="bfloat16", fast=cuda and mode == "fast", low_vram=cuda and mode == "low-vram", compile=compile)
    files = find_model("framepack", models)
    return Components(files, plan_runtime(request, files.paths["transformer"]))


def attention_of(components: Components) -> dict:
    """The attention backend the runtime plan gave the blocks, and why."""
    return {"backend": components.runtime.attention, "reason": components.runtime.attention_reason}


def tile_counts(components: Components) -> dict:
    """The VAE tiles the loader's tile cache reused and decoded so far (every decode of the components' VAE)."""
    tiles = reuse_vae_tiles(components.vae)  # attached on load: this returns that cache
    return {"vae_tiles_reused": tiles.hits, "vae_tiles_decoded": tiles.misses}


def plain_vae(components: Components):
    """A fresh copy of the components' VAE, decoding as diffusers does (no tile reuse), placed and tiled as the loader placed the job's."""
    vae = components.vae
    fresh = load_vae(components.paths["vae"], vae.dtype, vae.device)
    if vae.use_tiling:
        fresh.enable_tiling()
    return fresh


def resident(args, results: dict):
    """Load, the baseline and exact steps, the exact job, a warm start, the baseline job, the VAE alone."""
    settings = job_settings(args)
    models = model_dir(args.models, args.tiny, args.assets)  # written before the load is timed
    started = time.perf_counter()
    components = framepack_components(models, "exact").load()
    results["load_s"] = time.perf_counter() - started
    results["attention"] = attention_of(components)
    baseline_step = official_step(components, results)
    mode_step(components, results, "exact", baseline_step)
    if torch.cuda.is_available():
        profile_step(components, results, "exact")
    exact = run_job(components, settings, args.work / "exact.mp4", "exact")
    results["exact"] = {**exact["result"], **tile_counts(components)}
    save_tensors(args.out.with_name("exact_latents.safetensors"), {"latents": exact["latents"]})
    results["warm_start"] = child_result(args, "warm-start", "WARM ")

    components.vae = plain_vae(components)  # the official way: eager, SDPA, the VAE as diffusers decodes
    with official_arithmetic(components.transformer):
        baseline = run_job(components, settings, args.work / "baseline.mp4", "baseline")
    results["baseline"] = baseline["result"]
    results["exact"]["latents_rel_l2_vs_baseline"] = rel_l2(exact["latents"], baseline["latents"])
    results["vae"] = vae_sections(components.vae, exact["latents"], exact["plan"])


def vae_sections(vae, latents: torch.Tensor, plan: SectionPlan) -> dict:
    """Every section's decode of a job (``plan``), as ``vae`` decodes it and then with tile reuse attached:
    seconds and the largest difference."""
    from fpgen.decode import decode_latents, decode_span

    spans = [decode_span(plan, section) for section in plan.sections]

    def decode_all():
        sync()
        started = time.perf_counter()
        frames = [decode_latents(vae, latents[:, :, begin:end]) for begin, end in spans]
        sync()
        return (time.perf_counter() - started) / len(spans), frames

    reference_s, reference = decode_all()
    tiles = reuse_vae_tiles(vae)
    seconds, reused = decode_all()
    return {
        "s_per_section": seconds, "reference_s_per_section": reference_s, "sections": len(spans),
        "rel_l2_vs_reference": max(rel_l2(a, b) for a, b in zip(reused, reference)),
        "identical": all(torch.equal(a, b) for a, b in zip(reused, reference)), "tiles_reused": tiles.hits, "tiles_decoded": tiles.misses,
    }  # fmt: skip


def warm_start_child(args):
    """A new process, compile cache warm: seconds from the transformer's weights loaded to its first step done."""
    components = framepack_components(args.models, "exact")
    device = components.runtime.device
    started = time.perf_counter()
    components.load_transformer()  # with the plan's attention backend, blocks set to compile on their first call
    loaded = time.perf_counter()
    x, cond, context = step_inputs(device)
    with torch.no_grad():
        fpgen_call(components.transformer, x, torch.tensor([0.8], device=device), cond, context, components.blocks)
    sync()
    print("WARM " + json.dumps({"warm_start_s": time.perf_counter() - loaded, "transformer_load_s": loaded - started}), flush=True)


def child_result(args, part: str, marker: str, env: dict | None = None) -> dict:
    """Run ``--part part`` in a fresh process; its result is the JSON on its last line starting with ``marker``."""
    command = [sys.executable, __file__, "--part", part, "--models", str(args.models), "--work", str(args.work), "--cap-gib", str(args.cap_gib),
               "--seconds", str(args.seconds), "--steps", str(args.steps)] + (["--size", args.size] if args.size else [])  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    print(proc.stdout[-4000:], proc.stderr[-4000:], flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    return json.loads(lines[-1][len(marker) :]) if lines else {"error": proc.stderr[-600:]}


def fast_job(args, results: dict):
    """The fast mode as a user gets it: fpgen's own loader in fast mode, FP8 attention, TeaCache on."""
    components = framepack_components(args.models, "fast").load()
    results["fast_attention"] = attention_of(components)
    mode_step(components, results, "fast")
    fast = run_job(components, replace(job_settings(args), step_cache="teacache"), args.work / "fast.mp4", "fast")
    if args.exact_latents and args.exact_latents.exists():
        fast["result"]["latents_rel_l2_vs_exact"] = rel_l2(fast["latents"], saved_latents(args.exact_latents))
    results["fast"] = {**fast["result"], **tile_counts(components)}
    save_tensors(args.out.with_name("fast_latents.safetensors"), {"latents": fast["latents"]})
    del components


def cuda_tensors(top: int = 6) -> dict:
    """What occupies the GPU right now: allocated GiB and the largest live CUDA tensors."""
    import gc

    if not torch.cuda.is_available():
        return {}
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.is_cuda:
                found.append((obj.numel() * obj.element_size() / GIB, tuple(obj.shape), str(obj.dtype)))
        except Exception:
            continue
    found.sort(reverse=True)
    return {"allocated_gib": torch.cuda.memory_allocated() / GIB, "tensors": len(found), "sum_gib": sum(f[0] for f in found), "largest": found[:top]}


def host_memory_peaks(pid: int, models: Path, out: Path, every_s: float = 0.5) -> None:
    """Sample process ``pid``'s host memory until it ends: what it owns (anonymous, pinned) apart
    from the model files' mapped pages, written to ``out`` as JSON after every sample.

    ru_maxrss counts both, and the benchmark's models sit in /dev/shm, whose mapped pages count as
    the process's own; on a user's disk they are the kernel's page cache, reclaimable. A process of
    its own reads /proc/PID/smaps, so the sampling takes no time from the job's Python thread.
    """
    prefix, peaks = str(models.resolve()), {"own": 0, "model_files": 0, "total": 0}
    while True:
        try:
            smaps = Path(f"/proc/{pid}/smaps").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            return
        own = files = 0
        in_models = False
        for line in smaps:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5:  # a mapping's header: address perms offset dev inode [path]
                in_models = len(head) == 6 and head[5].startswith(prefix)
            elif head[0] == "Rss:":
                files, own = (files + int(head[1]), own) if in_models else (files, own + int(head[1]))
        for name, kib in (("own", own), ("model_files", files), ("total", own + files)):
            peaks[name] = max(peaks[name], kib * 1024)
        out.with_suffix(".tmp").write_text(json.dumps({f"peak_{name}_gib": value / GIB for name, value in peaks.items()}))
        out.with_suffix(".tmp").replace(out)  # whole, whenever the job stops the sampler
        time.sleep(every_s)


def time_transformer_load(components: Components) -> list[float]:
    """Seconds spent loading the transformer, appended each time ``components`` loads it (low-vram
    loads it inside the job, when denoising starts)."""
    seconds, load = [], components.load_transformer

    def timed_load():
        started = time.perf_counter()
        loaded = load()
        seconds.append(time.perf_counter() - started)
        return loaded

    components.load_transformer = timed_load
    return seconds


def lowvram_child(args):
    """One low-vram job in a fresh process: the 6 GiB cap is set before anything touches the GPU."""
    host = args.work / "host_memory.json"
    host.unlink(missing_ok=True)
    sampler = subprocess.Popen([sys.executable, __file__, "--part", "host-memory", "--pid", str(os.getpid()), "--models", str(args.models), "--out", str(host)])
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.cap_gib * GIB / total)
    started = time.perf_counter()
    components = framepack_components(args.models, "low-vram").load()
    load_s = time.perf_counter() - started
    print("after load:", json.dumps(cuda_tensors()), flush=True)
    settings = job_settings(args)
    transformer_load = time_transformer_load(components)
    try:
        job = run_job(components, settings, args.work / "lowvram.mp4", "lowvram")["result"]
    except Exception as error:  # the compiled streamed blocks failed: record it, measure the eager ones
        print(f"compiled low-vram job failed: {type(error).__name__}: {error}", flush=True)
        device = components.runtime.device
        del components
        release_cached_memory(device)
        components = framepack_components(args.models, "low-vram", compile=False).load()
        transformer_load = time_transformer_load(components)
        job = run_job(components, settings, args.work / "lowvram.mp4", "lowvram")["result"]
        job["compiled_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    job["load_s_before_job"] = load_s
    job["transformer_load_s_in_job"] = sum(transformer_load)  # low-vram loads it after the Llama has gone
    job["s_per_frame_without_loading"] = (job["job_s"] - job["transformer_load_s_in_job"]) / job["frames"]
    job["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    status = Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").exists() else []
    job["host_now"] = {line.split(":")[0]: line.split(":")[1].strip() for line in status if line.startswith(("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "VmLck", "VmPin"))}
    sampler.terminate()
    sampler.wait()
    job["host_sampled"] = json.loads(host.read_text()) if host.exists() else None
    job["cap_gib"] = args.cap_gib
    print("LOWVRAM " + json.dumps(job), flush=True)


def vae_compile(args, results: dict, started: float, budget_s: float = 300.0):
    """The VAE decode of one section (18 latents), eager against torch.compile'd decoder, if time allows."""
    from fpgen.decode import decode_latents

    if not torch.cuda.is_available() or time.perf_counter() - started > budget_s:
        results["vae_compiled"] = {"skipped": "time budget"}
        return
    vae = fullsize.vae("cuda")
    latents = torch.randn((1, 16, 18, 80, 76), generator=torch.Generator().manual_seed(5))
    eager_s, reference = timed(lambda: decode_latents(vae, latents), warmup=1, reps=2)
    vae.decoder.compile()
    first = time.perf_counter()
    decode_latents(vae, latents)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - first
    seconds, out = timed(lambda: decode_latents(vae, latents), warmup=0, reps=2)
    results["vae_compiled"] = {"eager_s": eager_s, "compiled_s": seconds, "compile_s": compile_s, "rel_l2": rel_l2(out, reference)}


def lowvram(args, results: dict):
    model_dir(args.models, args.tiny, args.assets)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cache = args.work / "inductor-lowvram"  # compiles cold, as the exact job of the same run does
    shutil.rmtree(cache, ignore_errors=True)
    results["lowvram"] = child_result(args, "lowvram-child", "LOWVRAM ", {"TORCHINDUCTOR_CACHE_DIR": str(cache)})


def lowvram_and_exact(args, results: dict):
    """The low-vram job beside the exact job in one run, each loaded and compiled cold."""
    lowvram(args, results)
    started = time.perf_counter()
    components = framepack_components(args.models, "exact").load()
    results["exact_load_s"] = time.perf_counter() - started
    results["attention"] = attention_of(components)
    results["exact"] = run_job(components, job_settings(args), args.work / "exact.mp4", "exact")["result"]
    if "s_per_frame_without_loading" in results["lowvram"]:
        results["lowvram_over_exact"] = results["lowvram"]["s_per_frame_without_loading"] / results["exact"]["s_per_frame"]


def lowvram_and_fast(args, results: dict):
    started = time.perf_counter()
    model_dir(args.models, args.tiny, args.assets)
    fast_job(args, results)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    lowvram(args, results)
    vae_compile(args, results, started)


CALIBRATE_SECONDS = 2.0  # fpgen calibrate's default video length
BY_VALUE = ("magcache", "fbcache", "profile", "teacache")  # what --part stepcaches runs after the no-cache job, most wanted first


class Budget:
    """The part's wall-clock allowance (None: no limit): a stage runs only when its estimate still fits."""

    def __init__(self, seconds: float | None, started: float):
        self.seconds, self.started = seconds, started

    def allows(self, estimate_s: float) -> bool:
        return self.seconds is None or time.perf_counter() - self.started + estimate_s <= self.seconds


def record(results: dict, key: str, value) -> None:
    """Keep one figure and print it at once, so that a run stopped later still has it in its log."""
    results[key] = value
    print(key, json.dumps(value), flush=True)


def calibrate_magcache(components: Components, settings: Settings, out: Path) -> dict:
    """MagCache's ratios for these weights, measured as ``fpgen calibrate`` measures them (the job resolved,
    a ``MagnitudeRecorder`` on the block stack, every pass computed) and stored where ``--step-cache magcache``
    reads them. A video of calibrate's default length with the job's prompt (its shapes compile once for
    every job after it) and another seed (a user calibrates on another video than the one measured)."""
    clock = StepClock()
    spec = replace(JobSpec.from_options({"output": out, "model": components.files.spec.name}), settings=replace(settings, seconds=CALIBRATE_SECONDS, seed=settings.seed + 1))
    job = resolve(spec, overwrite=True, loaded=components, picture=picture())
    if components.blocks is None:
        components.load_transformer()
    recorder = MagnitudeRecorder(job.settings.steps)
    components.blocks.hooks.append(recorder)
    try:
        run_resolved_job(components, job, clock)
    finally:
        components.blocks.hooks.remove(recorder)
    recorder.reset()  # the last section's ratios join the others
    seconds = time.perf_counter() - clock.started
    size = job.pictures.size
    about = {"model": job.spec.model, "steps": job.settings.steps, "window": job.settings.window, "size": f"{size[0]}x{size[1]}", "sections": recorder.sections}
    path = save_calibration(step_cache_key(job.spec, job.model, size), recorder.ratios(), about)
    return {"s": seconds, "first_step_s": clock.first_step_s, "s_per_step": clock.step_time / max(clock.steps, 1), "sections": len(recorder.sections),
            "ratios": [round(r, 4) for r in recorder.ratios()], "path": str(path)}  # fmt: skip


def step_cache_job(components: Components, settings: Settings, cache: str, args, results: dict, reference: torch.Tensor | None = None) -> dict:
    """The job with ``cache`` at its default threshold: its figures under ``stepcache_<cache>_...``
    (latents against ``reference``, the no-cache job's, and ``--exact-latents`` when given), its latents kept."""
    name = f"stepcache_{cache}"
    job = run_job(components, replace(settings, step_cache=cache), args.work / f"{name}.mp4", name)
    results[f"{name}_job"] = {**job["result"], "threshold": DEFAULT_THRESHOLDS.get(cache)}
    record(results, f"{name}_s_per_frame", job["result"]["s_per_frame"])
    record(results, f"{name}_passes_computed", job["result"]["transformer_passes"])
    if reference is not None:
        record(results, f"{name}_latents_rel_l2", rel_l2(job["latents"], reference))
    if args.exact_latents and args.exact_latents.exists():
        record(results, f"{name}_latents_rel_l2_vs_exact", rel_l2(job["latents"], saved_latents(args.exact_latents)))
    save_tensors(args.out.with_name(f"{name}_latents.safetensors"), {"latents": job["latents"]})
    return job


def fast_profile(components: Components, results: dict, text_tokens: int) -> None:
    """One fast step at the jobs' shapes (their prompt's token count: no recompile), timed, then profiled on CUDA."""
    mode_step(components, results, "fast", text_tokens=text_tokens)
    if torch.cuda.is_available():
        profile_step(components, results, "fast", text_tokens=text_tokens)


def step_caches(args, results: dict):
    """The fast mode loaded once; MagCache calibrated on its weights; the job with no step cache, then
    with each cache and a profile of one fast step, by value, while ``--budget-s`` allows.

    A cached job's estimate is the no-cache job's time (a cache computes at most every pass); the
    profile's is the calibration's time to its first step (encoders, a compile in case the step's
    shapes differ from the jobs') and six steps. No exact-mode job runs here: its bf16 weights would
    be a second load and compile (``--exact-latents`` compares with ``--part resident``'s instead).
    """
    budget = Budget(args.budget_s, time.perf_counter())
    settings = job_settings(args)
    models = model_dir(args.models, args.tiny, args.assets)
    started = time.perf_counter()
    components = framepack_components(models, "fast").load()
    record(results, "load_s", time.perf_counter() - started)
    record(results, "fast_attention", attention_of(components))
    stages = [stage for stage in BY_VALUE if stage in args.caches.split(",")]
    if "magcache" in stages:
        record(results, "magcache_calibration", calibrate_magcache(components, settings, args.work / "calibrate.mp4"))
        record(results, "magcache_calibrate_s", results["magcache_calibration"]["s"])
    none = step_cache_job(components, settings, "none", args, results)
    profile_estimate = results.get("magcache_calibration", none["result"])["first_step_s"] + 6 * none["result"]["s_per_step"]
    for stage in stages:
        estimate = profile_estimate if stage == "profile" else none["result"]["job_s"]
        if not budget.allows(estimate):
            record(results, f"{stage}_skipped", f"an estimated {estimate:.0f} s would overrun --budget-s {args.budget_s:.0f}")
            continue
        try:
            if stage == "profile":
                fast_profile(components, results, none["result"]["prompt_tokens"])
            else:
                step_cache_job(components, settings, stage, args, results, none["latents"])
        except Exception as error:  # a cache's first GPU run may fail: the stages after it still run
            traceback.print_exc()
            record(results, f"{stage}_error", f"{type(error).__name__}: {str(error)[:300]}")


SUMMARY = {  # the key: (the run, the path in its JSON)
    "baseline_s_per_step": ("resident", "baseline_step.s_per_step"),
    "exact_s_per_step": ("resident", "exact_step.s_per_step"),
    "exact_rel_l2": ("resident", "exact_step.rel_l2_vs_baseline"),
    "baseline_s_per_frame": ("resident", "baseline.s_per_frame"),
    "exact_s_per_frame": ("resident", "exact.s_per_frame"),
    "exact_latents_rel_l2_vs_baseline": ("resident", "exact.latents_rel_l2_vs_baseline"),
    "fast_s_per_step": ("lowvram-fast", "fast_step.s_per_step"),
    "fast_s_per_frame": ("lowvram-fast", "fast.s_per_frame"),
    "fast_latents_rel_l2": ("lowvram-fast", "fast.latents_rel_l2_vs_exact"),
    "fast_passes_computed": ("lowvram-fast", "fast.transformer_passes"),
    "vae_s_per_section": ("resident", "vae.s_per_section"),
    "vae_reference_s_per_section": ("resident", "vae.reference_s_per_section"),
    "vae_rel_l2_vs_reference": ("resident", "vae.rel_l2_vs_reference"),
    "warm_start_s": ("resident", "warm_start.warm_start_s"),
    "lowvram_s_per_frame": ("lowvram-fast", "lowvram.s_per_frame_without_loading"),
    "lowvram_peak_reserved_gib": ("lowvram-fast", "lowvram.peak_reserved_gib"),
    "attention": ("resident", "attention.backend"),
    "fast_attention": ("lowvram-fast", "fast_attention.backend"),
}


def summary(args, results: dict):
    """The issue's keys, read from a ``--part resident`` and a ``--part lowvram-fast`` run (``--raw``, in that order)."""
    runs = dict(zip(("resident", "lowvram-fast"), (json.loads(path.read_text()) for path in args.raw)))
    results["device"] = runs["resident"]["device"]
    for key, (run, path) in SUMMARY.items():
        value = runs[run]
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        results[key] = value
    if results["fast_latents_rel_l2"] is None and args.exact_latents and args.fast_latents:  # the runs' latents files, compared here
        results["fast_latents_rel_l2"] = rel_l2(saved_latents(args.fast_latents), saved_latents(args.exact_latents))
    results["sources"] = {run: str(path) for run, path in zip(runs, args.raw)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["resident", "lowvram", "lowvram-exact", "lowvram-fast", "stepcaches", "summary", "lowvram-child", "warm-start", "host-memory"], required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--models", type=Path, default=default_models_dir())
    parser.add_argument("--assets", type=Path, default=ASSETS, help="tokenizer, tokenizer_2 and feature_extractor folders for writing --models")
    parser.add_argument("--exact-latents", type=Path, default=None, help="the exact job's latents from --part resident")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fpgen-bench-work"))
    parser.add_argument("--cap-gib", type=float, default=6.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", default=None, help="HxW instead of the 640 bucket (smoke runs)")
    parser.add_argument("--out", type=Path, default=Path("job.json"))
    parser.add_argument("--pid", type=int, default=None, help="the process whose host memory --part host-memory samples")
    parser.add_argument("--fast-latents", type=Path, default=None, help="--part summary: the fast job's latents from --part lowvram-fast")
    parser.add_argument("--raw", type=Path, nargs=2, default=None, help="--part summary: the resident and the lowvram-fast results")
    parser.add_argument("--caches", default=",".join(BY_VALUE), help="--part stepcaches: what runs after the no-cache job (MagCache's calibration only with magcache)")
    parser.add_argument("--budget-s", type=float, default=None, help="--part stepcaches: skip the stages that would end later than this many seconds after the part starts")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part == "lowvram-child":
        return lowvram_child(args)
    if args.part == "warm-start":
        return warm_start_child(args)
    if args.part == "summary":
        return summary(args, Results(args.out))
    if args.part == "host-memory":
        return host_memory_peaks(args.pid, args.models, args.out)
    results = Results(args.out, device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch=torch.__version__, models_dir=str(args.models))
    started = time.perf_counter()
    parts = {"resident": resident, "lowvram": lowvram, "lowvram-exact": lowvram_and_exact, "lowvram-fast": lowvram_and_fast, "stepcaches": step_caches}
    parts[args.part](args, results)
    results["total_s"] = time.perf_counter() - started
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/fpgen-inductor")
    main()
