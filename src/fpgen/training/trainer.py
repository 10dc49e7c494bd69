"""The training loop, on accelerate: one GPU, the CPU, or several GPUs through ``accelerate launch``.

A run is: check the output folder, make sure the cache is complete (the main process encodes, the
others then find it), load only the transformer, inject the LoRA (or make every weight trainable),
and optimise. Each step takes ``grad_accum`` micro-batches per process; micro-batch ``n`` is fixed
by the seed (``samples.BatchOrder``) and so are its timesteps and noise (``samples.seeded``), so
a run resumed from a checkpoint continues exactly as if it had never stopped. Checkpoints are
accelerate states (optimizer, RNG, the step counter, and the weights: only the LoRA for a LoRA run),
written aside and renamed, so a crash or Ctrl-C leaves the last one whole.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import torch

from fpgen.errors import InputError, Interrupted, OutOfMemoryError
from fpgen.lora import read_lora, write_lora
from fpgen.registry import METADATA_FILE
from fpgen.training import adapters, memory
from fpgen.training.cache import CacheReport, CacheSettings, CachedClip, CachedStart, build_cache
from fpgen.training.config import TrainConfig, load_run, save_run
from fpgen.training.data import Clip, default_cache_dir, discover_clips
from fpgen.training.objective import Batch, FlowMatchingLoss, draw, evaluation_loss
from fpgen.training.samples import BatchOrder, build_batch, layout_key, sample_refs, seeded

LOG_FILE, EVAL_FILE, RUN_FILE, LORA_FILE = "log.jsonl", "eval.jsonl", "run.json", "lora.safetensors"
CHECKPOINTS = "checkpoints"


# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class CacheProgress:
    what: str
    done: int
    total: int


@dataclass(frozen=True)
class Started:
    what: str  # "a rank-32 LoRA on 480 linears", "every weight"
    clips: int
    held_out: int
    samples: int
    trainable: int  # parameters
    device: str
    precision: str
    first_step: int  # 0, or the step a resumed run continues from
    max_steps: int
    order: str


@dataclass(frozen=True)
class Logged:
    step: int
    loss: float
    lr: float
    grad_norm: float | None
    epoch: int
    seconds_per_step: float
    peak_memory_gb: float | None


@dataclass(frozen=True)
class Evaluated:
    step: int
    loss: float


@dataclass(frozen=True)
class Saved:
    step: int
    path: Path


@dataclass(frozen=True)
class Validated:
    step: int
    path: Path


TrainEvent = CacheProgress | Started | Logged | Evaluated | Saved | Validated


@dataclass
class TrainResult:
    output: Path
    weights: Path  # lora.safetensors, or the model folder of a full finetune
    steps: int
    losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    cache: CacheReport | None = None
    elapsed: float = 0.0
    main: bool = True  # False on the other processes of a multi-GPU run, which do not report


# ---------------------------------------------------------------------------------------------- output folder


def check_output(config: TrainConfig, resume: bool) -> None:
    """Refuse to mix runs: a fresh run needs a new or empty folder, --resume needs the same settings."""
    if config.output is None:
        raise InputError("--output is required to train", "e.g. --output runs/my-lora (or pass --cache-only to fill the cache only)")
    output, run = Path(config.output), Path(config.output) / RUN_FILE
    if resume:
        if not run.is_file():
            raise InputError(f"nothing to resume in {output} (no {RUN_FILE})", "start the run without --resume")
        if latest_checkpoint(output) is None:
            raise InputError(f"{output} has no checkpoint to resume from", "start the run again without --resume")
        differences = config.differences(load_run(run))
        if differences:
            raise InputError(f"--resume with other settings than the run in {output}: {'; '.join(differences)}", "repeat the original command with --resume (only --max-steps and bookkeeping options may change)")
        return
    if run.is_file() and latest_checkpoint(output) is None and not (output / LORA_FILE).exists():
        return  # a start that failed before its first checkpoint: nothing in it is worth keeping
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if run.is_file():
            raise InputError(f"{output} already holds a training run", "pass --resume to continue it, or choose another --output")
        raise InputError(f"{output} exists and is not an empty folder", "choose a new or empty folder for --output; nothing in it is overwritten")


def latest_checkpoint(output: Path) -> Path | None:
    folders = sorted(p for p in (Path(output) / CHECKPOINTS).glob("step-*") if p.is_dir() and not p.name.endswith(".partial"))
    return folders[-1] if folders else None


def _truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be logged again)."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(row + "\n" for row in rows))


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------- cache


def model_files(config: TrainConfig):
    from fpgen.api import find_model

    return find_model(config.model, config.model_dir)


def cache_data(config: TrainConfig, clips: list[Clip], files, placement, on_event: Callable[[TrainEvent], None]) -> tuple[list[CachedClip], CachedStart | None, CacheReport]:
    """Make sure the cache holds every clip (and the validation inputs); only missing entries are encoded."""
    validation = (Path(config.validation_image), config.validation_prompt) if config.validation_image else None
    settings = CacheSettings(config.size, config.resolution, config.window, config.max_sections)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir(config.data)
    progress = lambda what, done, total: on_event(CacheProgress(what, done, total))  # noqa: E731
    cached, start, report = build_cache(clips, settings, files.paths, placement, cache_dir, validation, progress)
    if not cached:
        raise InputError(f"none of the {len(clips)} clip(s) is long enough for one section", f"a clip needs at least {4 * config.window + 1} frames at --window {config.window}")
    return cached, start, report


def cache_only(config: TrainConfig, on_event: Callable[[TrainEvent], None] | None = None) -> tuple[list[CachedClip], CacheReport]:
    """``--cache-only``: fill the cache and stop (one process; the encoders run on --device)."""
    from fpgen.devices import choose_placement

    config.validate()
    placement = choose_placement(config.device)
    cached, _, report = cache_data(config, discover_clips(config.data), model_files(config), placement, on_event or (lambda event: None))
    return cached, report


def split_holdout(clips: list[CachedClip], holdout: int, seed: int) -> tuple[list[CachedClip], list[CachedClip]]:
    """(training clips, held-out clips): ``holdout`` clips chosen by the seed."""
    if holdout >= len(clips):
        raise InputError(f"--holdout {holdout} leaves no clip to train on ({len(clips)} usable)", "hold out fewer clips")
    chosen = set(torch.randperm(len(clips), generator=seeded(seed, 2)).tolist()[:holdout])
    return [c for i, c in enumerate(clips) if i not in chosen], [c for i, c in enumerate(clips) if i in chosen]


# ---------------------------------------------------------------------------------------------- pieces


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up, then constant, linear or cosine decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise InputError("--optimizer adamw8bit needs bitsandbytes, which is not installed", "pip install bitsandbytes, or use --optimizer adamw") from None
        return bitsandbytes.optim.AdamW8bit(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


class StepCounter:
    """The optimizer steps done and the micro-batches each takes; saved and restored with the accelerate state.

    A step takes processes x --grad-accum micro-batches, so a run can resume on another number of
    processes (GPUs) and continue exactly if --grad-accum keeps that product; any other resume is refused.
    """

    def __init__(self, processes: int, grad_accum: int):
        self.step, self.processes, self.grad_accum = 0, processes, grad_accum

    def state_dict(self) -> dict:
        return {"step": self.step, "micro_batches": self.processes * self.grad_accum}

    def load_state_dict(self, state: dict) -> None:
        saved = int(state.get("micro_batches", self.processes * self.grad_accum))  # older checkpoints did not record it
        if saved != self.processes * self.grad_accum:
            fix = f"pass --grad-accum {saved // self.processes}" if saved % self.processes == 0 else f"use a number of processes that divides {saved}"
            raise InputError(
                f"the checkpoint's steps take {saved} micro-batches (processes x --grad-accum), this run's {self.processes} x {self.grad_accum}",
                f"{fix} to continue the same run",
            )
        self.step = int(state["step"])


@contextmanager
def stop_requests(accelerator):
    """The first Ctrl-C (or SIGTERM) asks the loop to stop at the next step boundary; a second one interrupts at once."""
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        accelerator.set_trigger()

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _transformer_dtype(config: TrainConfig, precision: str) -> torch.dtype:
    """Full finetunes keep float32 master weights; a LoRA's frozen base is stored in the compute dtype."""
    return torch.bfloat16 if (precision == "bf16" and not config.full) else torch.float32


def _precision(config: TrainConfig, cuda: bool) -> str:
    """bf16 autocast on CUDA (and always with an fp8 base, which computes in bf16), float32 on the CPU."""
    if config.mixed_precision == "auto":
        return "bf16" if cuda or config.fp8_base else "no"
    return config.mixed_precision


def _write_full_model(state: dict[str, torch.Tensor], transformer, output: Path, dtype: torch.dtype, info: dict) -> None:
    """A diffusers model folder (config.json, sharded safetensors) plus fpgen.json, loadable with --model DIR."""
    from huggingface_hub import save_torch_state_dict

    weights = {k.removeprefix("transformer."): v.to(dtype) for k, v in state.items() if k.startswith("transformer.")}
    transformer.save_config(str(output))
    save_torch_state_dict(weights, str(output), filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size="10GB")
    (output / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")


def build_transformer(config: TrainConfig, path: Path, dtype: torch.dtype, cuda: bool = False) -> tuple[torch.nn.Module, list[str]]:
    """The base transformer, on the CPU, with what is trained made trainable; returns it and those modules/weights.

    With ``config.compile`` on CUDA each block is torch.compiled (forward and backward fused; the
    LoRA and checkpointing go through the compiled blocks).
    """
    from fpgen.loading import load_transformer

    transformer = load_transformer(path, dtype, "cpu")
    if config.full:
        adapted = adapters.make_full_trainable(transformer)
    else:
        adapted = adapters.add_lora(transformer, config.rank, config.lora_alpha, config.target_modules, config.seed)
        if config.fp8_base:
            memory.cast_base_to_fp8(transformer)
    if config.gradient_checkpointing:
        memory.enable_checkpointing(transformer, config.offload_activations)
    if config.compile and cuda:
        from fpgen.acceleration import compile_blocks

        compile_blocks(transformer, match_eager_rounding=False)
    return transformer.train(), adapted


def accumulate_gradients(accelerator, objective, step: int, config: TrainConfig, micro_batch: Callable[[int], tuple[int, Batch]]) -> tuple[torch.Tensor, int]:
    """Forward and backward this process's ``grad_accum`` micro-batches of optimizer step ``step``; returns their mean loss and the epoch.

    Micro-batch ``n = (step * grad_accum + micro) * processes + rank`` (``micro_batch(n)`` gives its
    epoch and batch), with timesteps and noise drawn from ``n``: so P processes at --grad-accum A
    see the same samples as one process at --grad-accum P*A, and since gradients are averaged over
    processes (the all-reduce of the last micro-batch) and over micro-batches (the loss is divided
    by ``grad_accum``), both compute the same step.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    total, epoch = torch.zeros((), device=accelerator.device), 0
    for micro in range(config.grad_accum):
        n = (step * config.grad_accum + micro) * world + rank
        epoch, batch = micro_batch(n)
        t, noise = draw(batch, config.shift, seeded(config.seed, 3, n))
        with nullcontext() if micro == config.grad_accum - 1 else accelerator.no_sync(objective):
            loss = objective(batch.latents, noise, t, batch.cond, batch.context)
            accelerator.backward(loss / config.grad_accum)
        total += loss.detach() / config.grad_accum
    return total, epoch


# ---------------------------------------------------------------------------------------------- the run


def train(config: TrainConfig, resume: bool = False, on_event: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train as ``config`` says; returns where the result is. Raises ``Interrupted`` after a requested stop."""
    if find_spec("peft") is None or find_spec("accelerate") is None:
        raise InputError("fpgen finetune needs peft and accelerate, which are not installed", "pip install 'fpgen[train]'")
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, is_tensorboard_available

    emit = on_event or (lambda event: None)
    started_at = time.perf_counter()
    config.validate()
    check_output(config, resume)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but PyTorch sees no CUDA GPU", "use --device cpu, or install a CUDA build of torch")
    cuda = config.device != "cpu" and torch.cuda.is_available()
    precision = _precision(config, cuda)
    output = Path(config.output)
    clips, files = discover_clips(config.data), model_files(config)  # bad data or missing weights: fail before any folder is made
    tracker = "tensorboard" if is_tensorboard_available() else None
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision, log_with=tracker, project_dir=str(output))
    main = accelerator.is_main_process
    if not main:  # one process reports
        emit = lambda event: None  # noqa: E731
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and not config.full:
        raise InputError("a LoRA trains with DDP, not FSDP (its weights are small; the frozen base is replicated)", "use configs/accelerate/ddp.yaml, or pass --full to shard a full finetune")
    if fsdp and config.validate_every:
        raise InputError("validation videos are not supported under FSDP", "leave out --validate-every")

    from fpgen.devices import Placement

    placement = Placement(accelerator.device, _transformer_dtype(config, precision), torch.float16 if cuda else torch.float32)
    with accelerator.main_process_first():
        cached, start, report = cache_data(config, clips, files, placement, emit)
    train_clips, held_out = split_holdout(cached, config.holdout, config.seed)
    order = files.spec.order
    refs = sample_refs(train_clips, config.window, order)
    batch_order = BatchOrder([layout_key(train_clips, r) for r in refs], config.batch_size, config.seed)
    eval_batches = [build_batch([r], held_out, config.window, order) for r in sample_refs(held_out, config.window, order)]

    transformer, adapted = build_transformer(config, files.paths["transformer"], placement.transformer_dtype, cuda)
    parameters = adapters.trainable_parameters(transformer)
    objective = FlowMatchingLoss(transformer, config.guidance)
    optimizer = make_optimizer(parameters, config)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    # Stepped once per optimizer step here (accelerate's wrapper would step it once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lambda s: lr_factor(s, config.warmup_steps, config.max_steps, config.lr_scheduler))
    counter = StepCounter(accelerator.num_processes, config.grad_accum)
    accelerator.register_for_checkpointing(scheduler, counter)
    info = json.dumps({"base_model": config.model, "order": order, "window": config.window, "rank": config.rank, "alpha": config.lora_alpha, "guidance": config.guidance})

    if not config.full:  # checkpoints hold the LoRA, not the 13B base
        def save_hook(models, weights, folder):
            if main:
                write_lora(Path(folder) / LORA_FILE, adapters.lora_of(transformer, config.lora_alpha, info))
            weights.clear()

        def load_hook(models, folder):
            adapters.set_lora(transformer, read_lora(Path(folder) / LORA_FILE)[0])
            models.clear()

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    if main:
        output.mkdir(parents=True, exist_ok=True)
        if not resume:  # a new run, or one that never reached a checkpoint: start its records afresh
            save_run(config, output / RUN_FILE)
            for stale in (LOG_FILE, EVAL_FILE):
                (output / stale).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    checkpoint = latest_checkpoint(output) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        if main:
            _truncate_log(output / LOG_FILE, counter.step)
            _truncate_log(output / EVAL_FILE, counter.step)
    if tracker:
        accelerator.init_trackers("fpgen-finetune", config={k: str(v) for k, v in config.to_json().items()})

    from fpgen.loading import load_vae

    vae = load_vae(files.paths["vae"], placement.encoder_dtype, accelerator.device) if (config.validate_every and main) else None
    result = TrainResult(output, output / LORA_FILE, counter.step, cache=report, main=main)
    what = "every weight" if config.full else f"a rank-{config.rank} LoRA on {len(adapted)} linears"
    emit(Started(what, len(train_clips), len(held_out), len(refs), sum(p.numel() for p in parameters), str(accelerator.device), precision, counter.step, config.max_steps, order))

    def save(step: int) -> None:
        final = output / CHECKPOINTS / f"step-{step:07d}"
        partial = final.with_name(final.name + ".partial")
        if final.exists():
            return
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if main:
            os.replace(partial, final)
            for old in sorted(p for p in (output / CHECKPOINTS).glob("step-*") if p.is_dir() and not p.name.endswith(".partial"))[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        emit(Saved(step, final))

    def evaluate(step: int) -> None:
        if not eval_batches:
            return
        objective.eval()
        loss = evaluation_loss(objective, eval_batches, config.shift, config.seed)
        objective.train()
        result.eval_losses.append((step, loss))
        if main:
            _append(output / EVAL_FILE, {"step": step, "eval_loss": loss, "sections": len(eval_batches)})
            if tracker:
                accelerator.log({"eval_loss": loss}, step=step)
        emit(Evaluated(step, loss))

    def validate(step: int) -> None:
        if vae is None or start is None:
            return
        from fpgen.training.validation import validation_video

        transformer.eval()
        # A LoRA on a bf16 base generates as `fpgen generate` does; float32 weights (--full) and an fp8 base need autocast.
        with torch.no_grad(), (accelerator.autocast() if config.full or config.fp8_base else nullcontext()):
            path = validation_video(transformer, vae, start, config, files, placement, output / "validation" / f"step-{step:07d}.mp4")
        transformer.train()
        emit(Validated(step, path))

    def micro_batch(n: int) -> tuple[int, Batch]:
        epoch, indices = batch_order(n)
        return epoch, build_batch([refs[i] for i in indices], train_clips, config.window, order)

    clipped = list(objective.parameters()) if fsdp else parameters  # under FSDP accelerate clips the wrapped (sharded) parameters
    if counter.step == 0:
        evaluate(0)
        if config.validate_every:
            validate(0)
    last_time = time.perf_counter()
    try:
        with stop_requests(accelerator):
            while counter.step < config.max_steps:
                total, epoch = accumulate_gradients(accelerator, objective, counter.step, config, micro_batch)
                grad_norm = accelerator.clip_grad_norm_(clipped, config.max_grad_norm) if config.max_grad_norm > 0 else None
                lr = scheduler.get_last_lr()[0]  # the rate this step uses
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                counter.step += 1
                step = counter.step

                loss_value = accelerator.reduce(total, "mean").item()
                result.losses.append(loss_value)
                if step % config.log_every == 0 or step == config.max_steps:
                    now = time.perf_counter()
                    peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**30 if cuda else None
                    row = Logged(step, loss_value, lr, float(grad_norm) if grad_norm is not None else None, epoch, (now - last_time) / config.log_every, peak)
                    last_time = now
                    if main:
                        _append(output / LOG_FILE, {"step": step, "loss": row.loss, "lr": row.lr, "grad_norm": row.grad_norm, "epoch": epoch,
                                                    "s_per_step": round(row.seconds_per_step, 4), "peak_memory_gb": peak})  # fmt: skip
                        if tracker:
                            accelerator.log({"loss": row.loss, "lr": row.lr}, step=step)
                    emit(row)
                if step % config.save_every == 0 or step == config.max_steps:
                    save(step)
                if config.eval_every and step % config.eval_every == 0 and step != config.max_steps:
                    evaluate(step)
                if config.validate_every and step % config.validate_every == 0:
                    validate(step)
                if accelerator.check_trigger():
                    save(step)
                    raise Interrupted(f"training stopped at step {step}; the checkpoint is in {output / CHECKPOINTS}", "continue with the same command and --resume")
    except torch.OutOfMemoryError:
        raise OutOfMemoryError(
            f"out of memory at step {counter.step + 1}",
            "try --gradient-checkpointing, --fp8-base, --offload-activations, a smaller --size or --batch-size; then --resume",
        ) from None

    if not result.eval_losses or result.eval_losses[-1][0] != counter.step:
        evaluate(counter.step)
    accelerator.wait_for_everyone()
    if config.full:
        state = accelerator.get_state_dict(objective)
        if main:
            save_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            _write_full_model(state, accelerator.unwrap_model(objective).transformer, output, save_dtype, {"order": order, "base_model": config.model, "steps": counter.step})
        result.weights = output
    elif main:
        write_lora(output / LORA_FILE, adapters.lora_of(transformer, config.lora_alpha, info))
    if tracker:
        accelerator.end_training()
    result.steps, result.elapsed = counter.step, time.perf_counter() - started_at
    return result
