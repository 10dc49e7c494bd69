"""``fpgen calibrate`` (MagCache's ratios from your own weights) and ``fpgen warmup`` (compile caches built ahead)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from fpgen.cli import app
from fpgen.errors import DiskFullError, InputError, Interrupted, OutOfMemoryError

CALIBRATE_EXAMPLES = """
Examples:

  fpgen calibrate face.png                      (FramePack, 25 steps, the picture's 640 bucket)

  fpgen calibrate face.png -m framepack-f1 --steps 30 --size 640x608

  fpgen generate face.png -p "A dog runs" --step-cache magcache   (uses it from then on)
"""

WARMUP_EXAMPLES = """
Examples:

  fpgen warmup --dry-run             (what would be compiled, and where)

  fpgen warmup                       (exact mode, the usual 640 buckets)

  fpgen warmup --fast --size 640x608 --size 480x832 --json
"""


@app.command(epilog=CALIBRATE_EXAMPLES)
def calibrate(
    image: Path = typer.Argument(..., help="A start picture like yours: the video's first frame.", show_default=False),
    prompt: str = typer.Option("A person moves naturally, with clear movements.", "--prompt", "-p", help="A prompt like yours."),
    seconds: float = typer.Option(2.0, "--seconds", "-s", help="Length of the calibration video: the ratios are averaged over its sections."),
    seed: int = typer.Option(31337, "--seed", help="Noise seed."),
    steps: int | None = typer.Option(None, "--steps", help="Sampling steps per section: calibrate once per step count you use. [default: the model's, 25 for FramePack]", show_default=False),
    window: int | None = typer.Option(None, "--window", help="Latent frames per section. [default: the model's, 9 for FramePack]", show_default=False),
    model: str = typer.Option("framepack", "--model", "-m", help="framepack, framepack-f1, a Hub repo id or a local transformer folder."),
    lora: list[str] = typer.Option([], "--lora", help="A LoRA merged in as for generate, PATH[:SCALE]; repeatable (ratios are kept per LoRA set)."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="A folder made by `fpgen download --local-dir`."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit of the transformer repo in the HF cache."),
    resolution: int = typer.Option(640, "--resolution", help="Size bucket class."),
    size: str | None = typer.Option(None, "--size", help="Exact size HEIGHTxWIDTH (multiples of 16); overrides the bucket."),
    device: str = typer.Option("auto", "--device", help="auto, cuda, cuda:N or cpu."),
    dtype: str = typer.Option("auto", "--dtype", help="Transformer compute dtype: auto, bfloat16 or float32."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Measure MagCache's per-step magnitude ratios with your own weights and keep them for --step-cache magcache.

    Makes one short video with every pass computed (at generate's cost: on an H200 about 0.8 s per step and section), records how the blocks' output residual grows from step to step, and stores the ratios in ~/.cache/fpgen/magcache/, keyed by the transformer's files, the LoRAs and the step schedule (steps and shift; at FramePack's usual sizes the shift is the same for every bucket).
    """
    from fpgen.cli.report import Reporter
    from fpgen.config import resolve, step_cache_key
    from fpgen.loading import Components
    from fpgen.run import run_job
    from fpgen.spec import JobSpec
    from fpgen.stepcache import MagnitudeRecorder, save_calibration

    report = Reporter(json_output, quiet)
    with tempfile.TemporaryDirectory(prefix="fpgen-calibrate-") as work:
        options = {
            "image": image, "prompt": prompt, "seconds": seconds, "seed": seed, "steps": steps, "window": window, "model": model,
            "lora": lora, "model_dir": model_dir, "revision": revision, "resolution": resolution, "size": size, "device": device,
            "dtype": dtype, "step_cache": "none", "output": Path(work) / "calibration.mp4",
        }  # fmt: skip
        job = resolve(JobSpec.from_options(options), overwrite=True)  # every check before the models load
        if "step_cache" in dict(job.model.spec.family.refuses):
            raise InputError(f"{job.model.spec.name} has no step cache to calibrate", "calibrate a FramePack model (framepack, framepack-f1)")
        settings, (height, width) = job.settings, job.pictures.size
        report.info(f"loading {job.model.spec.name} ...")
        report.info(job.runtime.describe())
        components = Components(job.model, job.runtime, job.loras).load()
        if components.blocks is None:
            components.load_transformer()
        recorder = MagnitudeRecorder(settings.steps)
        components.blocks.hooks.append(recorder)
        report.info(f"calibrating: {job.plan.count} section(s) of {settings.steps} steps at {height}x{width}, every pass computed")
        try:
            with report.job_progress(job.plan.count, settings.steps, settings.window) as progress:
                run_job(components, job, progress)
        except (Interrupted, OutOfMemoryError, DiskFullError) as stop:  # its job folder goes with the temporary one: nothing to resume
            raise type(stop)(stop.message, "nothing was kept; run the same fpgen calibrate again") from stop
        recorder.reset()  # the last section's ratios join the others
    ratios = recorder.ratios()
    about = {"model": job.spec.model, "loras": list(job.spec.lora), "steps": settings.steps, "window": settings.window, "size": f"{height}x{width}", "sections": recorder.sections}
    path = save_calibration(step_cache_key(job.spec, job.model, (height, width)), ratios, about)
    shown = " ".join(f"{r:.3f}" for r in ratios)
    report.result({"path": str(path), "ratios": list(ratios), **about}, f"{path}\n  ratios per step: {shown}")


@app.command(epilog=WARMUP_EXAMPLES)
def warmup(
    size: list[str] = typer.Option([], "--size", help="A size HEIGHTxWIDTH to compile for; repeatable. [default: the 640 buckets of 1:1, 3:4, 4:3, 9:16 and 16:9 pictures]", show_default=False),
    resolution: int = typer.Option(640, "--resolution", help="Size bucket class of the default sizes."),
    fast: bool = typer.Option(False, "--fast", help="Compile fast mode's kernels (FP8) instead of the exact mode's."),
    model: str = typer.Option("framepack", "--model", "-m", help="The model whose blocks to compile (framepack and framepack-f1 share their kernels)."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="A folder made by `fpgen download --local-dir`."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit of the transformer repo in the HF cache."),
    device: str = typer.Option("auto", "--device", help="auto, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="Transformer compute dtype: auto (bf16 on CUDA), bfloat16 or float32."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and the cache folder; compile nothing."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Build the torch.compile caches ahead, so that the first video of a new process starts within seconds.

    Runs one thrown-away section of two steps per size (on an H200 the first compile takes about 17 s in exact mode, 26 s in fast mode; each further size a few seconds). The kernels go to ~/.cache/fpgen/inductor/<torch>-<GPU>-<dtype>-<rounding>/, where fpgen generate looks for them.
    """
    from fpgen.buckets import parse_size
    from fpgen.cli.report import Reporter
    from fpgen.runtime import choose_device
    from fpgen.warmup import plan_warmup, run_warmup, usual_sizes

    report = Reporter(json_output, quiet)
    sizes = tuple(dict.fromkeys(parse_size(text) for text in size)) or usual_sizes(resolution)
    chosen, transformer_dtype, _ = choose_device(device, dtype)
    plan = plan_warmup(chosen, transformer_dtype, fast, sizes)
    listing = plan.describe()
    lines = [f"compile cache: {listing['cache']} ({listing['cached_files']} files now)"] + [f"  {run['size']}: one section of {run['steps']} steps" for run in listing["runs"]]
    if dry_run:
        report.result({**listing, "dry_run": True}, "\n".join(lines))
        return
    if chosen.type != "cuda":
        raise InputError("fpgen warmup compiles kernels for CUDA GPUs, and this run has none", "see the plan with --dry-run, or run it where fpgen generate will run")
    from fpgen.hub import find_model
    from fpgen.loading import Components
    from fpgen.runtime import plan_runtime
    from fpgen.spec import RuntimeRequest

    files = find_model(model, model_dir, revision=revision)
    runtime = plan_runtime(RuntimeRequest(device, dtype, fast), files.paths["transformer"])
    report.info(f"loading {files.spec.name} ...")
    report.info(runtime.describe())
    components = Components(files, runtime).load()
    options = {"model": model, "model_dir": model_dir, "revision": revision, "device": device, "dtype": dtype}
    run_warmup(plan, components, options, lambda run: report.info(f"compiling for {run['size']} ..."))
    done = plan.describe()
    report.result({**done, "dry_run": False}, f"compile cache: {done['cache']} ({done['cached_files']} files)")
