"""The settings of a training run: checked before any work, saved as ``run.json``, compared on ``--resume``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fpgen.errors import InputError
from fpgen.geometry import FULL_HISTORY

OPTIMIZERS = ("adamw", "adamw8bit")
SCHEDULERS = ("constant", "linear", "cosine")
MIXED_PRECISION = ("auto", "no", "bf16")
DEVICES = ("auto", "cuda", "cpu")

# Settings that may change between a run and its --resume without changing what is learnt
# (--grad-accum only as checkpoint.StepCounter allows: with the number of processes, to keep the batch).
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "grad_accum", "save_every", "keep_checkpoints", "log_every", "eval_every", "validate_every", "validation_seconds",
     "validation_steps", "device", "cache_dir", "data", "output", "model_dir", "cache_in_ram"}
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    output: Path | None = None  # None only for --cache-only
    model: str = "framepack"
    model_dir: Path | None = None
    # what is trained
    full: bool = False
    rank: int = 32
    alpha: float | None = None  # None: alpha = rank (LoRA scale 1)
    target_modules: str | None = None  # None: fpgen.lora.DEFAULT_TARGETS
    # data
    size: tuple[int, int] | None = None
    resolution: int = 640
    window: int = 9
    max_sections: int | None = None
    holdout: int = 0
    one_frame: bool = False  # DATA is picture pairs; each trains one latent frame in fpgen edit's context
    cache_dir: Path | None = None
    # optimisation
    max_steps: int = 1000
    learning_rate: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    seed: int = 42
    # the objective
    shift: float = 3.0
    guidance: float = 1.0
    # from-scratch training
    history: tuple[int, int, int] = FULL_HISTORY  # frames kept in the 1x, 2x, 4x history slots (fpgen.packing.limit_history)
    caption_dropout: float = 0.0  # share of samples trained with the empty caption (for real CFG)
    ema: float = 0.0  # decay of the weights' moving average; 0: none
    # memory and speed
    cache_in_ram: bool = False
    device: str = "auto"
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    fp8_base: bool = False
    offload_activations: bool = False
    compile: bool = False
    # bookkeeping
    save_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 1
    eval_every: int = 0  # 0: only at the start and the end (when --holdout is set)
    validate_every: int = 0
    validation_image: Path | None = None
    validation_prompt: str = ""
    validation_seconds: float = 2.0
    validation_steps: int = 25

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def validate(self) -> TrainConfig:
        checks = [
            (self.max_steps >= 1, f"--max-steps must be at least 1 (got {self.max_steps})", "e.g. --max-steps 1000"),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0, f"--learning-rate must be positive (got {self.learning_rate})", "e.g. 1e-4 for a LoRA, 1e-5 for --full"),
            (self.rank >= 1, f"--rank must be at least 1 (got {self.rank})", "e.g. --rank 32"),
            (self.alpha is None or self.alpha > 0, f"--alpha must be positive (got {self.alpha})", "leave it out for alpha = rank"),
            (1 <= self.window <= 33, f"--window must be between 1 and 33 (got {self.window})", "the models were trained with 9"),
            (self.max_sections is None or self.max_sections >= 1, f"--max-sections must be at least 1 (got {self.max_sections})", "leave it out to use whole clips"),
            (self.holdout >= 0, f"--holdout must not be negative (got {self.holdout})", "the number of clips kept out of training for the evaluation loss"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})", "e.g. --batch-size 1"),
            (self.grad_accum >= 1, f"--grad-accum must be at least 1 (got {self.grad_accum})", "e.g. --grad-accum 4"),
            (self.optimizer in OPTIMIZERS, f"unknown --optimizer {self.optimizer!r}", "use " + " or ".join(OPTIMIZERS)),
            (self.weight_decay >= 0, f"--weight-decay must not be negative (got {self.weight_decay})", "e.g. 0.01"),
            (self.max_grad_norm >= 0, f"--max-grad-norm must not be negative (got {self.max_grad_norm})", "0 disables clipping"),
            (self.lr_scheduler in SCHEDULERS, f"unknown --lr-scheduler {self.lr_scheduler!r}", "use " + ", ".join(SCHEDULERS)),
            (self.warmup_steps >= 0, f"--warmup-steps must not be negative (got {self.warmup_steps})", "e.g. --warmup-steps 50"),
            (0 <= self.seed < 2**63, f"--seed must be between 0 and 2^63-1 (got {self.seed})", "e.g. --seed 42"),
            (math.isfinite(self.shift) and self.shift > 0, f"--shift must be positive (got {self.shift})", "3.0 is the public recipe; 1.0 samples timesteps logit-normally"),
            (0 <= self.caption_dropout < 1, f"--caption-dropout must be within [0, 1) (got {self.caption_dropout})", "e.g. 0.1 trains one sample in ten without its caption"),
            (0 <= self.ema < 1, f"--ema must be within [0, 1) (got {self.ema})", "e.g. --ema 0.999; 0 disables it"),
            (math.isfinite(self.guidance) and self.guidance > 0, f"--guidance must be positive (got {self.guidance})", "1.0 (the default) trains the plain conditional prediction"),
            (self.device in DEVICES, f"unknown --device {self.device!r}", "use auto, cuda or cpu (several GPUs: accelerate launch)"),
            (self.mixed_precision in MIXED_PRECISION, f"unknown --mixed-precision {self.mixed_precision!r}", "use auto, no or bf16"),
            (not (self.full and self.fp8_base), "--fp8-base cannot be combined with --full", "fp8 storage is for the frozen base of a LoRA"),
            (not (self.fp8_base and self.mixed_precision == "no"), "--fp8-base computes in bf16 and needs --mixed-precision bf16 (or auto)", "leave out --mixed-precision"),
            (self.gradient_checkpointing or not self.offload_activations, "--offload-activations needs --gradient-checkpointing", "it moves the checkpointed activations to the CPU"),
            (not (self.compile and (self.fp8_base or self.offload_activations)), "--compile does not combine with --fp8-base or --offload-activations", "their per-layer hooks defeat it; drop one"),
            (self.save_every >= 0, f"--save-every must not be negative (got {self.save_every})", "e.g. --save-every 250; 0 writes a checkpoint only when stopped"),
            (self.keep_checkpoints >= 1, f"--keep-checkpoints must be at least 1 (got {self.keep_checkpoints})", "the newest ones are kept"),
            (self.log_every >= 1, f"--log-every must be at least 1 (got {self.log_every})", "e.g. --log-every 1"),
            (self.eval_every >= 0, f"--eval-every must not be negative (got {self.eval_every})", "0 evaluates at the start and the end only"),
            (self.validate_every >= 0, f"--validate-every must not be negative (got {self.validate_every})", "0 disables validation videos"),
            (self.validate_every == 0 or self.validation_image is not None, "--validate-every needs --validation-image", "give the start picture of the validation video"),
            (not (self.one_frame and self.validate_every), "--validate-every makes videos, which --one-frame does not train for", "check the LoRA with fpgen edit --lora instead"),
            (not (self.one_frame and self.history != FULL_HISTORY), "--history does not apply to --one-frame", "one-frame samples use fpgen edit's history slots; leave out --history"),
            (self.validation_seconds > 0 and self.validation_steps >= 1, "--validation-seconds and --validation-steps must be positive", "e.g. --validation-seconds 2 --validation-steps 25"),
        ]  # fmt: skip
        for ok, message, hint in checks:
            if not ok:
                raise InputError(message, hint)
        if self.validation_image is not None and not Path(self.validation_image).is_file():
            raise InputError(f"validation image not found: {self.validation_image}", "check the path")
        return self

    # ------------------------------------------------------------------ run.json

    def to_json(self) -> dict:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
            elif isinstance(value, tuple):
                data[key] = list(value)
        return data

    @staticmethod
    def from_json(data: dict) -> TrainConfig:
        known = {f.name: f for f in fields(TrainConfig)}
        values = {}
        for key, value in data.items():
            if key not in known:
                continue
            if key in ("data", "output", "model_dir", "cache_dir", "validation_image") and value is not None:
                value = Path(value)
            elif key in ("size", "history") and value is not None:
                value = tuple(value)
            values[key] = value
        return TrainConfig(**values)

    def differences(self, saved: TrainConfig) -> list[str]:
        """Settings that would change what is learnt, compared with the run being resumed."""
        out = []
        for field in fields(TrainConfig):
            if field.name in RESUMABLE_CHANGES and not (field.name == "max_steps" and self.lr_scheduler != "constant"):
                continue  # a decaying schedule is laid out over --max-steps, so it must stay
            mine, theirs = getattr(self, field.name), getattr(saved, field.name)
            if mine != theirs:
                out.append(f"--{field.name.replace('_', '-')} {theirs} -> {mine}")
        return out


def save_run(config: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n")


def load_run(path: Path) -> TrainConfig:
    return TrainConfig.from_json(json.loads(path.read_text()))
