"""Scaling over several GPUs, in one command: LoRA training with DDP and `fpgen generate --jobs --gpus N`.

    bash benchmarks/on_device.sh python3 benchmarks/multi_gpu.py --out $OUT/multi.json   # GPU box (carry .whl and .bench)
    python benchmarks/multi_gpu.py --tiny --out multi.json                               # CPU smoke run: tiny models, gloo, CPU workers

For N in 1, 2 and all the GPUs (deduplicated; ``--counts``):

- train: ``torchrun --nproc_per_node N`` of this script's ``--train-worker``: each rank builds the
  full-size transformer on its GPU with the same random weights (``train_step.build_model``), adds
  fpgen's LoRA (rank 32, default targets) and gradient checkpointing, and steps exactly as
  ``fpgen finetune`` does: accelerate's ``prepare`` (DDP across ranks), ``accumulate_gradients``,
  clipping, AdamW, the loss all-reduce; batch 1 per GPU, a 640-bucket section at window 9
  (``train_step.make_batch``). It reports s/step (median of the timed steps on rank 0),
  samples/s = N / (s/step), and each rank's peak memory allocated and reserved by PyTorch.
- generate: ``python -m fpgen generate --jobs FILE --gpus N`` on the full-size random models written
  as a ``--model-dir`` folder (``bench_job.model_dir``), with ``--jobs-per-gpu`` jobs per GPU (so each
  run takes about as long; s/frame is comparable across N). A job is short (``--gen-seconds``: one
  section; ``--gen-steps`` steps, fewer than the default 25) to fit the 10-minute limit. It reports
  the wall time of the whole command (worker start, model loading and compiling included), the
  frames made, s/frame = wall / frames, each job's time, the jobs per worker, and each GPU's peak
  memory.used as nvidia-smi reports it (CUDA contexts included), sampled every 0.5 s.

Stages run in the order 1 GPU, all GPUs, then 2 (train before generate), each only if its estimated
time fits what is left of ``--budget-s`` ("skipped: time" otherwise); the model folder is written on
the last GPU while the 1-GPU training runs. Results go to ``--out`` after every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
SRC = BENCHMARKS.parent / "src"
sys.path[:0] = [str(BENCHMARKS), str(SRC)]

GIB = 2**30
PROMPT = "A person walks through a sunny park, waving at the camera."


def subprocess_env(**extra) -> dict:
    """This process's environment with fpgen's src/ and benchmarks/ importable (torchrun workers, fpgen's CLI).

    NVLink multicast stays off unless the environment says otherwise (the GPU box asks for that).
    """
    path = os.pathsep.join(filter(None, [str(SRC), str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    no_multicast = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    return {**no_multicast, **os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


# ---------------------------------------------------------------------------------------------- train (one rank)


def train_worker(args) -> None:
    """One rank of the DDP LoRA step under torchrun; rank 0 writes every rank's figures to ``--result``."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from train_step import FULL, TINY, build_model, make_batch

    from fpgen.training.adapters import add_lora, trainable_parameters
    from fpgen.training.config import TrainConfig
    from fpgen.training.memory import enable_checkpointing
    from fpgen.training.objective import Batch, FlowMatchingLoss
    from fpgen.training.loop import accumulate_gradients

    accelerator = Accelerator(cpu=args.tiny, mixed_precision="bf16")
    device, cuda = accelerator.device, accelerator.device.type == "cuda"
    model_config = TINY if args.tiny else FULL
    height, width = (int(v) for v in args.train_size.split("x"))
    started = time.perf_counter()
    model = build_model(model_config, device, torch.bfloat16)  # seeded: every rank holds the same weights
    add_lora(model, args.rank, args.rank, None, seed=0)
    enable_checkpointing(model, offload=False)
    parameters = trainable_parameters(model)
    objective, optimizer = accelerator.prepare(FlowMatchingLoss(model.train(), guidance=1.0), torch.optim.AdamW(parameters, lr=1e-4))
    built = time.perf_counter() - started
    target, _, _, cond, context = make_batch(model_config, height, width, args.window, args.prompt_tokens, device)
    batch, config = Batch(target, context, cond), TrainConfig(data=Path("."))  # the trainer's defaults: shift, seed, clipping

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for step in range(args.warmup + args.steps):  # one `fpgen finetune` optimizer step, as trainer.train runs it
        step_started = time.perf_counter()
        total, _ = accumulate_gradients(accelerator, objective, step, config, lambda n: (0, batch))
        accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(accelerator.reduce(total, "mean").item())  # waits for the GPU
        if step >= args.warmup:
            times.append(time.perf_counter() - step_started)
    mine = {"rank": accelerator.process_index, "device": str(device), "s_per_step": round(statistics.median(times), 3), "step_times": [round(t, 3) for t in times], "build_s": round(built, 1)}
    if cuda:
        mine.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated(device) / GIB, 2), peak_reserved_gib=round(torch.cuda.max_memory_reserved(device) / GIB, 2))
    ranks = gather_object([mine])
    if accelerator.is_main_process:
        s_per_step = ranks[0]["s_per_step"]
        result = {"processes": accelerator.num_processes, "s_per_step": s_per_step, "samples_per_s": round(accelerator.num_processes / s_per_step, 3),
                  "loss_finite": all(v == v and abs(v) != float("inf") for v in losses), "ranks": ranks}  # fmt: skip
        Path(args.result).write_text(json.dumps(result))
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- measuring from outside


class GpuMemory(threading.Thread):
    """Each GPU's peak memory.used (nvidia-smi: everything on it, CUDA contexts included), sampled every 0.5 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks: dict[int, int] = {}  # nvidia-smi index -> MiB
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return  # no nvidia-smi (the CPU smoke run)
            for line in out.splitlines():
                index, used = line.split(",")
                if used.strip().isdigit():  # not "[N/A]"
                    self.peaks[int(index)] = max(self.peaks.get(int(index), 0), int(used))

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()

    def gib(self, count: int) -> dict[str, float] | None:
        """GiB on the first ``count`` GPUs: the ones torchrun's ranks and fpgen's workers take (CUDA_VISIBLE_DEVICES unset)."""
        return {f"gpu{i}": round(mib / 1024, 2) for i, mib in sorted(self.peaks.items()) if i < count} or None


def run_command(command: list[str], timeout: float, **env) -> tuple[subprocess.CompletedProcess | None, float, str]:
    """Run ``command`` in a process group of its own, stopped on timeout: SIGTERM first, so that torchrun stops its
    ranks (they run in sessions of their own) and fpgen its workers, then SIGKILL to what is left of the group.

    Returns (the finished process, or None on timeout; wall seconds; the tail of its stderr).
    """
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(**env), process_group=0)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
        return None, time.perf_counter() - started, stderr[-3000:]
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), time.perf_counter() - started, stderr[-3000:]


def failure(proc, wall: float, stderr: str) -> dict:
    return {"error": f"timed out after {wall:.0f} s" if proc is None else f"exit code {proc.returncode}", "stderr_tail": stderr}


# ---------------------------------------------------------------------------------------------- stages


def train(n: int, args, timeout: float) -> dict:
    result_file = args.work / f"train-{n}.json"
    result_file.unlink(missing_ok=True)
    forwarded = ["--train-size", args.train_size, "--window", str(args.window), "--rank", str(args.rank), "--prompt-tokens", str(args.prompt_tokens),
                 "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--tiny"] if args.tiny else [])  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), __file__, "--train-worker", "--result", str(result_file), *forwarded]
    with GpuMemory() as memory:
        proc, wall, stderr = run_command(command, timeout, **({"OMP_NUM_THREADS": "1"} if args.tiny else {}))
    if proc is None or proc.returncode or not result_file.exists():
        return failure(proc, wall, stderr)
    return {**json.loads(result_file.read_text()), "wall_s": round(wall, 1), "nvidia_smi_peak_used_gib": memory.gib(n)}


def generate(n: int, args, models: Path, timeout: float) -> dict:
    from bench_job import picture
    from PIL import Image

    folder = args.work / f"generate-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    Image.fromarray(picture()).save(folder / "start.png")
    lines = [{"image": str(folder / "start.png"), "prompt": PROMPT, "output": str(folder / f"job-{k}.mp4"), "seed": k} for k in range(args.jobs_per_gpu * n)]
    (folder / "jobs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = [sys.executable, "-m", "fpgen", "generate", "--jobs", str(folder / "jobs.jsonl"), "--gpus", str(n), "--model-dir", str(models), "--json",
               "--seconds", str(args.gen_seconds), "--steps", str(args.gen_steps)] + (["--size", args.gen_size] if args.gen_size else []) + (["--device", "cpu"] if args.tiny else [])  # fmt: skip
    with GpuMemory() as memory:
        proc, wall, stderr = run_command(command, timeout)
    summary = next((json.loads(line) for line in reversed(proc.stdout.splitlines()) if line.startswith('{"jobs"')), None) if proc else None
    if summary is None:
        return failure(proc, wall, stderr)
    jobs = summary["jobs"]
    frames = sum(job["frames"] or 0 for job in jobs)
    seen, later = set(), []  # the jobs after each worker's first (which compiles): a warm worker's pace
    for job in (job for job in jobs if job["status"] == "done"):  # file order: each worker's jobs in the order it took them
        if job["worker"] in seen:
            later.append(job)
        seen.add(job["worker"])
    later_frames = sum(job["frames"] for job in later)
    result = {"jobs": len(jobs), "done": summary["done"], "failed": summary["failed"], "frames": frames, "wall_s": round(wall, 1),
              "s_per_frame": round(wall / frames, 4) if frames else None, "job_s": [job["elapsed"] for job in jobs],
              "later_jobs_s_per_frame_per_gpu": round(sum(job["elapsed"] for job in later) / later_frames, 4) if later_frames else None,
              "jobs_per_worker": summary["workers"] or {"(one process)": len(jobs)}, "nvidia_smi_peak_used_gib": memory.gib(n)}  # fmt: skip
    if summary["failed"]:
        result["errors"] = sorted({job["error"] for job in jobs if job["error"]})[:3]
    return result


def start_model_writer(args, gpus: int) -> subprocess.Popen:
    """Write the full-size random models as a --model-dir folder in a process of its own, on the last GPU."""
    log = open(args.work / "write-models.log", "w")
    command = [sys.executable, __file__, "--write-models", str(args.models)] + (["--tiny"] if args.tiny else [])
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(**({"CUDA_VISIBLE_DEVICES": str(gpus - 1)} if gpus else {})))


def counts_in_order(spec: str, most: int) -> list[int]:
    """The GPU counts to measure, deduplicated: 1 and the most first (the figures that matter if time runs out), then the others."""
    counts = sorted({most if item == "max" else int(item) for item in spec.split(",")} & set(range(1, most + 1)))
    return sorted(counts, key=lambda n: (n != 1, n != most, n))


def summary_table(results: dict) -> str:
    def missing(stage: dict) -> str:
        return "skipped" if "skipped" in stage else "error" if "error" in stage else "-"

    rows = [f"{'GPUs':>4} | {'train samples/s':>15} {'x':>5} {'s/step':>7} {'reserved GiB':>12} | {'gen s/frame':>11} {'x':>5} {'wall s':>7} {'frames':>6} {'used GiB':>9}"]
    train, gen = results.get("train", {}), results.get("generate", {})
    base_t, base_g = train.get("1", {}).get("samples_per_s"), gen.get("1", {}).get("s_per_frame")
    for key in sorted(set(train) | set(gen), key=int):
        t, g = train.get(key, {}), gen.get(key, {})
        t_mem = max((r["peak_reserved_gib"] for r in t.get("ranks", []) if "peak_reserved_gib" in r), default=None)
        g_mem = max((g.get("nvidia_smi_peak_used_gib") or {}).values(), default=None)
        t_x = f"{t['samples_per_s'] / base_t:.2f}" if base_t and "samples_per_s" in t else "-"
        g_x = f"{base_g / g['s_per_frame']:.2f}" if base_g and g.get("s_per_frame") else "-"
        rows.append(f"{key:>4} | {t.get('samples_per_s', missing(t)):>15} {t_x:>5} {t.get('s_per_step', '-'):>7} {t_mem if t_mem is not None else '-':>12} | "
                    f"{g.get('s_per_frame') or missing(g):>11} {g_x:>5} {g.get('wall_s', '-'):>7} {g.get('frames', '-'):>6} {g_mem if g_mem is not None else '-':>9}")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("multi.json"))
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: gloo ranks and CPU workers (a smoke test of this script)")
    parser.add_argument("--counts", default="1,2,max", help="GPU counts; max = every GPU (--tiny: --cpu-workers)")
    parser.add_argument("--cpu-workers", type=int, default=2, help="--tiny: the most processes")
    parser.add_argument("--budget-s", type=float, default=530.0, help="stop starting stages that would end after this (the device allows 600 s a command)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fpgen-multi"))
    parser.add_argument("--models", type=Path, default=None, help="the --model-dir folder [default: bench_job's, in /dev/shm when it fits]")
    train_args = parser.add_argument_group("train")
    train_args.add_argument("--train-size", default=None, help="HxW [default: 640x608, the 640 bucket of a square picture; --tiny 64x64]")
    train_args.add_argument("--window", type=int, default=9)
    train_args.add_argument("--rank", type=int, default=32)
    train_args.add_argument("--prompt-tokens", type=int, default=128)
    train_args.add_argument("--steps", type=int, default=3, help="timed steps")
    train_args.add_argument("--warmup", type=int, default=1, help="untimed steps")
    gen_args = parser.add_argument_group("generate")
    gen_args.add_argument("--jobs-per-gpu", type=int, default=2)
    gen_args.add_argument("--gen-seconds", type=float, default=1.0, help="each job's --seconds (1: one section, 37 frames)")
    gen_args.add_argument("--gen-steps", type=int, default=10, help="each job's --steps")
    gen_args.add_argument("--gen-size", default=None, help="each job's --size [default: the 640 bucket, 640x608; --tiny 64x64]")
    parser.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write-models", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.train_size = args.train_size or ("64x64" if args.tiny else "640x608")
    args.gen_size = args.gen_size or ("64x64" if args.tiny else None)
    if args.train_worker:
        return train_worker(args)
    from bench_job import Results, default_models_dir, model_dir

    if args.write_models:
        return model_dir(args.write_models, args.tiny)

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    args.models = args.models or (args.work / "models" if args.tiny else default_models_dir())
    gpus = 0 if args.tiny else torch.cuda.device_count()
    most = args.cpu_workers if args.tiny else gpus
    if most < 1:
        raise SystemExit("no GPU: run with --tiny for the CPU smoke test")
    counts = counts_in_order(args.counts, most)
    name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.splitlines()[0] if gpus else ""
    device = f"{gpus} x {name}" if gpus else f"cpu ({os.cpu_count()} cores)"  # (nvidia-smi: this process leaves CUDA alone)
    results = Results(args.out, device=device, torch=torch.__version__, models="tiny" if args.tiny else "full size, random weights", counts=counts,
                      train_settings={"size": args.train_size, "window": args.window, "lora_rank": args.rank, "batch_per_gpu": 1, "prompt_tokens": args.prompt_tokens,
                                      "timed_steps": args.steps, "warmup_steps": args.warmup, "precision": "bf16 autocast, bf16 base", "gradient_checkpointing": True},
                      generate_settings={"jobs_per_gpu": args.jobs_per_gpu, "seconds": args.gen_seconds, "steps": args.gen_steps, "size": args.gen_size or "640 bucket (640x608)",
                                         "mode": "cpu" if args.tiny else "the default (exact, compiled)", "s_per_frame": "wall time of the whole command / frames"},
                      train={}, generate={})  # fmt: skip

    writer = start_model_writer(args, gpus)

    def left() -> float:
        """Seconds left for stages: the budget less 25 s to stop one that overruns and write the results."""
        return args.budget_s - 25 - (time.perf_counter() - started)

    def wait_for_models() -> None:
        """Until the writer is done, or the budget: then it is stopped (and the generation stages fail)."""
        if writer.poll() is None:
            print("waiting for the model folder to be written", flush=True)
            try:
                writer.wait(timeout=max(1.0, left()))
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()

    if gpus == 1:  # no spare GPU to write the models on while training runs
        wait_for_models()
    estimates = {"train": 60.0, "generate": 60.0} if args.tiny else {"train": 120.0, "generate": 170.0}
    stages = [(kind, n) for group in (counts[:2], counts[2:]) for kind in ("train", "generate") for n in group]
    for kind, n in stages:
        if not (kind == "train" and n == 1):  # every other stage uses the writer's GPU or its models
            wait_for_models()
        if kind == "generate" and writer.returncode:
            error = {"error": f"writing the models failed (exit code {writer.returncode})", "log_tail": (args.work / "write-models.log").read_text()[-2000:]}
            results[kind] = {**results[kind], str(n): error}
            continue
        seconds = left()
        if seconds < estimates[kind]:
            outcome = {"skipped": "time", "left_s": round(seconds), "estimate_s": round(estimates[kind])}
        else:
            print(f"{kind} on {n} {'GPU' if gpus else 'process'}(s)...", flush=True)
            outcome = train(n, args, seconds) if kind == "train" else generate(n, args, args.models, seconds)
            if "wall_s" in outcome:
                estimates[kind] = max(estimates[kind] * 0.5, outcome["wall_s"] * 1.2)  # the next stage of this kind: a bit more than this one took
        results[kind] = {**results[kind], str(n): outcome}
        print(f"{kind} {n}: {json.dumps(outcome)[:1500]}", flush=True)
    wait_for_models()
    log = (args.work / "write-models.log").read_text()
    results["models_written"] = next((line for line in reversed(log.splitlines()) if line.startswith("wrote ")), log[-500:])  # "wrote DIR in S s"
    results["summary"] = summary_table(results).splitlines()
    results["total_s"] = round(time.perf_counter() - started, 1)
    print(f"\n{device}; train: LoRA rank {args.rank}, {args.train_size} window {args.window}, batch 1 per GPU, DDP; generate: {args.jobs_per_gpu} jobs per GPU of "
          f"{args.gen_seconds} s at {args.gen_size or '640x608'}, {args.gen_steps} steps; x = speed-up over 1\n{summary_table(results)}")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/fpgen-inductor")
    main()
