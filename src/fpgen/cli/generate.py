"""``fpgen generate``: parse the options, check them before any model loads, run, report.

Every option that describes the video (all but the ``RUN_OPTIONS``) is a field of ``JobSpec`` by
the same name, so a new option becomes a batch-file field, a metadata entry and a ``--from``
override by being added here and to ``JobSpec``.
"""

from __future__ import annotations

import difflib
import os
import time
from functools import partial
from pathlib import Path

import typer

from fpgen.cli import app
from fpgen.errors import InputError
from fpgen.prompts import split_keyframes
from fpgen.terminal import printable

EXAMPLES = """
Examples:

  fpgen generate face.png --prompt "The girl dances gracefully" --seconds 5

  fpgen generate face.png -p "A man walks to the door" --seconds 60 --model framepack-f1 -o walk.mp4 --preview

  fpgen generate face.png -p "0s: a man walks in | 3s: he sits down | 6s: he waves" --seconds 8

  fpgen generate face.png --end-image smile.png -p "she turns and smiles" -o turn.mp4

  fpgen generate face.png --keyframe 2.4:wave.png --keyframe 4.8:bow.png -p "she waves, then bows" --seconds 6

  fpgen generate face.png -p "0s: he walks | 4s: he runs" --seconds 8 --prompt-blend 2

  fpgen generate --extend walk.mp4 -p "he opens the door" --seconds 3 -o walk2.mp4

  fpgen generate --resume walk.mp4          (finish a job stopped by Ctrl-C, a crash or out of memory)

  fpgen generate --from walk.mp4 --seed 8   (the same job again, with another seed)

  fpgen generate --jobs jobs.jsonl --json   (one job per line: {"image": "a.png", "prompt": "...", "output": "a.mp4"})

  fpgen generate --jobs jobs.jsonl --gpus 4                (the same jobs spread over 4 GPUs)

  fpgen generate --jobs jobs.jsonl --device cpu --gpus 2   (two CPU workers)

  fpgen generate face.png -p "A dog runs" --seconds 10 --gpus 2   (one video, made faster by two GPUs)

  fpgen generate face.png -p "A dog runs" --fast          # FP8 + TeaCache on a Hopper GPU

  fpgen generate face.png -p "A dog runs" --step-cache magcache   (after: fpgen calibrate face.png)

  fpgen generate face.png -p "A dog runs" --low-vram      # a 6 GB GPU

  fpgen generate face.png -p "A dog runs" --low-vram --ram-budget 16   # a 6 GB GPU and 16 GB of RAM

  fpgen generate face.png -p "A dog runs" --quantize int8  # a 24 GB GPU, transformer resident in int8

  fpgen generate face.png -p "A dog runs" --model FramePackI2V_HY_fp8_e4m3fn.safetensors   # a single file (or .gguf)

  fpgen generate face.png -p "she dances" --lora runs/dance/lora.safetensors:0.8

  fpgen generate face.png -p "waves roll in" --loop --fps 60     (ends on its start picture; 60 fps by interpolation)
"""

RUN_OPTIONS = ("json_output", "quiet", "preview", "overwrite", "resume", "from_video", "jobs", "gpus", "shard", "trust_jobs", "prompts_file")
LONG = "Long jobs"


@app.command(epilog=EXAMPLES)
def generate(
    ctx: typer.Context,
    image: Path | None = typer.Argument(None, help="Start picture (PNG, JPEG, WebP): the video's first frame. Optional with --extend, --from, --resume or --jobs.", show_default=False),
    prompt: str = typer.Option("", "--prompt", "-p", help='What happens in the video. Timed: "0s: a man walks in | 3s: he sits down" (each prompt takes over at the nearest section boundary); "3s: keyframe: pose.png" is a --keyframe.'),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="Read the prompt from a file: one '<seconds>s: <prompt>' (or '<seconds>s: keyframe: <picture>', relative to the file) per line for timed prompts, or plain text."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="What to avoid; used only with --cfg above 1."),
    seconds: float = typer.Option(5.0, "--seconds", "-s", help="Length (of the new part, with --extend); rounded to whole sections of 4*window frames."),
    seed: int = typer.Option(31337, "--seed", help="Noise seed: the same seed and settings give the same video."),
    steps: int | None = typer.Option(None, "--steps", help="Sampling steps per section. [default: the model's, 25 for FramePack]", show_default=False),
    window: int | None = typer.Option(None, "--window", help="Latent frames per section (9 = 33 video frames). [default: the model's, 9 for FramePack]", show_default=False),
    distilled_guidance: float | None = typer.Option(None, "--distilled-guidance", help="Distilled guidance scale fed to the model. [default: the model's, 10 for FramePack]", show_default=False),
    cfg: float | None = typer.Option(None, "--cfg", help="Real classifier-free guidance; above 1 doubles the cost per step. [default: the model's, 1 for FramePack, 5 for helios and helios-mid]", show_default=False),
    guidance_rescale: float = typer.Option(0.0, "--guidance-rescale", help="Guidance rescale for real CFG, 0..1."),
    step_cache: str | None = typer.Option(
        None, "--step-cache", metavar="NAME", help="Skip passes that change little (faster, slightly different): teacache, magcache (after fpgen calibrate), "
        "fbcache or none. [default: teacache with --fast, else none]", show_default=False,
    ),  # fmt: skip
    step_cache_threshold: float | None = typer.Option(None, "--step-cache-threshold", help="Higher skips more; 0 skips nothing. [default: teacache 0.15, magcache 0.06, fbcache 0.05]", show_default=False),
    teacache: bool | None = typer.Option(None, "--teacache/--no-teacache", hidden=True),  # older name of --step-cache teacache/none
    teacache_threshold: float | None = typer.Option(None, "--teacache-threshold", hidden=True),
    end_image: Path | None = typer.Option(
        None, "--end-image", help="Picture to arrive at. framepack: the first section made (the video's end) sees it as the frame right after the video. "
        "framepack-f1: the last section sees it one frame after its window and its last latent frame is pinned to it, so the video ends on it.",
    ),  # fmt: skip
    keyframe: list[str] = typer.Option(
        [], "--keyframe", metavar="TIME:IMAGE", help="A picture the video passes through near TIME seconds (snapped to a section boundary, printed); repeatable. "
        "It enters as --end-image does, for the section that ends there; at the video's end it is the end picture.",
    ),  # fmt: skip
    prompt_blend: int = typer.Option(0, "--prompt-blend", metavar="N", help="A timed prompt change blends the prompt embeddings over N sections instead of switching at once (0: at once)."),
    extend: Path | None = typer.Option(
        None, "--extend", help="Continue this video: the output is the video (re-encoded, at its own size if a multiple of 16) followed by --seconds of new frames, "
        "its last 4*window-3 frames cross-faded with the new part's decode. F1 packs its history from the video's last frames and keeps its first frame (or IMAGE) as the start; "
        "framepack starts from its last frame and sees the frames before it.",
    ),  # fmt: skip
    model: str = typer.Option("framepack", "--model", "-m", help="framepack (original, inverted sections), framepack-f1 (forward), a Hub repo id, a local transformer folder, or a single .safetensors transformer file (bf16 or fp8; 'f1' in its name means FramePack-F1)."),
    lora: list[str] = typer.Option([], "--lora", help="A LoRA to apply, PATH[:SCALE] (scale 1 by default); repeatable. fpgen, diffusers and musubi-tuner FramePack LoRAs."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="A folder made by `fpgen download --local-dir` to load every model from, instead of the HF cache."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit of the model's transformer repo to load from the HF cache (as given to `fpgen download --revision`)."),
    resolution: int = typer.Option(640, "--resolution", help="Size bucket class; the picture is resized and centre-cropped to the nearest bucket."),
    size: str | None = typer.Option(None, "--size", help="Exact size HEIGHTxWIDTH in pixels (multiples of 16), e.g. 640x608; overrides the bucket."),
    history: str | None = typer.Option(None, "--history", metavar="N1,N2,N4", help="Frames kept in the 1x, 2x and 4x packed-history slots, the rest blank: 1,0,0 is the short-history ablation. [default: 1,2,16, the official packing]", show_default=False),
    crf: int = typer.Option(16, "--crf", help="H.264 quality, 0 (lossless) to 51; 16 is the official default."),
    fps: int | None = typer.Option(None, "--fps", help="Output frame rate. One that divides the model's (30; helios 24) drops frames exactly; any other is motion-interpolated by ffmpeg once the video is complete. [default: the model's]", show_default=False),
    interpolate: int = typer.Option(1, "--interpolate", help="Multiply the output frame rate by motion interpolation (2: 60 fps from 30)."),
    color_match: bool | None = typer.Option(None, "--color-match/--no-color-match", help="Match each frame's colours (Lab mean and spread) to the start picture, ramping in over 2 s; frame 0 is never changed. [default: on for framepack-f1 videos over 30 s, else off]", show_default=False),
    loop: bool = typer.Option(False, "--loop", help="End the video where it starts: the start picture is also the end picture (framepack: its first section's future frame; framepack-f1: its last frame pinned)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="MP4 to write [default: outputs/<time>_<seed>.mp4]; its metadata also goes to <name>.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output if it exists (and start over an unfinished job for it)."),
    save_latents: Path | None = typer.Option(None, "--save-latents", help="Also save the video's latents (safetensors, tensor `latents`, time order)."),
    device: str = typer.Option("auto", "--device", help="auto, cuda, cuda:N or cpu."),
    fast: bool = typer.Option(False, "--fast", help="FP8 matmuls, FP8 attention and a step cache (TeaCache unless --step-cache says otherwise): about twice as fast on Hopper GPUs, no longer identical to the official output."),
    low_vram: bool = typer.Option(False, "--low-vram", help="Stream the transformer and text encoder from host memory (under 6 GiB of GPU memory); picked by itself on small cards."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the transformer blocks on CUDA (faster after a one-time compile; needs Triton)."),
    vram_budget: float | None = typer.Option(None, "--vram-budget", help="GPU memory (GiB) fpgen may plan for; low-vram mode is picked when the models do not fit.", show_default=False),
    ram_budget: float | None = typer.Option(
        None, "--ram-budget", help="Host memory (GiB) fpgen may plan for [default: this machine's RAM]; in low-vram mode, below the pinned blocks' need "
        "(about 32 GiB) the blocks and the Llama are read from their memory-mapped files instead.", show_default=False,
    ),  # fmt: skip
    quantize: str | None = typer.Option(
        None, "--quantize", metavar="int8|fp8|nf4|auto", help="Store the transformer blocks' weights quantized (weight-only, needs fpgen[quantize]): int8 is closest to bf16, "
        "nf4 smallest on disk; auto picks int8 when it keeps the transformer on the GPU and bf16 does not (the only kind measured to lower the GPU peak). Output is no longer the official one.", show_default=False,
    ),  # fmt: skip
    dtype: str = typer.Option("auto", "--dtype", help="Transformer compute dtype: auto (bf16 on CUDA, float32 on CPU), bfloat16 or float32."),
    preview: bool = typer.Option(False, "--preview", help="Keep <output>.partial.mp4 playable with everything made so far, updated after each section (framepack makes the end first: the preview is the video's tail).", rich_help_panel=LONG),
    resume: Path | None = typer.Option(None, "--resume", help="Finish an interrupted job with its saved settings: the output path it was started with, or its .job folder.", rich_help_panel=LONG),
    from_video: Path | None = typer.Option(None, "--from", help="Run the job that made this fpgen video again; options given on the command line replace the recorded ones.", rich_help_panel=LONG),
    jobs: Path | None = typer.Option(None, "--jobs", help="Run every job of a JSON Lines or CSV file (fields are option names); options given here are defaults for every job.", rich_help_panel=LONG),
    gpus: str = typer.Option(
        "1", "--gpus", metavar="N|all", help="With --jobs: N worker processes, one per GPU (each sees only its own), each loading its models once and taking "
        "the next job when done; Ctrl-C stops them all, resumable. With --device cpu: N CPU workers, the same way. "
        "Without --jobs: one video made by N GPUs together, each transformer pass split by sequence (each GPU holds all the models).", rich_help_panel=LONG,
    ),  # fmt: skip
    shard: str | None = typer.Option(
        None, "--shard", metavar="K/N", help="With --jobs: run share K (from 0) of N of the file, for N hosts (SLURM arrays, Kubernetes indexed jobs); "
        "under torchrun each process takes share RANK/WORLD_SIZE by itself. Running a share again skips the outputs it made.", rich_help_panel=LONG,
    ),  # fmt: skip
    trust_jobs: bool = typer.Option(
        False, "--trust-jobs", help="With --jobs: let the file's lines write outside the file's folder and overwrite what their 'overwrite' field names "
        "(a jobs file is untrusted input otherwise).", rich_help_panel=LONG,
    ),  # fmt: skip
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Generate a video from a start picture and a prompt.

    The original model (framepack) makes the end of the video first and walks back to your picture, which keeps long videos from drifting; framepack-f1 walks forwards and moves more.

    On CUDA the mode is picked by itself and printed: exact (the official bf16 result, compiled, the default), fast (--fast) or low-vram (--low-vram, or when the GPU cannot hold the 13B transformer).

    The job lives in <output>.job/ next to the output until the MP4 is complete: Ctrl-C, SIGTERM, a crash or running out of memory leave <output>.partial.mp4 and a job that --resume finishes exactly as an uninterrupted run would.
    """
    from fpgen.cli.report import Reporter

    values = dict(ctx.params)
    given = {name for name in values if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    report = Reporter(json_output, quiet)
    modes = [flag for flag, name in (("--resume", "resume"), ("--from", "from_video"), ("--jobs", "jobs")) if values[name] is not None]
    if len(modes) > 1:
        raise InputError(f"{' and '.join(modes)} cannot be combined", "use one of them")
    if shard is not None and jobs is None:
        raise InputError("--shard takes a share of a --jobs file", "pass --jobs FILE, or leave out --shard")
    if resume is not None:
        _resume(values, given, report)
    elif jobs is not None:
        _batch(ctx, values, report)
    else:
        _single(values, given, report)


def job_options(values: dict) -> dict:
    """The job's options from parsed values, with ``--prompts-file`` read into the prompt."""
    options = {k: v for k, v in values.items() if k not in RUN_OPTIONS}
    path = values.get("prompts_file")
    if path is not None:
        if values.get("prompt"):
            raise InputError("--prompt and --prompts-file cannot be combined", "put every prompt in the file")
        try:
            options["prompt"] = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read prompts file {path} ({type(exc).__name__})", "pass a UTF-8 text file") from None
    options["prompt"], keyframes = split_keyframes(options.get("prompt") or "")  # "<seconds>s: keyframe: <picture>" entries
    folder = Path(path).parent if path is not None else Path()  # a prompts file's pictures are relative to it
    options["keyframe"] = [*(options.get("keyframe") or ()), *(f"{t}:{folder / p}" for t, p in (k.split(":", 1) for k in keyframes))]
    return options


def default_output(seed: int, folder: Path = Path("outputs")) -> Path:
    """A new file under ./outputs named from the local time and the seed."""
    stamp = time.strftime("%y%m%d_%H%M%S")
    path, n = folder / f"{stamp}_{seed}.mp4", 1
    while path.exists():
        path, n = folder / f"{stamp}_{seed}_{n}.mp4", n + 1
    return path


def _spec(options: dict):
    from fpgen.spec import JobSpec

    if options.get("output") is None:
        options = {**options, "output": default_output(options.get("seed") or 31337)}
    return JobSpec.from_options(options)


def _single(values: dict, given: set, report) -> None:
    options = _recorded(values, given, report) if values["from_video"] is not None else job_options(values)
    spec = _spec(options)  # every value checked before torch loads
    from fpgen.config import resolve

    job = resolve(spec, values["overwrite"], values["preview"])
    _load_and_run(job, values["gpus"], report)


def _load_and_run(job, gpus: str, report):
    """The job on one device, or with ``--gpus N`` its transformer passes split over N processes (``fpgen.parallel``)."""
    if gpus == "1":
        return _run(_load(job, report), job, report)
    if job.step_cache.kind == "fbcache":
        raise InputError("--step-cache fbcache runs block 0 apart, which a video split over GPUs cannot", "use --step-cache teacache or magcache with --gpus")
    from fpgen.parallel import check_head_split, process_count, run_split

    count = process_count(gpus, job.spec.device)
    check_head_split(count, job.model.paths["transformer"])
    report.info(f"loading {job.model.spec.name} in {count} processes (one video, each transformer pass split by sequence) ...")
    report.info(job.runtime.describe())
    return run_split(job, count, partial(_run, report=report))


def _recorded(values: dict, given: set, report) -> dict:
    """``--from``: the recorded job, with the options given on the command line (and a new output) in place of the recorded ones."""
    from fpgen.spec import JobSpec
    from fpgen.metadata import read_description

    recorded = read_description(values["from_video"])["job"]
    known = JobSpec.option_names()
    for name in sorted(set(recorded) - known):
        report.warn(f"ignoring recorded option {printable(name)!r}, which this fpgen does not have")
    options = {k: v for k, v in recorded.items() if k in known and k not in ("output", "save_latents")}
    given_options = job_options(values)
    given = given | ({"prompt"} | ({"keyframe"} if given_options["keyframe"] else set()) if "prompts_file" in given else set())
    options.update({k: v for k, v in given_options.items() if k in given or k == "output"})
    if given & {"fast", "step_cache", "teacache"}:  # the step cache is chosen again (--fast picks one): the recorded one and its threshold go
        for name in {"step_cache", "step_cache_threshold", "teacache", "teacache_threshold"} - given:
            options.pop(name, None)
    for rate, other in (("fps", "interpolate"), ("interpolate", "fps")):
        if rate in given and other not in given:
            options.pop(other, None)  # a new rate replaces the recorded one, however it was given
    if options.get("image") and not Path(options["image"]).exists() and "image" not in given:
        raise InputError(f"the recorded start picture {printable(str(options['image']))} is missing", "pass the picture as IMAGE")
    return options


def _load(job, report):
    """The job's models (``fpgen.loading.Components``), loaded after the one printed runtime decision."""
    from fpgen.loading import Components

    report.info(f"loading {job.model.spec.name} ...")
    report.info(job.runtime.describe())
    return Components(job.model, job.runtime, job.loras).load()


def _run(components, job, report):
    from fpgen.errors import FpgenError
    from fpgen.metadata import sidecar_path
    from fpgen.run import run_job

    for note in job.notes:
        report.warn(note)
    for line in job.describe():
        report.info(line)
    settings = job.settings
    try:
        with report.job_progress(job.plan.count, settings.steps, settings.window) as progress:
            video = run_job(components, job, progress)
    except Exception as error:
        if not isinstance(error, FpgenError) and job.folder.exists():
            report.warn(f"the job is kept in {job.folder.path}; once the problem is fixed: fpgen generate --resume {job.spec.output}")
        raise
    result = {
        "output": str(video.output), "frames": video.frames, "width": video.width, "height": video.height, "fps": video.fps,
        "seconds": round(video.seconds, 3), "elapsed_s": round(video.elapsed, 2), "seed": settings.seed, "model": job.spec.model,
        "order": job.plan.order, "sections": job.plan.count, "resumed_sections": video.resumed_sections,
        "mode": job.runtime.mode, "step_cache": settings.step_cache, "step_cache_threshold": job.step_cache.threshold if settings.step_cache != "none" else None, "loras": list(job.spec.lora),
        "transformer_passes": video.result.transformer_passes, "skip_rates": video.result.skip_rates, "latents": str(job.spec.save_latents) if job.spec.save_latents else None,
        "metadata": str(sidecar_path(video.output)),
    }  # fmt: skip
    line = f"{video.output}  ({video.frames} frames, {video.seconds:.2f} s, {video.width}x{video.height}, {video.elapsed:.1f} s)"
    report.result(result, line)
    return video


def _resume(values: dict, given: set, report) -> None:
    extra = sorted(given - {"resume", "json_output", "quiet", "preview", "gpus"})
    if extra:
        flags = ", ".join("IMAGE" if name == "image" else "--" + name.replace("_", "-") for name in extra)
        raise InputError(f"--resume continues a job with its saved settings; leave out {flags}", "to change settings start a new job (e.g. --from the finished video)")
    from fpgen.config import resolve_resume

    job = resolve_resume(values["resume"], values["preview"])
    report.info(f"resuming {job.folder.path} ({len(job.saved.finished)} section(s) done)")
    _load_and_run(job, values["gpus"], report)


def _batch(ctx: typer.Context, values: dict, report) -> None:
    from fpgen.batch import BatchJob, check_outputs, my_share, parse_shard, read_jobs_file, run_batch
    from fpgen.config import resolve
    from fpgen.spec import PATH_OPTIONS, parse_keyframe
    from fpgen.errors import FpgenError, Interrupted
    from fpgen.workers import plan_workers, run_parallel

    path = values["jobs"]
    workers = plan_workers(values["gpus"], values["device"]) if values["gpus"] != "1" else []  # a wrong --gpus shows before the file is read
    shard = parse_shard(values["shard"])
    params = {p.name: p for p in ctx.command.params}
    lines = my_share(read_jobs_file(path), shard)
    jobs = []
    for number, fields in lines:
        try:
            typed = _typed_fields(ctx, params, fields)
            for name in set(typed) & {*PATH_OPTIONS, "prompts_file"}:  # a line's paths are relative to the jobs file
                typed[name] = Path(path).parent / Path(typed[name]).expanduser() if typed[name] is not None else None
            if typed.get("keyframe"):
                typed["keyframe"] = [f"{t}:{Path(path).parent / p.expanduser()}" for t, p in map(parse_keyframe, typed["keyframe"])]
            options = job_options({**values, **typed})
            options["output"] = options.get("output") or Path("outputs") / f"{Path(path).stem}-{number:03d}.mp4"
            spec = _spec(options)
            overwrite = typed.get("overwrite", values["overwrite"])
            if not values["trust_jobs"]:
                _check_untrusted_line(typed, spec, Path(path).parent, values["overwrite"])
            if not spec.output.exists() or overwrite:
                resolve(spec, overwrite)  # every check before any model loads; the job is resolved again where it runs
            jobs.append(BatchJob(number, fields, spec, None, overwrite, typed.get("preview", values["preview"])))
        except FpgenError as error:
            jobs.append(BatchJob(number, fields, None, str(error)))
    jobs = check_outputs(jobs)
    if values["device"] == "cpu":  # CPU workers share the cores: no more than there are jobs
        workers = workers[: max(1, sum(job.spec is not None for job in jobs))]
    share = f" (share {shard[0]}/{shard[1]})" if shard else ""
    report.info(f"{len(jobs)} job(s) in {path}{share}" + (f", {len(workers)} workers: {', '.join(w.label for w in workers)}" if workers else ""))
    runner = partial(_batch_runner, values)  # picklable: the workers build their own
    outcomes = run_parallel(jobs, workers, runner) if workers else run_batch(jobs, *runner(None))
    report.batch_summary(outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    if any(o.status == "interrupted" for o in outcomes):
        raise Interrupted("batch interrupted", f"run the same command again: finished jobs are skipped and the interrupted ones continue ({failed} failed)")
    if failed:
        raise FpgenError(f"{failed} of {len(outcomes)} job(s) failed", "see the summary")


def _check_untrusted_line(typed: dict, spec, root: Path, overwrite_allowed: bool) -> None:
    """A jobs file is untrusted: its lines write only inside its own folder, and overwrite only what the command line allows."""
    if typed.get("overwrite") and not overwrite_allowed:
        raise InputError("the line asks to overwrite, which the command line did not allow", "pass --overwrite (or --trust-jobs) to let the file overwrite")
    inside = Path(os.path.realpath(root))
    for name in ("output", "save_latents"):
        target = getattr(spec, name)
        if name in typed and target is not None and not Path(os.path.realpath(target)).is_relative_to(inside):
            raise InputError(f"field {name!r} writes {target}, outside the jobs file's folder {inside}", "keep the file's outputs in its folder, or pass --trust-jobs")


def _batch_runner(values: dict, worker: str | None) -> tuple:
    """``(load_models, run_job, on_job)`` for ``fpgen.batch.run_jobs``, reporting as the batch's process or a worker (its label)."""
    from fpgen.cli.report import Reporter

    report = Reporter(values["json_output"], values["quiet"])
    report = report.worker(worker) if worker else report

    def announce(position: int, job) -> None:
        report.info(f"job {position} (line {job.line}): {job.spec.output}")

    def load(spec):
        from fpgen.config import resolve

        return _load(resolve(spec, overwrite=True), report)  # the models of the first job that needs them

    def run(components, job):
        from fpgen.config import resolve

        return _run(components, resolve(job.spec, job.overwrite, job.preview, loaded=components), report.quieter())

    return load, run, announce


def _typed_fields(ctx: typer.Context, params: dict, fields: dict) -> dict:
    """A batch line's fields converted by the options' own types (CSV gives text, JSON gives numbers and booleans)."""
    if "__error__" in fields:
        raise InputError(fields["__error__"], "fix the line")
    allowed = set(params) - {"resume", "from_video", "jobs", "gpus", "shard", "trust_jobs", "json_output", "quiet"}
    typed = {}
    for key, value in fields.items():
        name = key.lstrip("-").replace("-", "_")
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            raise InputError(f"unknown field {key!r}", f"did you mean {close[0]!r}?" if close else "fields are `fpgen generate` option names")
        if isinstance(value, str) and getattr(params[name], "multiple", False):
            value = [value]  # one LoRA in a CSV cell or a JSON string
        try:
            typed[name] = params[name].process_value(ctx, value) if value is not None else None
        except typer.BadParameter as exc:
            raise InputError(f"field {key!r}: {exc.message}", "fix the value") from None
    return typed
