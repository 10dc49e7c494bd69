"""``fpgen finetune``: parse the options, check them, train, report (rich on a terminal, plain lines otherwise)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fpgen.cli import app

EXAMPLES = """
Examples:

  fpgen finetune clips/ --output runs/dance --max-steps 1500

  fpgen finetune clips.jsonl -o runs/dance --rank 16 --size 480x832 --validate-every 250 --validation-image face.png --validation-prompt "she dances"

  fpgen finetune clips/ -o runs/dance --resume --max-steps 3000

  fpgen finetune clips/ --cache-only

  fpgen finetune pairs/ --one-frame -o runs/smile --max-steps 500   (then: fpgen edit face.png -p "she smiles" --lora runs/smile/lora.safetensors)

  fpgen finetune demo/train -o runs/scratch --full --model-dir hub --ema 0.999 --caption-dropout 0.1 --history 1,0,0

  accelerate launch -m fpgen finetune clips/ -o runs/full --full --learning-rate 1e-5
"""


@app.command(epilog=EXAMPLES)
def finetune(
    ctx: typer.Context,
    data: Path = typer.Argument(..., help="A folder of videos with same-named .txt captions, or a .jsonl/.csv of {video, caption}."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder of the run (new or empty; with --resume, the run's folder): lora.safetensors, log.jsonl, checkpoints/."),
    model: str = typer.Option("framepack", "--model", "-m", help="Base model: framepack (inverted sections), framepack-f1 (forward), a Hub repo id or a local transformer folder."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="A folder made by `fpgen download --local-dir` to load the models from."),
    full: bool = typer.Option(False, "--full", help="Train every weight of the transformer instead of a LoRA; writes a diffusers model folder."),
    rank: int = typer.Option(32, "--rank", help="LoRA rank."),
    alpha: float | None = typer.Option(None, "--alpha", help="LoRA alpha; the update is scaled by alpha/rank [default: the rank, scale 1]."),
    target_modules: str | None = typer.Option(None, "--target-modules", help="Linears to adapt: a comma list of name endings (to_q,to_k,to_v) or a regex over module names [default: attention and MLP linears of every block]."),
    size: str | None = typer.Option(None, "--size", help="Train at one size HEIGHTxWIDTH (multiples of 16) instead of per-clip buckets."),
    resolution: int = typer.Option(640, "--resolution", help="Size bucket class; each clip is resized and centre-cropped to its nearest bucket."),
    window: int = typer.Option(9, "--window", help="Latent frames per section (9 = 33 video frames), as in generation."),
    max_sections: int | None = typer.Option(None, "--max-sections", help="Use at most this many sections of each clip (its start)."),
    one_frame: bool = typer.Option(False, "--one-frame", help="Train a LoRA for `fpgen edit` from picture pairs: DATA holds NAME.png, NAME.target.png (the edit) and NAME.txt (its prompt)."),
    holdout: int = typer.Option(0, "--holdout", help="Clips kept out of training; their loss is logged to eval.jsonl."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where the latents and embeddings are cached [default: .fpgen-cache next to DATA]."),
    cache_only: bool = typer.Option(False, "--cache-only", help="Only encode the clips and captions into the cache, then stop."),
    max_steps: int = typer.Option(1000, "--max-steps", help="Optimizer steps to train for (in total, counting those of a resumed run)."),
    learning_rate: float = typer.Option(1e-4, "--learning-rate", "--lr", help="Peak learning rate."),
    batch_size: int = typer.Option(1, "--batch-size", help="Sections per micro-batch and process (sections of one size and layout are batched together)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, or adamw8bit (needs bitsandbytes)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping norm; 0 disables it."),
    lr_scheduler: str = typer.Option("constant", "--lr-scheduler", help="constant, linear or cosine (decaying over --max-steps), after the warm-up."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Steps of linear learning-rate warm-up."),
    seed: int = typer.Option(42, "--seed", help="Seeds the LoRA's initialisation, the data order, timesteps and noise."),
    shift: float = typer.Option(3.0, "--shift", help="Timestep shift: t' = shift*t/(1+(shift-1)*t) over logit-normal t; 3.0 is the public recipe."),
    guidance: float = typer.Option(1.0, "--guidance", help="Distilled guidance fed while training; 1.0 trains the plain conditional prediction (generation still uses 10)."),
    history: str = typer.Option("1,2,16", "--history", metavar="N1,N2,N4", help="Frames kept in the 1x, 2x and 4x packed-history slots of each sample, the rest blank (1,0,0: short history; generate with the same --history)."),
    caption_dropout: float = typer.Option(0.0, "--caption-dropout", help="Share of samples trained with the empty caption, so that --cfg above 1 works on the result (e.g. 0.1)."),
    ema: float = typer.Option(0.0, "--ema", metavar="DECAY", help="Keep a moving average of the weights (e.g. 0.999; checkpoints hold it too): the held-out loss, validation videos and the result use it. 0: off."),
    cache_in_ram: bool = typer.Option(False, "--cache-in-ram", help="Keep the cached latents and embeddings in memory after their first read (small-resolution data: no disk read per sample)."),
    device: str = typer.Option("auto", "--device", help="auto, cuda or cpu (several GPUs: accelerate launch)."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (bf16 on CUDA, none on CPU), no or bf16."),
    gradient_checkpointing: bool = typer.Option(True, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute block activations in the backward pass: far less memory, about a third more compute."),
    fp8_base: bool = typer.Option(False, "--fp8-base", help="Store the frozen base's block linears in float8 (half the memory, some precision lost); LoRA only."),
    offload_activations: bool = typer.Option(False, "--offload-activations", help="Keep the checkpointed activations in CPU memory."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the transformer blocks on CUDA: faster steps after a one-time compile (not with --fp8-base or --offload-activations)."),
    save_every: int = typer.Option(250, "--save-every", help="Write a resumable checkpoint every N steps and at the end; 0: only when stopped (Ctrl-C), the result alone otherwise."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Checkpoints kept (the newest)."),
    log_every: int = typer.Option(1, "--log-every", help="Log the loss every N steps."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate the held-out loss every N steps (always at the start and the end)."),
    validate_every: int = typer.Option(0, "--validate-every", help="Generate a validation video every N steps (and before training); needs --validation-image."),
    validation_image: Path | None = typer.Option(None, "--validation-image", help="Start picture of the validation videos."),
    validation_prompt: str = typer.Option("", "--validation-prompt", help="Prompt of the validation videos."),
    validation_seconds: float = typer.Option(2.0, "--validation-seconds", help="Length of the validation videos."),
    validation_steps: int = typer.Option(25, "--validation-steps", help="Sampling steps of the validation videos."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint, exactly where it stopped."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Finetune FramePack on your videos: a LoRA (default) or the whole transformer (--full).

    Clips are encoded once into a cache (VAE latents, text and image embeddings), then every section of every clip is a training sample with its history packed exactly as in generation. Ctrl-C stops at the next step with a checkpoint; --resume continues it.
    """
    from fpgen.cli.report import Reporter, TrainingDisplay, cache_summary
    from fpgen.training import loop, setup

    config = config_from_options(ctx.params)
    report = Reporter(json_output, quiet)
    started = time.perf_counter()
    with TrainingDisplay(report) as display:
        if cache_only:
            cached, cache = setup.cache_only(config, display)
            summary = {"cache": cache_summary(cache), "clips": len(cached), "sections": sum(c.sections for c in cached)}
            line = f"cache ready: {len(cached)} clip(s), {summary['sections']} section(s) ({cache.videos_encoded} video(s) and {cache.texts_encoded} caption(s) encoded, {cache.videos_reused + cache.texts_reused} reused)"
        else:
            result = loop.train(config, resume, display)
            if not result.main:
                return
            summary = {
                "output": str(result.output), "weights": str(result.weights), "steps": result.steps,
                "loss_first": result.losses[0] if result.losses else None, "loss_last": result.losses[-1] if result.losses else None,
                "eval_loss": [[s, v] for s, v in result.eval_losses], "cache": cache_summary(result.cache),
            }  # fmt: skip
            line = f"{result.weights}  ({result.steps} steps, {time.perf_counter() - started:.0f} s)"
    summary["elapsed_s"] = round(time.perf_counter() - started, 2)
    report.result(summary, line)


# The options that steer the command rather than the run; every other option is a TrainConfig field of the same name.
COMMAND_OPTIONS = frozenset({"cache_only", "resume", "json_output", "quiet"})


def config_from_options(options: dict):
    """The run's settings from the command's options (by name; ``--size`` is parsed), checked."""
    from fpgen.buckets import parse_size
    from fpgen.spec import parse_history
    from fpgen.training.config import TrainConfig

    settings = {name: value for name, value in options.items() if name not in COMMAND_OPTIONS}
    settings["size"] = parse_size(settings["size"]) if settings["size"] else None  # the options that are not their field's type
    settings["history"] = parse_history(settings["history"])
    return TrainConfig(**settings).validate()
