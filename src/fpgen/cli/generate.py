"""``fpgen generate``: parse the options, check them before any model loads, run, report."""

from __future__ import annotations

from pathlib import Path

import typer

from fpgen.cli import app

EXAMPLES = """
Examples:

  fpgen generate face.png --prompt "The girl dances gracefully" --seconds 5

  fpgen generate face.png -p "A man walks to the door" --seconds 60 --model framepack-f1 -o walk.mp4

  fpgen generate face.png --size 480x832 --seed 7 --teacache --json

  fpgen generate face.png -p "A dog runs" --fast          # FP8 + TeaCache on a Hopper GPU

  fpgen generate face.png -p "A dog runs" --low-vram      # a 6 GB GPU

  fpgen generate face.png -p "she dances" --lora runs/dance/lora.safetensors:0.8
"""


@app.command(epilog=EXAMPLES)
def generate(
    image: Path = typer.Argument(..., help="Start picture (PNG, JPEG, WebP): the video's first frame."),
    prompt: str = typer.Option("", "--prompt", "-p", help="What happens in the video."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="What to avoid; used only with --cfg above 1."),
    seconds: float = typer.Option(5.0, "--seconds", "-s", help="Length; rounded to whole sections of 4*window frames."),
    seed: int = typer.Option(31337, "--seed", help="Noise seed: the same seed and settings give the same video."),
    steps: int = typer.Option(25, "--steps", help="Sampling steps per section."),
    window: int = typer.Option(9, "--window", help="Latent frames per section (9 = 33 video frames); the models were trained with 9."),
    distilled_guidance: float = typer.Option(10.0, "--distilled-guidance", help="Distilled guidance scale fed to the model."),
    cfg: float = typer.Option(1.0, "--cfg", help="Real classifier-free guidance; above 1 doubles the cost per step."),
    guidance_rescale: float = typer.Option(0.0, "--guidance-rescale", help="Guidance rescale for real CFG, 0..1."),
    teacache: bool | None = typer.Option(None, "--teacache/--no-teacache", help="Skip transformer passes that would change little (faster, slightly different result). [default: on with --fast, else off]", show_default=False),
    teacache_threshold: float = typer.Option(0.15, "--teacache-threshold", help="TeaCache's accumulated-change threshold; higher skips more."),
    model: str = typer.Option("framepack", "--model", "-m", help="framepack (original, inverted sections), framepack-f1 (forward), a Hub repo id or a local transformer folder."),
    lora: list[str] = typer.Option([], "--lora", help="A LoRA to apply, PATH[:SCALE] (scale 1 by default); repeatable. fpgen, diffusers and musubi-tuner FramePack LoRAs."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="A folder made by `fpgen download --local-dir` to load every model from, instead of the HF cache."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit of the model's transformer repo to load from the HF cache (as given to `fpgen download --revision`)."),
    resolution: int = typer.Option(640, "--resolution", help="Size bucket class; the picture is resized and centre-cropped to the nearest bucket."),
    size: str | None = typer.Option(None, "--size", help="Exact size HEIGHTxWIDTH in pixels (multiples of 16), e.g. 640x608; overrides the bucket."),
    crf: int = typer.Option(16, "--crf", help="H.264 quality, 0 (lossless) to 51; 16 is the official default."),
    output: Path | None = typer.Option(None, "--output", "-o", help="MP4 to write [default: outputs/<time>_<seed>.mp4]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output if it exists."),
    save_latents: Path | None = typer.Option(None, "--save-latents", help="Also save the video's latents (safetensors, tensor `latents`, time order)."),
    device: str = typer.Option("auto", "--device", help="auto, cuda, cuda:N or cpu."),
    fast: bool = typer.Option(False, "--fast", help="FP8 matmuls and TeaCache: about twice as fast on Hopper GPUs, no longer identical to the official output."),
    low_vram: bool = typer.Option(False, "--low-vram", help="Stream the transformer and text encoder from host memory (under 6 GiB of GPU memory); picked by itself on small cards."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the transformer blocks on CUDA (faster after a one-time compile; needs Triton)."),
    vram_budget: float | None = typer.Option(None, "--vram-budget", help="GPU memory (GiB) fpgen may plan for; low-vram mode is picked when the models do not fit.", show_default=False),
    dtype: str = typer.Option("auto", "--dtype", help="Transformer compute dtype: auto (bf16 on CUDA, float32 on CPU), bfloat16 or float32."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Generate a video from a start picture and a prompt.

    The original model (framepack) makes the end of the video first and walks back to your picture, which keeps long videos from drifting; framepack-f1 walks forwards and moves more.

    On CUDA the mode is picked by itself and printed: exact (the official bf16 result, compiled, the default), fast (--fast) or low-vram (--low-vram, or when the GPU cannot hold the 13B transformer).
    """
    from fpgen.api import check_output, default_output, find_model, generate_video, load_models
    from fpgen.acceleration import choose_mode
    from fpgen.devices import choose_placement
    from fpgen.lora import LoraChoice, load_loras
    from fpgen.buckets import load_image, parse_size
    from fpgen.cli.report import Reporter
    from fpgen.pipeline import Settings
    from fpgen.plan import latents_to_frames, section_count
    from dataclasses import replace

    report = Reporter(json_output, quiet)
    settings = Settings(
        prompt=prompt, negative_prompt=negative_prompt, seconds=seconds, seed=seed, steps=steps, window=window,
        distilled_guidance=distilled_guidance, cfg=cfg, guidance_rescale=guidance_rescale, teacache=bool(teacache),
        teacache_threshold=teacache_threshold, resolution=resolution, size=parse_size(size) if size else None,
    ).validate()  # fmt: skip
    picture = load_image(image)
    height, width = settings.frame_size(picture)
    output = output or default_output(seed)
    check_output(output, overwrite, crf)
    placement = choose_placement(device, dtype)
    if not placement.is_cuda:
        choose_mode(placement, 0, fast, low_vram, vram_budget)  # refuses GPU-only options before loading anything
    loras = load_loras(LoraChoice.parse(item) for item in lora)
    files = find_model(model, model_dir, revision=revision)

    report.info(f"loading {files.spec.name} ...")
    models = load_models(files, device=device, dtype=dtype, fast=fast, low_vram=low_vram, vram_budget=vram_budget, compile=compile, loras=loras)
    if teacache is None and models.mode.mode == "fast":
        settings = replace(settings, teacache=True)
    report.info(f"mode: {models.mode.mode} ({models.mode.reason})")
    sections = section_count(seconds, window)
    frames = latents_to_frames(1 + sections * window)
    report.info(
        f"{sections} section(s), {frames} frames at {width}x{height} on {models.placement.device} "
        f"({str(models.placement.transformer_dtype).removeprefix('torch.')}), {models.order} order"
    )
    with report.job_progress(sections, steps, frames) as progress:
        video = generate_video(models, picture, output, settings, crf, save_latents, overwrite, progress)

    report.result(
        {
            "output": str(video.output), "frames": video.frames, "width": video.width, "height": video.height,
            "fps": 30, "seconds": round(video.seconds, 3), "elapsed_s": round(video.elapsed, 2), "seed": seed, "model": model,
            "order": models.order, "mode": models.mode.mode, "teacache": settings.teacache, "sections": sections, "loras": lora,
            "transformer_passes": video.result.transformer_passes,
            "latents": str(save_latents) if save_latents else None,
        },
        f"{video.output}  ({video.frames} frames, {video.seconds:.2f} s, {video.width}x{video.height}, {video.elapsed:.1f} s)",
    )  # fmt: skip
