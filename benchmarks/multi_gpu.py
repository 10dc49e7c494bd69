"""Several GPUs, in one command: DDP LoRA training, `--jobs --gpus N`, one video split over N GPUs, FSDP2 full finetuning.

    cd .wt/multigpu && PYTHONPATH=src python3 benchmarks/multi_gpu.py --out benchmarks/results/h200x2-2026-11-30.json   # GPU box
    python3 benchmarks/multi_gpu.py --stages cp_step,cp_job --gen-compile --out cp-compiled.json                        # the split passes compiled
    python3 benchmarks/multi_gpu.py --gpus 1,2,4 --stages train,generate --out h200x4.json                               # 4 GPUs; --add fills the same file in later calls
    python benchmarks/multi_gpu.py --tiny --out multi.json          # CPU smoke run: tiny models, gloo, CPU workers

Every stage runs for each GPU count N of ``--gpus`` it applies to (default: 1, 2, 4, ... up to the GPUs there are;
the split stages and fsdp from 2 on), each only if its estimate fits what is left of ``--budget-s`` ("skipped:
time" otherwise); results are keyed by N:

- train (each N): ``torchrun --nproc_per_node N`` of this script's ``--train-worker``: each
  rank builds the full-size transformer on its GPU with the same random weights
  (``train_step.build_model``), adds fpgen's LoRA (rank 32) and gradient checkpointing, and steps
  as ``fpgen finetune`` does (accelerate's DDP, ``accumulate_gradients``, clipping, AdamW); batch 1
  per GPU, a 640-bucket section at window 9. samples/s = N / (median s/step of rank 0).
- cp_step (N >= 2): ``torchrun`` of ``--cp-worker``: one transformer pass (one sampling step,
  distilled guidance) of the same section on one GPU alone, then split over the N by sequence
  (``fpgen.parallel``, the path of ``fpgen generate IMAGE --gpus N``); median s/step of each, the rel
  L2 between the two outputs, and a CUDA profile of one split step (NCCL kernel time vs the rest).
- generate (each N): ``python -m fpgen generate --jobs FILE --gpus N`` on full-size random
  models written as a ``--model-dir`` folder, ``--jobs-per-gpu`` jobs per GPU of ``--gen-seconds``
  at ``--gen-steps`` steps; s/frame = wall time of the command / frames, and the pace of the jobs
  after each worker's first (model loading excluded).
- cp_job (N >= 2): ``python -m fpgen generate IMAGE --gpus N``, the same job as one line of the
  jobs file; its s/frame (model loading excluded) against the 1-GPU jobs after the first.
- vae (N >= 2): the 4-section job's decodes on one GPU, then shared over N (``fpgen.vae_split``).
- fsdp (N >= 2): `fpgen finetune --full` of the 13B under FSDP2 on N GPUs (s/step, per-GPU peak), then a
  reduced-depth transformer's sharded checkpoint resumed on N and on N/2 GPUs (twice the gradient accumulation),
  compared bit for bit with the straight run.

The model folder is written on the last GPU while the 1-GPU training runs. NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 are set in this process and every
process it starts (torchrun's ranks and fpgen's helpers inherit them). Results go to ``--out``
after every stage; the issue's keys are filled in from the stages at the end.
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
from datetime import timedelta
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
SRC = BENCHMARKS.parent / "src"
sys.path[:0] = [str(BENCHMARKS), str(SRC)]

GIB = 2**30
PROMPT = "A person walks through a sunny park, waving at the camera."
ASSETS = BENCHMARKS / "assets"  # the tiny golden tokenizers and SigLIP processor config (see fullsize.write_model_dir)
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}  # NVLink multicast can take the host's GPUs out of service


def subprocess_env(**extra) -> dict:
    """This process's environment with fpgen's src/ and benchmarks/ importable (torchrun workers, fpgen's CLI), multicast off."""
    path = os.pathsep.join(filter(None, [str(SRC), str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **NO_MULTICAST, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def record(results: dict, path: Path, **items) -> None:
    """Add ``items`` and write everything so far: a run cut off by its time limit keeps what it measured."""
    results.update(items)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))


def start_picture(size: int = 768):
    """A smooth square test picture (bucket 640x608)."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size] / size
    return (np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1) * 255).astype(np.uint8)


def write_models(root: Path, tiny: bool) -> None:
    """The --model-dir folder of random models (full size, or tiny), written once."""
    import fullsize

    if not (root / "lllyasviel/FramePackI2V_HY/config.json").exists():
        started = time.perf_counter()
        fullsize.write_model_dir(root, ASSETS, "cuda" if torch.cuda.is_available() and not tiny else "cpu", tiny)
        print(f"wrote {root} in {time.perf_counter() - started:.1f} s", flush=True)


def default_models_dir() -> Path:
    """tmpfs when it can hold the ~43 GB of weights (files then load as from a warm HF cache), else /tmp."""
    shm = Path("/dev/shm")
    return shm / "fpgen-bench-models" if shm.is_dir() and shutil.disk_usage(shm).free > 50 * GIB else Path("/tmp/fpgen-bench-models")


def join_ranks(tiny: bool) -> torch.device:
    """Join torchrun's process group (NCCL on this rank's GPU, gloo on the CPU); this rank's device."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and not tiny
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(minutes=15))  # as fpgen.parallel.join_group
    return device


# ---------------------------------------------------------------------------------------------- train (one rank)


def train_worker(args) -> None:
    """One rank of the DDP LoRA step under torchrun; rank 0 writes every rank's figures to ``--result``."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from fullsize import TINY_TRANSFORMER, TRANSFORMER
    from train_step import build_model, make_batch

    from fpgen.training.adapters import add_lora, trainable_parameters
    from fpgen.training.config import TrainConfig
    from fpgen.training.memory import enable_checkpointing
    from fpgen.training.objective import Batch, FlowMatchingLoss
    from fpgen.training.loop import accumulate_gradients

    accelerator = Accelerator(cpu=args.tiny, mixed_precision="bf16")
    device, cuda = accelerator.device, accelerator.device.type == "cuda"
    model_config = TINY_TRANSFORMER if args.tiny else TRANSFORMER
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


def run_workers(args, processes: int, worker: str, forwarded: list[str], timeout: float) -> tuple[dict, GpuMemory]:
    """``torchrun`` of this script's ``--WORKER-worker`` on ``processes`` ranks: rank 0's ``--result`` and the wall
    time (or the failure), and the GPUs' memory while it ran."""
    result_file = args.work / f"{worker}-{processes}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), __file__, f"--{worker}-worker",
               "--result", str(result_file), *forwarded, *(["--tiny"] if args.tiny else [])]  # fmt: skip
    with GpuMemory() as memory:
        proc, wall, stderr = run_command(command, timeout, **({"OMP_NUM_THREADS": "1"} if args.tiny else {}))
    if proc is None or proc.returncode or not result_file.exists():
        return failure(proc, wall, stderr), memory
    return {**json.loads(result_file.read_text()), "wall_s": round(wall, 1)}, memory


def train(n: int, args, timeout: float) -> dict:
    forwarded = ["--train-size", args.train_size, "--window", str(args.window), "--rank", str(args.rank), "--prompt-tokens", str(args.prompt_tokens),
                 "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    outcome, memory = run_workers(args, n, "train", forwarded, timeout)
    return outcome if "error" in outcome else {**outcome, "nvidia_smi_peak_used_gib": memory.gib(n)}


def generate(n: int, args, models: Path, timeout: float) -> dict:
    folder = fresh_folder(args.work / f"generate-{n}")
    lines = [{"image": str(folder / "start.png"), "prompt": PROMPT, "output": str(folder / f"job-{k}.mp4"), "seed": k} for k in range(args.jobs_per_gpu * n)]
    (folder / "jobs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = [*fpgen_generate(args, models), "--jobs", str(folder / "jobs.jsonl"), "--gpus", str(n)]
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


def fresh_folder(folder: Path) -> Path:
    """An empty folder holding the start picture."""
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    Image.fromarray(start_picture()).save(folder / "start.png")
    return folder


def fpgen_generate(args, models: Path) -> list[str]:
    """`fpgen generate` with the settings every generation stage shares."""
    return [sys.executable, "-m", "fpgen", "generate", "--model-dir", str(models), "--json", "--seconds", str(args.gen_seconds), "--steps", str(args.gen_steps),
            *(["--size", args.gen_size] if args.gen_size else []), *(["--device", "cpu"] if args.tiny else []), *([] if args.gen_compile else ["--no-compile"])]  # fmt: skip


def cp_job(n: int, args, models: Path, timeout: float) -> dict:
    """`fpgen generate IMAGE --gpus N`: the jobs' job as one video over N GPUs; s/frame from its own time (model loading excluded).

    Run ``--cp-job-runs`` times: with --gen-compile the first compiles, the later ones start from the warm compile cache.
    """
    folder, runs, started = fresh_folder(args.work / f"cp-job-{n}"), [], time.perf_counter()
    for run in range(args.cp_job_runs):
        command = [*fpgen_generate(args, models), str(folder / "start.png"), "-p", PROMPT, "--seed", "1", "--gpus", str(n), "-o", str(folder / f"cp-{run}.mp4")]
        with GpuMemory() as memory:
            proc, wall, stderr = run_command(command, timeout - (time.perf_counter() - started))
        if proc is None or proc.returncode:
            runs.append(failure(proc, wall, stderr))
            break
        result = json.loads(proc.stdout.splitlines()[-1])
        runs.append({"frames": result["frames"], "elapsed_s": result["elapsed_s"], "s_per_frame": round(result["elapsed_s"] / result["frames"], 4), "wall_s": round(wall, 1),
                     "nvidia_smi_peak_used_gib": memory.gib(n)})  # fmt: skip
    return {**runs[-1], "runs": runs} if len(runs) > 1 else runs[0]


def cp_inputs(config: dict, height: int, width: int, window: int, prompt_tokens: int, device, dtype):
    """A noisy window, its packed history (the last section made: every slot used) and conditioning, random, with the real shapes."""
    from fpgen.denoiser import network_scalars
    from fpgen.packing import context_to, pack_section
    from fpgen.plan import plan_sections
    from fpgen.transformer import Conditioning

    generator = torch.Generator("cpu").manual_seed(1)
    plan = plan_sections(2, window, "inverted")
    context = pack_section("inverted", torch.randn((1, 16, plan.num_latents, height // 8, width // 8), generator=generator), plan.sections[-1], window)
    siglip_tokens = (config["image_size"] // config["patch_size"]) ** 2
    cond = Conditioning(
        torch.randn((1, prompt_tokens, config["text_embed_dim"]), generator=generator), torch.ones((1, prompt_tokens), dtype=torch.bool),
        torch.randn((1, config["pooled_projection_dim"]), generator=generator), torch.randn((1, siglip_tokens, config["image_proj_dim"]), generator=generator),
    )  # fmt: skip
    x = torch.randn((1, 16, window, height // 8, width // 8), generator=generator).to(device, dtype)
    timestep, guidance = network_scalars(torch.tensor([0.7], device=device), 10.0, dtype)
    return x, timestep, guidance, cond.to(device, dtype), context_to(context, device)


def cp_worker(args) -> None:
    """One rank of the context-parallel step: the same pass on rank 0 alone, then split over every rank; rank 0 writes ``--result``."""
    import fullsize
    import torch.distributed as dist

    from fpgen.acceleration import compile_blocks
    from fpgen.parallel import split_sequence
    from fpgen.transformer import BlockStack, packed_forward, use_float32_head

    device = join_ranks(args.tiny)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    height, width = (int(v) for v in args.train_size.split("x"))
    model = fullsize.transformer(device, dtype, tiny=args.tiny)  # seeded: every rank holds the same weights
    use_float32_head(model)
    if device.type == "cuda" and args.gen_compile:
        compile_blocks(model)
    blocks = BlockStack(model)
    config = {**(fullsize.TINY_TRANSFORMER if args.tiny else fullsize.TRANSFORMER), **(fullsize.TINY_SIGLIP if args.tiny else fullsize.SIGLIP)}
    x, timestep, guidance, cond, context = cp_inputs(config, height, width, args.window, args.prompt_tokens, device, dtype)

    def step() -> torch.Tensor:
        with torch.no_grad():
            out = packed_forward(model, x, timestep, guidance, cond, context, blocks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    result = {}
    if dist.get_rank() == 0:
        alone, result["one_gpu_s_per_step"] = timed_steps(step, args.warmup, args.steps)
    dist.barrier()
    split_sequence(blocks, device)
    split, result["split_s_per_step"] = timed_steps(step, args.warmup, args.steps)
    if device.type == "cuda":
        try:
            result["split_step_profile"] = cuda_profile(step)
        except Exception as error:  # the profiler's event fields move between torch releases: the timings stand without it
            result["split_step_profile"] = {"error": f"{type(error).__name__}: {error}"[:300]}
    if dist.get_rank() == 0:
        result.update(processes=dist.get_world_size(), rel_l2=((split.double() - alone.double()).norm() / alone.double().norm()).item())
        Path(args.result).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def vae_worker(args) -> None:
    """One rank of the VAE stage: the 4-section job's decodes on rank 0 alone (tile reuse), then shared over every rank
    (``fpgen.vae_split``); rank 0 writes s/section of each and how far the shared frames are from the alone ones."""
    import fullsize
    import torch.distributed as dist

    from fpgen.decode import decode_latents, decode_span
    from fpgen.plan import plan_sections
    from fpgen.vae_reuse import reuse_vae_tiles
    from fpgen.vae_split import share_vae_decode

    device = join_ranks(args.tiny)
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    height, width = (int(v) for v in args.train_size.split("x"))
    plan = plan_sections(4, args.window, "inverted")
    generator = torch.Generator("cpu").manual_seed(3)
    latents = torch.randn((1, 16, plan.num_latents, height // 8, width // 8), generator=generator)
    spans = [decode_span(plan, section) for section in plan.sections]  # generation order, as the job decodes
    warm_up = torch.randn((1, 16, 2 * args.window, height // 8, width // 8), generator=generator)

    def decodes(vae) -> tuple[list[torch.Tensor], float]:
        decode_latents(vae, warm_up)  # cuDNN's choices, the allocator
        dist.barrier()
        started, frames = time.perf_counter(), [decode_latents(vae, latents[:, :, begin:end]) for begin, end in spans]
        return frames, round((time.perf_counter() - started) / len(spans), 3)

    result = {"spans": spans}
    if dist.get_rank() == 0:
        vae = fullsize.vae(device, dtype, tiny=args.tiny)
        reuse_vae_tiles(vae)
        alone, result["one_gpu_s_per_section"] = decodes(vae)
        del vae
    else:
        dist.barrier()
    shared_vae = fullsize.vae(device, dtype, tiny=args.tiny)  # the same seed: the same weights
    cache = share_vae_decode(shared_vae)
    shared, result["split_s_per_section"] = decodes(shared_vae)
    if dist.get_rank() == 0:
        rel = max(((a.double() - b.double()).norm() / b.double().norm()).item() for a, b in zip(shared, alone))
        result.update(processes=dist.get_world_size(), identical=all(torch.equal(a, b) for a, b in zip(shared, alone)), max_rel_l2=rel,
                      tiles_decoded=cache.misses, speedup=round(result["one_gpu_s_per_section"] / result["split_s_per_section"], 2))  # fmt: skip
        Path(args.result).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def vae(n: int, args, timeout: float) -> dict:
    return run_workers(args, n, "vae", ["--train-size", args.train_size, "--window", str(args.window)], timeout)[0]


def timed_steps(step, warmup: int, steps: int) -> tuple[torch.Tensor, float]:
    """The last output of ``step`` and its median time over ``steps`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        out = step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - started)
    return out, round(statistics.median(times), 4)


def cuda_profile(step) -> dict:
    """One step's CUDA kernel time: NCCL (the all-to-alls and the gather) against everything else."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events) / 1e6
    nccl = sum(e.self_device_time_total for e in events if "nccl" in e.key.lower()) / 1e6
    return {"cuda_kernel_s": round(total, 4), "nccl_kernel_s": round(nccl, 4), "nccl_share": round(nccl / total, 3) if total else None}


def cp_step(n: int, args, timeout: float) -> dict:
    forwarded = ["--train-size", args.train_size, "--window", str(args.window), "--prompt-tokens", str(args.prompt_tokens), "--steps", str(args.steps), "--warmup", str(args.warmup),
                 *(["--gen-compile"] if args.gen_compile else [])]  # fmt: skip
    return run_workers(args, n, "cp", forwarded, timeout)[0]


# ---------------------------------------------------------------------------------------------- fsdp: `fpgen finetune --full` under FSDP2

RESULT_FILES = ("diffusion_pytorch_model", "config.json", "fpgen.json")  # what a --full run writes at its end
REDUCED = {"num_layers": 1, "num_single_layers": 2}  # full width, 3 of the 60 blocks: a checkpoint of ~8 GB that resumes within the time limit


def write_reduced(folder: Path, tiny: bool) -> None:
    """A reduced-depth FramePack transformer folder (random weights), for the resume stages."""
    import fullsize
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    config = {**(fullsize.TINY_TRANSFORMER if tiny else fullsize.TRANSFORMER), **REDUCED}
    fullsize.build(lambda: HunyuanVideoFramepackTransformer3DModel(**config), "cuda" if torch.cuda.is_available() and not tiny else "cpu", torch.bfloat16, 0).save_pretrained(folder)


def write_clips(folder: Path, count: int, frames: int, size: tuple[int, int]) -> Path:
    """``count`` captioned clips of a picture drifting sideways (enough frames for one training section)."""
    import numpy as np

    from fpgen.video import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    picture = start_picture(max(size) + frames * 4)
    for k in range(count):
        video = np.stack([picture[: size[0], 4 * (t + k) : 4 * (t + k) + size[1]] for t in range(frames)])
        write_mp4(folder / f"clip{k}.mp4", video, crf=12)
        (folder / f"clip{k}.txt").write_text(f"a colourful pattern drifts sideways, clip {k}")
    return folder


def finetune(args, processes: int, output: Path, timeout: float, *options: str) -> tuple[dict, list[dict]]:
    """`fpgen finetune` on ``processes`` GPUs under accelerate's FSDP2 config (one plain process on 1 GPU or --tiny); (outcome, log rows)."""
    launcher = ["-m", "accelerate.commands.launch", "--config_file", str(BENCHMARKS.parent / "configs/accelerate/fsdp.yaml"), "--num_processes", str(processes), "-m"] if processes > 1 else ["-m"]
    command = [sys.executable, *launcher, "fpgen", "finetune", str(output.parent / "clips"), "-o", str(output), "--model-dir", str(args.models), "--cache-dir", str(output.parent / "cache"),
               "--window", str(args.window), "--size", args.train_size, "--lr", "1e-5", "--json", *(["--device", "cpu"] if args.tiny else []), *options]  # fmt: skip
    with GpuMemory() as memory:
        proc, wall, stderr = run_command(command, timeout, **({"OMP_NUM_THREADS": "1"} if args.tiny else {}))
    rows = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()] if (output / "log.jsonl").is_file() else []
    if proc is None or proc.returncode:
        return {**failure(proc, wall, stderr), "steps_logged": len(rows)}, rows
    return {"wall_s": round(wall, 1), "nvidia_smi_peak_used_gib": memory.gib(max(processes, 1))}, rows


def read_whole(folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights and optimizer state as whole tensors: the single files, or the shards joined by torch.distributed.checkpoint."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader, load

    from fpgen.tensorfile import load_tensors
    from fpgen.training.checkpoint import MODEL_FILE, MODEL_SHARDS, OPTIMIZER_FILE, OPTIMIZER_SHARDS

    if (folder / MODEL_FILE).is_file():
        return {**load_tensors(folder / MODEL_FILE)[0], **{f"optimizer/{k}": v for k, v in load_tensors(folder / OPTIMIZER_FILE)[0].items()}}
    whole = {}
    for shards, prefix in ((MODEL_SHARDS, ""), (OPTIMIZER_SHARDS, "optimizer/")):
        reader = HuggingFaceStorageReader(str(folder / shards))
        state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in reader.read_metadata().state_dict_metadata.items()}
        load(state, storage_reader=reader, no_dist=True)
        whole.update({prefix + k: v for k, v in state.items()})
    return whole


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """How far checkpoint ``b`` is from ``a``: identical tensors, and the largest relative L2 difference."""
    if a.keys() != b.keys():
        return {"error": f"different tensors: {sorted(a.keys() ^ b.keys())[:4]}"}
    rel = {k: ((a[k].double() - b[k].double()).norm() / a[k].double().norm().clamp_min(1e-30)).item() for k in a}
    return {"tensors": len(a), "identical": sum(torch.equal(a[k], b[k]) for k in a), "max_rel_l2": max(rel.values())}


def fsdp(n: int, args, timeout: float) -> dict:
    """Full finetuning under FSDP2: the 13B on N GPUs (s/step, memory), then a reduced-depth transformer's sharded checkpoint
    resumed on N GPUs (bit for bit) and on N/2 (another process count); every run through `fpgen finetune` (--tiny: one process)."""
    started, work = time.perf_counter(), args.work / f"fsdp-{n}"
    left = lambda: timeout - (time.perf_counter() - started)  # noqa: E731
    shutil.rmtree(work, ignore_errors=True)
    height, width = (int(v) for v in args.train_size.split("x"))
    write_clips(work / "clips", 2, 4 * args.window + 5, (height, width))
    reduced = work / "reduced"
    writer = subprocess.Popen([sys.executable, __file__, "--write-reduced", str(reduced), *(["--tiny"] if args.tiny else [])], env=subprocess_env(**({"CUDA_VISIBLE_DEVICES": "1"} if not args.tiny else {})))
    gpus = 1 if args.tiny else n
    other = max(1, gpus // 2)  # its gradient accumulation makes up the rest, so the steps see the same samples
    result = {"settings": {"size": args.train_size, "window": args.window, "batch_per_gpu": 1, "optimizer": "AdamW, float32 weights and moments, bf16 autocast",
                           "gradient_checkpointing": True, "reduced_depth": REDUCED, "processes": gpus}}  # fmt: skip

    full, rows = finetune(args, gpus, work / "full", left() - 200, "--full", "--max-steps", str(args.warmup + args.steps), "--save-every", "0")
    times = [row["s_per_step"] for row in rows[args.warmup :]]
    result["full_size"] = {**full, "s_per_step": round(statistics.median(times), 3) if times else None, "step_times": [row["s_per_step"] for row in rows],
                           "peak_allocated_gib_rank0": max((row["peak_memory_gb"] or 0 for row in rows), default=None), "losses": [row["loss"] for row in rows]}  # fmt: skip
    print(f"fsdp full size: {json.dumps(result['full_size'])[:800]}", flush=True)
    writer.wait(timeout=max(1.0, left()))
    # The straight run saves at steps 2 and 4; two resumed runs start from a copy of its step 2 and end at step 4.
    options = ("--model", str(reduced), "--full", "--save-every", "2", "--max-steps", "4")
    straight, _ = finetune(args, gpus, work / "straight", left() - 120, *options)
    result["reduced"] = {"straight": straight}
    for name, processes, extra in (("resumed_same_count", gpus, ()), ("resumed_half_count", other, ("--grad-accum", str(gpus // other)))):
        folder = work / name
        if "error" in straight or left() < 40:
            result["reduced"][name] = {"skipped": "the straight run failed" if "error" in straight else "time"}
            continue
        shutil.copytree(work / "straight", folder, ignore=lambda where, names: [n for n in names if n == "step-0000004" or (Path(where) == work / "straight" and n.startswith(RESULT_FILES))],
                        copy_function=os.link)  # fmt: skip
        outcome, _ = finetune(args, processes, folder, left() - 10, *options, "--resume", *extra)
        outcome["processes"] = processes
        if "error" not in outcome:
            outcome["vs_straight_step_4"] = compare(read_whole(work / "straight/checkpoints/step-0000004"), read_whole(folder / "checkpoints/step-0000004"))
        result["reduced"][name] = outcome
        print(f"fsdp {name}: {json.dumps(outcome)[:800]}", flush=True)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def start_model_writer(args, gpus: int) -> subprocess.Popen:
    """Write the full-size random models as a --model-dir folder in a process of its own, on the last GPU."""
    log = open(args.work / "write-models.log", "w")
    command = [sys.executable, __file__, "--write-models", str(args.models)] + (["--tiny"] if args.tiny else [])
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(**({"CUDA_VISIBLE_DEVICES": str(gpus - 1)} if gpus else {})))


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


KINDS = ("fsdp", "vae", "train", "cp_step", "generate", "cp_job")
SPLIT = ("fsdp", "vae", "cp_step", "cp_job")  # one job over N GPUs: from two on


def stage_plan(counts: list[int], wanted: set[str]) -> list[tuple[str, int]]:
    """(kind, GPU count) in the order they run, most wanted first: FSDP and the VAE, training with the split step, then the jobs."""
    plan = [("fsdp", n) for n in counts] + [("vae", n) for n in counts]
    plan += [(kind, n) for n in counts for kind in ("cp_step", "train")] + [("generate", n) for n in counts] + [("cp_job", n) for n in counts]
    return [(kind, n) for kind, n in plan if kind in wanted and (n > 1 or kind not in SPLIT)]


def default_counts(gpus: int) -> list[int]:
    """1, 2, 4, ... up to the GPUs there are (the counts the issues' scaling tables use)."""
    return [2**k for k in range(gpus.bit_length())]


def headline(results: dict) -> dict:
    """The issue's keys, from the stages' figures, each keyed by GPU count (None where a stage did not run), and the scaling ratios."""
    train, gen, step, job, vae, fsdp = (results.get(kind, {}) for kind in ("train", "generate", "cp_step", "cp_job", "vae", "fsdp"))

    def each(stage: dict, key: str) -> dict:
        return {n: figures.get(key) for n, figures in stage.items()}

    samples, warm, split = each(train, "samples_per_s"), each(gen, "later_jobs_s_per_frame_per_gpu"), each(step, "split_s_per_step")
    one_gpu_step = next((v for v in each(step, "one_gpu_s_per_step").values() if v), None)  # each split stage timed one GPU alone too
    one_gpu_vae = next((v for v in each(vae, "one_gpu_s_per_section").values() if v), None)
    return {
        "gpus": sorted({int(n) for kind in KINDS for n in results.get(kind, {})}),
        "train_lora_samples_per_s": samples,
        "train_lora_scaling": {n: round(v / samples["1"], 3) if v and samples.get("1") else None for n, v in samples.items()},  # goal: >= 0.9 N at 4
        "jobs_s_per_frame": each(gen, "s_per_frame"),
        "jobs_warm_s_per_frame_per_gpu": warm,
        "jobs_warm_throughput_scaling": {n: round(int(n) * warm["1"] / v, 3) if v and warm.get("1") else None for n, v in warm.items()},  # goal: >= 0.95 N
        "one_gpu_exact_s_per_step": one_gpu_step,
        "cp_exact_s_per_step": split,
        "cp_step_vs_one_gpu": {n: round(f["split_s_per_step"] / f["one_gpu_s_per_step"], 3) if f.get("split_s_per_step") and f.get("one_gpu_s_per_step") else None
                               for n, f in step.items()},  # each against the one GPU timed in the same stage; goal: <= 0.32 at 4
        "cp_rel_l2_vs_one_gpu": each(step, "rel_l2"),
        "cp_nccl_share": {n: (figures.get("split_step_profile") or {}).get("nccl_share") for n, figures in step.items()},
        "cp_job_s_per_frame": each(job, "s_per_frame"),
        "one_gpu_job_s_per_frame": warm.get("1"),
        "vae_s_per_section": {"1": one_gpu_vae, **each(vae, "split_s_per_section")},
        "train_full_fsdp_s_per_step": {n: figures.get("full_size", {}).get("s_per_step") for n, figures in fsdp.items()},
        "train_full_fsdp_peak_gib_per_gpu": {n: figures.get("full_size", {}).get("nvidia_smi_peak_used_gib") for n, figures in fsdp.items()},
    }


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("multi.json"))
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: gloo ranks and CPU workers (a smoke test of this script)")
    parser.add_argument("--budget-s", type=float, default=560.0, help="stop starting stages that would end after this (the device allows 600 s a command)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fpgen-multi"))
    parser.add_argument("--models", type=Path, default=None, help="the --model-dir folder [default: /dev/shm when it fits]")
    parser.add_argument("--stages", default="train,cp_step,generate,cp_job", help=f"the kinds of stage to run, of {','.join(KINDS)}; e.g. cp_step,cp_job with --gen-compile")
    parser.add_argument("--gpus", help="the GPU counts to measure, e.g. 1,2,4 [default: 1, 2, 4, ... up to the GPUs there are; --tiny 1,2]")
    parser.add_argument("--add", action="store_true", help="keep what --out already holds (an earlier call's stages) and add this call's to it")
    train_args = parser.add_argument_group("train and cp_step")
    train_args.add_argument("--train-size", default=None, help="HxW [default: 640x608, the 640 bucket of a square picture; --tiny 64x64]")
    train_args.add_argument("--window", type=int, default=9)
    train_args.add_argument("--rank", type=int, default=32)
    train_args.add_argument("--prompt-tokens", type=int, default=128)
    train_args.add_argument("--steps", type=int, default=3, help="timed steps")
    train_args.add_argument("--warmup", type=int, default=1, help="untimed steps")
    gen_args = parser.add_argument_group("generate and cp_job")
    gen_args.add_argument("--jobs-per-gpu", type=int, default=2)
    gen_args.add_argument("--gen-seconds", type=float, default=1.0, help="each job's --seconds (1: one section, 37 frames)")
    gen_args.add_argument("--gen-steps", type=int, default=10, help="each job's --steps")
    gen_args.add_argument("--gen-size", default=None, help="each job's --size [default: the 640 bucket, 640x608; --tiny 64x64]")
    gen_args.add_argument("--cp-job-runs", type=int, default=1, help="cp_job runs (with --gen-compile: the later ones warm)")
    gen_args.add_argument("--gen-compile", action="store_true", help="compile the blocks (jobs and cp_step); off by default: compiling twice per stage does not fit 10 minutes")
    parser.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vae-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write-models", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write-reduced", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if unknown := set(args.stages.split(",")) - set(KINDS):
        parser.error(f"unknown stage {', '.join(sorted(unknown))}: choose from {','.join(KINDS)}")
    try:
        args.gpus = sorted({int(n) for n in args.gpus.split(",")}) if args.gpus else None
    except ValueError:
        parser.error(f"--gpus takes GPU counts separated by commas, e.g. 1,2,4 (got {args.gpus!r})")
    if args.gpus and args.gpus[0] < 1:
        parser.error("--gpus counts start at 1")
    if args.add and not args.out.is_file():
        parser.error(f"--add keeps what {args.out} holds, but there is no such file: leave --add out for a new one")
    args.train_size = args.train_size or ("64x64" if args.tiny else "640x608")
    args.gen_size = args.gen_size or ("64x64" if args.tiny else None)
    return args


def main() -> None:
    os.environ.update(NO_MULTICAST)
    args = parse_args()
    if args.train_worker:
        return train_worker(args)
    if args.cp_worker:
        return cp_worker(args)
    if args.vae_worker:
        return vae_worker(args)
    if args.write_models:
        return write_models(args.write_models, args.tiny)
    if args.write_reduced:
        return write_reduced(args.write_reduced, args.tiny)

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    args.models = args.models or (args.work / "models" if args.tiny else default_models_dir())
    gpus = 0 if args.tiny else torch.cuda.device_count()
    if not args.tiny and gpus < 2:
        raise SystemExit("needs two GPUs (or --tiny for the CPU smoke test)")
    counts = args.gpus or ([1, 2] if args.tiny else default_counts(gpus))
    if not args.tiny and counts[-1] > gpus:
        raise SystemExit(f"--gpus asks for {counts[-1]} GPUs; this machine has {gpus}")
    name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.splitlines()[0] if gpus else ""
    device = f"{gpus} x {name}" if gpus else f"cpu ({os.cpu_count()} cores)"  # (nvidia-smi: this process leaves CUDA alone)
    results = json.loads(args.out.read_text()) if args.add else {}
    record(results, args.out, device=device, gpus=sorted(set(results.get("gpus", [])) | set(counts)), torch=torch.__version__, models="tiny" if args.tiny else "full size, random weights",
                      train_settings={"size": args.train_size, "window": args.window, "lora_rank": args.rank, "batch_per_gpu": 1, "prompt_tokens": args.prompt_tokens,
                                      "timed_steps": args.steps, "warmup_steps": args.warmup, "precision": "bf16 autocast, bf16 base", "gradient_checkpointing": True},
                      cp_settings={"size": args.train_size, "window": args.window, "pass": "one transformer pass (one step, distilled guidance), bf16", "compiled": args.gen_compile},
                      generate_settings={"jobs_per_gpu": args.jobs_per_gpu, "seconds": args.gen_seconds, "steps": args.gen_steps, "size": args.gen_size or "640 bucket (640x608)",
                                         "mode": "cpu" if args.tiny else "exact" + ("" if args.gen_compile else ", not compiled"), "s_per_frame": "wall time of the whole command / frames"},
                      **{kind: results.get(kind, {}) for kind in KINDS})  # fmt: skip

    wanted = set(args.stages.split(","))
    writer = start_model_writer(args, gpus) if wanted & {"generate", "cp_job", "fsdp"} else None

    def left() -> float:
        """Seconds left for stages: the budget less 25 s to stop one that overruns and write the results."""
        return args.budget_s - 25 - (time.perf_counter() - started)

    def wait_for_models() -> None:
        """Until the writer is done, or the budget: then it is stopped (and the generation stages fail)."""
        if writer is not None and writer.poll() is None:
            print("waiting for the model folder to be written", flush=True)
            try:
                writer.wait(timeout=max(1.0, left()))
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()

    estimates = {"fsdp": 60.0, "vae": 60.0, "train": 60.0, "cp_step": 60.0, "generate": 60.0, "cp_job": 60.0} if args.tiny else {"fsdp": 300.0, "vae": 70.0, "train": 100.0, "cp_step": 90.0, "generate": 150.0, "cp_job": 110.0}
    run_stage = {"train": lambda n, t: train(n, args, t), "cp_step": lambda n, t: cp_step(n, args, t), "generate": lambda n, t: generate(n, args, args.models, t), "cp_job": lambda n, t: cp_job(n, args, args.models, t), "fsdp": lambda n, t: fsdp(n, args, t), "vae": lambda n, t: vae(n, args, t)}
    for kind, n in stage_plan(counts, wanted):
        if (kind, n) != ("train", 1):  # every other stage uses the writer's GPU or its models
            wait_for_models()
        seconds = left()
        if kind in ("generate", "cp_job", "fsdp") and writer.returncode:
            outcome = {"error": f"writing the models failed (exit code {writer.returncode})", "log_tail": (args.work / "write-models.log").read_text()[-2000:]}
        elif seconds < estimates[kind]:
            outcome = {"skipped": "time", "left_s": round(seconds), "estimate_s": round(estimates[kind])}
        else:
            print(f"{kind} on {n} {'GPU' if gpus else 'process'}(es)...", flush=True)
            outcome = run_stage[kind](n, seconds)
        record(results, args.out, **{kind: {**results[kind], str(n): outcome}})
        print(f"{kind} {n}: {json.dumps(outcome)[:1500]}", flush=True)
    if writer is not None:
        wait_for_models()
        log = (args.work / "write-models.log").read_text()
        record(results, args.out, models_written=next((line for line in reversed(log.splitlines()) if line.startswith("wrote ")), log[-500:]))  # "wrote DIR in S s"
    record(results, args.out, **headline(results), summary=summary_table(results).splitlines(), total_s=round(time.perf_counter() - started, 1))
    print(f"\n{device}\n{summary_table(results)}\n{json.dumps(headline(results), indent=1)}")


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/fpgen-inductor")
    main()
