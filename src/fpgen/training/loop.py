"""The training loop, on accelerate: one GPU, the CPU, or several GPUs through ``accelerate launch``.

A run is: check the output folder, make sure the cache is complete (the main process encodes, the
others then find it), load only the transformer, inject the LoRA (or make every weight trainable),
and optimise. Each step takes ``grad_accum`` micro-batches per process; micro-batch ``n`` is fixed
by the seed (``samples.BatchOrder``) and so are its timesteps and noise (``samples.seeded``), so
a run resumed from a checkpoint (``checkpoint``) continues exactly as if it had never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fpgen.errors import Interrupted, OutOfMemoryError
from fpgen.training import setup
from fpgen.training.cache import CacheReport, CachedStart
from fpgen.training.checkpoint import CHECKPOINTS, LORA_FILE, Checkpoints, check_output, check_room, is_fsdp, latest_checkpoint, write_result
from fpgen.training.config import TrainConfig
from fpgen.training.data import discover_clips
from fpgen.training.events import Evaluated, Listener, Logged, RunLog, Saved, SilentLog, Started, Validated
from fpgen.training.objective import draw, evaluation_loss
from fpgen.training.samples import Batch, TrainingSamples, evaluation_batches, seeded
from fpgen.training.stopping import StopRequests


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


def train(config: TrainConfig, resume: bool = False, on_event: Listener | None = None) -> TrainResult:
    """Train as ``config`` says; returns where the result is. Raises ``Interrupted`` after Ctrl-C or SIGTERM."""
    config.validate()
    check_output(config, resume)
    started_at, output = time.perf_counter(), Path(config.output)
    with StopRequests() as stop:
        # -- the data, the model's files and the devices: bad ones fail before any folder is made
        cuda = setup.wants_cuda(config)
        precision = setup.precision(config, cuda)
        clips, files = discover_clips(config.data, config.one_frame), setup.model_files(config)
        accelerator, tracking = setup.make_accelerator(config, cuda, precision)
        main = accelerator.is_main_process
        log = RunLog(output, on_event, accelerator if tracking else None) if main else SilentLog(output, None)
        placement = setup.placement(config, accelerator, cuda, precision)

        # -- the cache: only what is missing is encoded, by the main process; a stop waits for the clip at hand
        if resume:
            stop.keep(f"the checkpoints in {output / CHECKPOINTS}", "continue with the same command and --resume")
        else:
            stop.keep(f"the cache entries made so far, in {setup.cache_folder(config)}", "run the same command again: the cache is reused")
        with accelerator.main_process_first():
            cached, start, report = setup.cache_data(config, clips, files, placement, lambda event: (log.event(event), stop.check()))
        train_clips, held_out = setup.split_holdout(cached, config.holdout, config.seed)
        samples = TrainingSamples(train_clips, config.batch_size, config.window, files.spec.order, config.seed, setup.sample_options(config, files))
        eval_batches = evaluation_batches(held_out, config.window, files.spec.order, config.history)

        # -- the trainee (model, optimizer, schedule, step), resumed from the last checkpoint
        trainee = setup.build_trainee(config, accelerator, files.paths["transformer"], placement.transformer_dtype, files.spec.order)
        checkpoints = Checkpoints(accelerator, output, config.keep_checkpoints, trainee)
        check_room(output, trainee, config, precision)
        log.start(config, checkpoints.resume(latest_checkpoint(output)) if resume else None)
        validator = Validator.load(config, files, placement, start, accelerator) if (config.validate_every and start and main) else None
        result = TrainResult(output, output / LORA_FILE, trainee.counter.step, cache=report, main=main)
        what = "every weight" if config.full else f"a rank-{config.rank} LoRA on {len(trainee.trained)} linears"
        log.event(Started(what, len(train_clips), len(held_out), len(samples.refs), sum(p.numel() for p in trainee.parameters),
                          str(accelerator.device), precision, trainee.counter.step, config.max_steps, files.spec.order))  # fmt: skip
        stop.check()
        if trainee.counter.step == 0:  # where training starts from
            evaluate(trainee, eval_batches, config, log, result)
            validate(validator, trainee, log)
        clipped = list(trainee.objective.parameters()) if is_fsdp(accelerator) else trainee.parameters  # FSDP clips the sharded ones

        last_log = time.perf_counter()
        try:
            while trainee.counter.step < config.max_steps:
                # -- one optimizer step over this step's micro-batches (of every process)
                total, epoch = accumulate_gradients(accelerator, trainee.objective, trainee.counter.step, config, samples)
                grad_norm = accelerator.clip_grad_norm_(clipped, config.max_grad_norm) if config.max_grad_norm > 0 else None
                lr = trainee.scheduler.get_last_lr()[0]  # the rate this step uses
                trainee.optimizer.step()
                if trainee.ema:
                    trainee.ema.update(trainee.counter.step)
                trainee.scheduler.step()
                trainee.optimizer.zero_grad(set_to_none=True)
                trainee.counter.step += 1
                step = trainee.counter.step

                # -- the loss, every --log-every steps
                result.losses.append(accelerator.reduce(total, "mean").item())
                if step % config.log_every == 0 or step == config.max_steps:
                    now, peak = time.perf_counter(), torch.cuda.max_memory_allocated(accelerator.device) / 2**30 if cuda else None
                    log.logged(Logged(step, result.losses[-1], lr, None if grad_norm is None else float(grad_norm), epoch, (now - last_log) / config.log_every, peak))
                    last_log = now

                # -- checkpoint, held-out loss, validation video
                if config.save_every and (step % config.save_every == 0 or step == config.max_steps):
                    save(checkpoints, step, log, stop)
                if config.eval_every and step % config.eval_every == 0 and step != config.max_steps:
                    evaluate(trainee, eval_batches, config, log, result)
                if config.validate_every and step % config.validate_every == 0:
                    validate(validator, trainee, log)

                # -- a requested stop (Ctrl-C, SIGTERM on any process) ends every process at this step
                if stop.agreed(accelerator):
                    save(checkpoints, step, log, stop)
                    raise Interrupted(f"training stopped at step {step}; the checkpoint is in {output / CHECKPOINTS}", "continue with the same command and --resume")
        except torch.OutOfMemoryError:
            raise OutOfMemoryError(
                f"out of memory at step {trainee.counter.step + 1}",
                "try --gradient-checkpointing, --fp8-base, --offload-activations, a smaller --size or --batch-size; then --resume",
            ) from None

        # -- the result: the final held-out loss and the weights
        if not result.eval_losses or result.eval_losses[-1][0] != trainee.counter.step:
            evaluate(trainee, eval_batches, config, log, result)
        accelerator.wait_for_everyone()
        with trainee.averaged():
            result.weights = write_result(accelerator, trainee, output, torch.bfloat16 if precision == "bf16" else torch.float32, config.model, files.spec.order)
        log.finish()
        result.steps, result.elapsed = trainee.counter.step, time.perf_counter() - started_at
        return result


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


def save(checkpoints: Checkpoints, step: int, log: RunLog, stop: StopRequests) -> None:
    path = checkpoints.save(step)
    if path is not None:
        log.event(Saved(step, path))
        stop.keep(f"the checkpoint of step {step}, {path}", "continue with the same command and --resume")


def evaluate(trainee: setup.Trainee, batches: list[Batch], config: TrainConfig, log: RunLog, result: TrainResult) -> None:
    """The held-out loss at the step the trainee is at (nothing without --holdout)."""
    if not batches:
        return
    trainee.objective.eval()
    with trainee.averaged():
        loss = evaluation_loss(trainee.objective, batches, config.shift, config.seed)
    trainee.objective.train()
    result.eval_losses.append((trainee.counter.step, loss))
    log.evaluated(Evaluated(trainee.counter.step, loss), len(batches))


def validate(validator: Validator | None, trainee: setup.Trainee, log: RunLog) -> None:
    if validator is not None:
        with trainee.averaged():
            log.event(Validated(trainee.counter.step, validator.video(trainee.transformer, trainee.counter.step)))


@dataclass
class Validator:
    """The validation videos of a run (the main process makes them): the VAE, loaded once, and the cached inputs."""

    components: object  # fpgen.loading.Components with the VAE loaded; the transformer is the one being trained
    start: CachedStart
    config: TrainConfig
    autocast: Callable  # a context: bf16 autocast where the weights are not in the compute dtype

    @classmethod
    def load(cls, config: TrainConfig, files, placement, start: CachedStart, accelerator) -> Validator:
        from fpgen.loading import Components

        components = Components(files, placement).load_vae()
        # A LoRA on a bf16 base generates as `fpgen generate` does; float32 weights (--full) and an fp8 base need autocast.
        return cls(components, start, config, accelerator.autocast if config.full or config.fp8_base else nullcontext)

    def video(self, transformer: torch.nn.Module, step: int) -> Path:
        from fpgen.training.validation import validation_video

        transformer.eval()
        with torch.no_grad(), self.autocast():
            path = validation_video(self.components.use_transformer(transformer), self.start, self.config, Path(self.config.output) / "validation" / f"step-{step:07d}.mp4")
        transformer.train()
        return path
