"""Everything a run needs before its first step: packages, precision and placement, the cached data, and the trainee.

The trainee is the transformer with what is trained made trainable (a peft LoRA, or every weight
for ``--full``), its memory options (fp8 base, gradient checkpointing, activation offload,
compiled blocks), the flow-matching objective, the optimizer and the learning-rate schedule, all
prepared by accelerate.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from fpgen.errors import InputError
from fpgen.lora import Lora
from fpgen.training import adapters, memory
from fpgen.hub import ModelFiles, find_model
from fpgen.registry import resolve_model
from fpgen.runtime import RuntimePlan, choose_device
from fpgen.training.cache import CacheReport, CacheSettings, CachedClip, CachedStart, build_cache, text_entry
from fpgen.training.checkpoint import StepCounter, is_fsdp
from fpgen.training.config import TrainConfig
from fpgen.training.ema import Ema
from fpgen.training.data import Clip, default_cache_dir, discover_clips
from fpgen.training.events import CacheProgress, ClipsSkipped, Listener, ignore
from fpgen.training.objective import FlowMatchingLoss
from fpgen.training.samples import SampleOptions, seeded


def model_files(config: TrainConfig) -> ModelFiles:
    family = resolve_model(config.model).family
    if not family.trainable:
        raise InputError(f"fpgen finetune trains FramePack models; {config.model} is a {family.lora_kind} model, whose training (UMT5 and Wan VAE cache, its own timestep sampling) fpgen does not have yet", "train a FramePack model (--model framepack or framepack-f1); Helios LoRAs trained elsewhere load with fpgen generate --lora")
    files = find_model(config.model, config.model_dir)
    if config.one_frame and files.spec.order != "inverted":
        raise InputError(f"--one-frame trains for fpgen edit, which needs the original FramePack model; {config.model} makes its sections forwards", "use --model framepack")
    return files


# ---------------------------------------------------------------------------------------------- precision and accelerate


def wants_cuda(config: TrainConfig) -> bool:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but PyTorch sees no CUDA GPU", "use --device cpu, or install a CUDA build of torch")
    return config.device != "cpu" and torch.cuda.is_available()


def precision(config: TrainConfig, cuda: bool) -> str:
    """bf16 autocast on CUDA (and always with an fp8 base, which computes in bf16), float32 on the CPU."""
    if config.mixed_precision == "auto":
        return "bf16" if cuda or config.fp8_base else "no"
    return config.mixed_precision


def make_accelerator(config: TrainConfig, cuda: bool, mixed_precision: str):
    """accelerate for this run (the launcher decides DDP or FSDP), and whether it logs to TensorBoard."""
    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available

    tracker = "tensorboard" if is_tensorboard_available() else None
    accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed_precision, log_with=tracker, project_dir=str(config.output))
    if is_fsdp(accelerator):
        if not config.full:
            raise InputError("a LoRA trains with DDP, not FSDP (its weights are small; the frozen base is replicated)", "use configs/accelerate/ddp.yaml, or pass --full to shard a full finetune")
        if config.validate_every:
            raise InputError("validation videos are not supported under FSDP", "leave out --validate-every")
        if config.ema:
            raise InputError("--ema is not supported under FSDP (the average would be sharded)", "use DDP (configs/accelerate/ddp.yaml), or leave out --ema")
    return accelerator, tracker is not None


def placement(config: TrainConfig, accelerator, cuda: bool, mixed_precision: str) -> RuntimePlan:
    """Full finetunes keep float32 master weights; a LoRA's frozen base is stored in the compute dtype."""
    transformer_dtype = torch.bfloat16 if (mixed_precision == "bf16" and not config.full) else torch.float32
    return RuntimePlan(accelerator.device, transformer_dtype, torch.float16 if cuda else torch.float32, reason="training")


# ---------------------------------------------------------------------------------------------- data


def cache_data(config: TrainConfig, clips: list[Clip], files, placement, on_event: Listener) -> tuple[list[CachedClip], CachedStart | None, CacheReport]:
    """Make sure the cache holds every readable clip (and the validation inputs); only missing entries are encoded."""
    validation = (Path(config.validation_image), config.validation_prompt) if config.validation_image else None
    settings = CacheSettings(config.size, config.resolution, config.window, config.max_sections)
    progress = lambda what, done, total: on_event(CacheProgress(what, done, total))  # noqa: E731
    extra = ("",) if config.caption_dropout else ()  # the empty caption that dropped samples train with
    cached, start, report = build_cache(clips, settings, files, placement, cache_folder(config), validation, progress, extra)
    if report.unreadable:
        on_event(ClipsSkipped(tuple(report.unreadable)))
    if not cached:
        raise InputError(
            f"none of the {len(clips)} clip(s) can be trained on: {len(report.too_short)} shorter than one section, {len(report.unreadable)} unreadable",
            f"a clip needs at least {4 * config.window + 1} frames at --window {config.window}, in a format ffmpeg reads",
        )
    return cached, start, report


def cache_folder(config: TrainConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir(config.data)


def sample_options(config: TrainConfig, files) -> SampleOptions:
    empty = text_entry(cache_folder(config), "", files) if config.caption_dropout else None
    return SampleOptions(config.history, config.caption_dropout, empty, config.cache_in_ram)


def cache_only(config: TrainConfig, on_event: Listener | None = None) -> tuple[list[CachedClip], CacheReport]:
    """``--cache-only``: fill the cache and stop (one process; the encoders run on --device)."""
    config.validate()
    device, transformer_dtype, encoder_dtype = choose_device(config.device)
    cached, _, report = cache_data(config, discover_clips(config.data, config.one_frame), model_files(config), RuntimePlan(device, transformer_dtype, encoder_dtype), on_event or ignore)
    return cached, report


def split_holdout(clips: list[CachedClip], holdout: int, seed: int) -> tuple[list[CachedClip], list[CachedClip]]:
    """(training clips, held-out clips): ``holdout`` clips chosen by the seed."""
    if holdout >= len(clips):
        raise InputError(f"--holdout {holdout} leaves no clip to train on ({len(clips)} usable)", "hold out fewer clips")
    chosen = set(torch.randperm(len(clips), generator=seeded(seed, 2)).tolist()[:holdout])
    return [c for i, c in enumerate(clips) if i not in chosen], [c for i, c in enumerate(clips) if i in chosen]


# ---------------------------------------------------------------------------------------------- the trainee


@dataclass
class Trainee:
    """What training changes and a checkpoint holds: the weights, the optimizer, the schedule and the step."""

    transformer: torch.nn.Module
    objective: torch.nn.Module  # FlowMatchingLoss around the transformer, wrapped by accelerate
    optimizer: torch.optim.Optimizer  # accelerate's wrapper
    scheduler: torch.optim.lr_scheduler.LambdaLR
    counter: StepCounter
    trained: list[str]  # the adapted linears, or every weight's name
    full: bool
    lora_alpha: float
    info: str  # what the LoRA's metadata says about its base model and settings
    ema: Ema | None = None  # --ema: the weights' moving average

    def averaged(self):
        """A context with the averaged weights in place of the trained ones (nothing changes without --ema)."""
        return self.ema.applied() if self.ema else nullcontext()

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return adapters.trainable_parameters(self.transformer)

    def lora(self) -> Lora:
        return adapters.lora_of(self.transformer, self.lora_alpha, self.info)


def build_trainee(config: TrainConfig, accelerator, transformer_path: Path, transformer_dtype: torch.dtype, order: str) -> Trainee:
    transformer, trained = build_transformer(config, transformer_path, transformer_dtype, accelerator.device.type == "cuda")
    objective, optimizer = accelerator.prepare(FlowMatchingLoss(transformer, config.guidance), make_optimizer(adapters.trainable_parameters(transformer), config))
    # Stepped once per optimizer step here (accelerate's wrapper would step it once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lambda s: lr_factor(s, config.warmup_steps, config.max_steps, config.lr_scheduler))
    info = json.dumps({"base_model": config.model, "order": order, "window": config.window, "rank": config.rank, "alpha": config.lora_alpha, "guidance": config.guidance, "one_frame": config.one_frame})
    counter = StepCounter(accelerator.num_processes, config.grad_accum)
    ema = Ema({n: p for n, p in transformer.named_parameters() if p.requires_grad}, config.ema) if config.ema else None  # after prepare: on the device
    return Trainee(transformer, objective, optimizer, scheduler, counter, trained, config.full, config.lora_alpha, info, ema)


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


def make_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise InputError("--optimizer adamw8bit needs bitsandbytes, which is not installed", "pip install bitsandbytes, or use --optimizer adamw") from None
        return bitsandbytes.optim.AdamW8bit(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up, then constant, linear or cosine decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
