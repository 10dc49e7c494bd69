"""Host memory and quantization on full-size random models (issue 17), in under 4 minutes on an H200.

    python benchmarks/bench_memory.py --out benchmarks/results/h200-memory-DATE.json
    python benchmarks/bench_memory.py --tiny --models /tmp/tiny --assets DIR --out /tmp/m.json   # CPU smoke run

1. Low-vram, today's way and streamed, each a one-section job (``--steps``, 640 bucket, 6 GiB GPU cap)
   in a fresh process: blocks pinned in host memory (``lowvram_s_per_frame``) against blocks read
   from the memory-mapped checkpoint (``--ram-budget 16``: ``lowvram_streamed_s_per_frame``,
   ``lowvram_host_own_gib``). Host memory is sampled from /proc/PID/smaps by bench_job's sampler:
   "own" is everything but the model files' mapped pages (those are page cache on a user's disk; the
   benchmark keeps the files in /dev/shm). Both eager (``--no-compile``) to fit the time.
2. Each ``--quantize`` kind against bf16: the transformer alone loaded resident through fpgen's loader,
   one step at the job's shapes: ``peak_reserved_gib``, ``s_per_step`` (median of 2 after a warm-up),
   ``rel_l2_vs_bf16`` of the step's output.

On the CPU (``--tiny``) the pinned run is the plain block stack (no pinned memory without CUDA), the
streamed one the same ``MappedBlockStack`` as on the GPU, so their latents must match bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_job import ASSETS, GIB, Results, default_models_dir, job_settings, model_dir, rel_l2, run_job, step_inputs  # noqa: E402
from bench_step import fpgen_call, timed  # noqa: E402

from fpgen.hub import find_model  # noqa: E402
from fpgen.loading import Components  # noqa: E402
from fpgen.offload import release_cached_memory  # noqa: E402
from fpgen.runtime import RuntimePlan, plan_runtime  # noqa: E402
from fpgen.spec import RuntimeRequest  # noqa: E402
from fpgen.tensorfile import load_tensors, save_tensors  # noqa: E402

JOB = Path(__file__).resolve().with_name("bench_job.py")
QUANTIZATIONS = ("bf16", "int8", "fp8", "nf4")


def lowvram_plan(files, streaming: str) -> RuntimePlan:
    """Low-vram with the blocks ``streaming`` ("pinned" or "mapped") as ``plan_runtime`` chooses it from the RAM budget."""
    if not torch.cuda.is_available():  # smoke run: the CPU's block stacks (see the module docstring)
        return RuntimePlan(torch.device("cpu"), torch.float32, torch.float32, "exact", "smoke run", streaming="mapped" if streaming == "mapped" else None)
    ram = 16.0 if streaming == "mapped" else 4096.0
    plan = plan_runtime(RuntimeRequest(dtype="bfloat16", low_vram=True, compile=False, ram_budget=ram), files.paths["transformer"])
    assert plan.streaming == streaming, plan.describe()
    return plan


def lowvram_child(args):
    """One low-vram job in this (fresh) process, its host memory sampled from another."""
    host = args.work / f"host_{args.streaming}.json"
    host.unlink(missing_ok=True)
    command = [sys.executable, str(JOB), "--part", "host-memory", "--pid", str(os.getpid()), "--models", str(args.models), "--out", str(host)]
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # never holds the parent's pipes open
    try:
        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(args.cap_gib * GIB / torch.cuda.get_device_properties(0).total_memory)
        files = find_model("framepack", args.models)
        plan = lowvram_plan(files, args.streaming)
        print(plan.describe(), flush=True)
        started = time.perf_counter()
        components = Components(files, plan).load()
        load_s = time.perf_counter() - started
        job = run_job(components, job_settings(args), args.work / f"lowvram_{args.streaming}.mp4", args.streaming)
        save_tensors(args.work / f"lowvram_{args.streaming}.safetensors", {"latents": job["latents"]})
        time.sleep(1.0)  # one more sample of the job's end
    finally:
        sampler.terminate()
        sampler.wait()
    result = dict(job["result"], load_s=load_s, mode=plan.describe())
    result["host"] = json.loads(host.read_text()) if host.exists() else None
    print("LOWVRAM " + json.dumps(result), flush=True)


def child(args, streaming: str) -> dict:
    command = [sys.executable, __file__, "--part", "lowvram-child", "--streaming", streaming, "--models", str(args.models), "--work", str(args.work),
               "--cap-gib", str(args.cap_gib), "--seconds", str(args.seconds), "--steps", str(args.steps)] + (["--size", args.size] if args.size else [])  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-3000:], proc.stderr[-3000:], flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LOWVRAM ")]
    return json.loads(lines[-1][len("LOWVRAM ") :]) if lines else {"error": proc.stderr[-600:]}


def lowvram(args, results: dict):
    runs = {streaming: child(args, streaming) for streaming in ("pinned", "mapped")}
    results["lowvram_runs"] = runs
    if all("error" not in run for run in runs.values()):
        pinned, mapped = runs["pinned"], runs["mapped"]
        results["lowvram_s_per_frame"] = pinned["s_per_frame"]
        results["lowvram_streamed_s_per_frame"] = mapped["s_per_frame"]
        results["lowvram_streamed_vs_pinned"] = mapped["s_per_frame"] / pinned["s_per_frame"]
        results["lowvram_host_own_gib"] = (mapped["host"] or {}).get("peak_own_gib")
        results["lowvram_pinned_host_own_gib"] = (pinned["host"] or {}).get("peak_own_gib")
        latents = [load_tensors(args.work / f"lowvram_{name}.safetensors")[0]["latents"] for name in ("pinned", "mapped")]
        results["lowvram_streamed_latents_rel_l2"] = rel_l2(latents[1], latents[0])


def quantized_step(args, kind: str) -> tuple[dict, torch.Tensor]:
    """The transformer alone, resident, weights ``kind``: its memory and one step's time and output."""
    files = find_model("framepack", args.models)
    cuda = torch.cuda.is_available()
    quantize = None if kind == "bf16" else kind
    request = RuntimeRequest(dtype="bfloat16", compile=False, quantize=quantize)
    plan = plan_runtime(request, files.paths["transformer"])
    if cuda:
        release_cached_memory(plan.device)
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    components = Components(files, plan).load_transformer()
    load_s = time.perf_counter() - started
    x, cond, context = step_inputs(plan.device)
    sigma = torch.tensor([0.8], device=plan.device)
    with torch.no_grad():
        seconds, out = timed(lambda: fpgen_call(components.transformer, x, sigma, cond, context, components.blocks), warmup=1, reps=2)
    result = {"s_per_step": seconds, "load_s": load_s, "mode": plan.describe()}
    if cuda:
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
    components = None  # the transformer goes before the next kind loads
    release_cached_memory(plan.device)
    return result, out.float().cpu()


def quantizations(args, results: dict):
    outputs, table = {}, {}
    for kind in QUANTIZATIONS:
        try:
            table[kind], outputs[kind] = quantized_step(args, kind)
            table[kind]["rel_l2_vs_bf16"] = rel_l2(outputs[kind], outputs["bf16"])
        except Exception as error:  # one kind failing (a kernel missing on this GPU) keeps the others
            table[kind] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        print(kind, json.dumps(table[kind]), flush=True)
        results["quantization"] = table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["all", "lowvram", "quantization", "lowvram-child"], default="all")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--models", type=Path, default=default_models_dir())
    parser.add_argument("--assets", type=Path, default=ASSETS, help="tokenizer, tokenizer_2 and feature_extractor folders for writing --models")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fpgen-bench-memory"))
    parser.add_argument("--cap-gib", type=float, default=6.0)
    parser.add_argument("--seconds", type=float, default=1.0, help="job length: 1 s is one section")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", default=None, help="HxW instead of the 640 bucket (smoke runs)")
    parser.add_argument("--streaming", choices=["pinned", "mapped"], default="pinned")
    parser.add_argument("--out", type=Path, default=Path(f"benchmarks/results/h200-memory-{time.strftime('%Y-%m-%d')}.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part == "lowvram-child":
        return lowvram_child(args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results = Results(args.out, device=device, torch=torch.__version__, steps=args.steps, seconds=args.seconds, compile=False)
    started = time.perf_counter()
    model_dir(args.models, args.tiny, args.assets)
    results["write_models_s"] = time.perf_counter() - started
    if args.part in ("all", "lowvram"):
        lowvram(args, results)
    if args.part in ("all", "quantization"):
        quantizations(args, results)
    results["total_s"] = time.perf_counter() - started
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
