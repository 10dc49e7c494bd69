"""``fpgen edit``: a picture changed as the prompt says, by sampling one FramePack frame (checked before any model loads)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fpgen.cli import app

EXAMPLES = """
Examples:

  fpgen edit face.png -p "The girl smiles and raises her hand" -o smile.png

  fpgen edit face.png -p "The girl wears a red dress" --target-index 20 --seed 7 -o red.png

  fpgen edit face.png -p "The girl wears the dress" --reference dress.png --mask dress_mask.png --image-mask face_mask.png -o dressed.png

  fpgen edit face.png -p "she turns around" --lora runs/turn/lora.safetensors:0.8 --json
"""


@app.command(epilog=EXAMPLES)
def edit(
    image: Path = typer.Argument(..., help="The picture to edit (PNG, JPEG, WebP)."),
    prompt: str = typer.Option("", "--prompt", "-p", help="What the picture should show (as a video prompt: what happens)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="PNG to write [default: outputs/<time>_<seed>.png]; it records how it was made in a text chunk."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output if it exists."),
    target_index: int | None = typer.Option(None, "--target-index", help="RoPE time of the frame made, in latent frames after the picture; larger changes more (up to ~40 works). [default: 9, with --reference 1]", show_default=False),
    history: str | None = typer.Option(None, "--history", help="History slots passed to the model (zeros): any of post,2x,4x, or none. [default: post,2x,4x; with --reference none]", show_default=False),
    reference: Path | None = typer.Option(None, "--reference", help="Reference picture (kisekaeichi): it takes the post slot at --reference-index and the edit mixes its features in."),
    reference_index: int = typer.Option(10, "--reference-index", help="RoPE time of --reference (musubi-tuner uses 10, FramePack-eichi 13)."),
    mask: Path | None = typer.Option(None, "--mask", help="Mask of --reference: white parts are used, black ignored (e.g. only the clothes)."),
    image_mask: Path | None = typer.Option(None, "--image-mask", help="Mask of IMAGE: white parts are kept as context (e.g. the face and body)."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="What to avoid; used only with --cfg above 1."),
    seed: int = typer.Option(31337, "--seed", help="Noise seed."),
    steps: int | None = typer.Option(None, "--steps", help="Sampling steps. [default: the model's, 25]", show_default=False),
    distilled_guidance: float | None = typer.Option(None, "--distilled-guidance", help="Distilled guidance scale. [default: the model's, 10]", show_default=False),
    cfg: float | None = typer.Option(None, "--cfg", help="Real classifier-free guidance; above 1 doubles the cost. [default: 1]", show_default=False),
    resolution: int = typer.Option(640, "--resolution", help="Size bucket class; the picture is resized and centre-cropped to the nearest bucket."),
    size: str | None = typer.Option(None, "--size", help="Exact size HEIGHTxWIDTH in pixels (multiples of 16); overrides the bucket."),
    model: str = typer.Option("framepack", "--model", "-m", help="The original FramePack model (framepack), a Hub repo id or a local transformer folder of it."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="A folder made by `fpgen download --local-dir` to load every model from."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit of the transformer repo in the HF cache."),
    lora: list[str] = typer.Option([], "--lora", metavar="PATH[:SCALE]", help="A LoRA to apply, PATH[:SCALE]; repeatable (e.g. one trained for one-frame edits)."),
    device: str = typer.Option("auto", "--device", help="auto, cuda, cuda:N or cpu."),
    dtype: str = typer.Option("auto", "--dtype", help="Transformer compute dtype: auto (bf16 on CUDA, float32 on CPU), bfloat16 or float32."),
    low_vram: bool = typer.Option(False, "--low-vram", help="Stream the transformer and text encoder from host memory (under 6 GiB of GPU memory)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Edit a picture with the prompt: FramePack makes the one frame that would follow it (one-frame inference).

    The picture is the start latent; one latent frame is sampled at --target-index in RoPE time, with the
    history slots the model was trained with (zeros). With --reference (and masks) it is the kisekaeichi
    variant. Needs the original model (framepack); costs about a fifth of a video section (one frame and its context).
    """
    from fpgen.buckets import parse_size
    from fpgen.cli.generate import default_output
    from fpgen.cli.report import Reporter
    from fpgen.edit import EditSpec, resolve_edit
    from fpgen.spec import RuntimeRequest, Settings, _absolute_lora

    report = Reporter(json_output, quiet)
    settings = Settings(prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, distilled_guidance=distilled_guidance, cfg=cfg, resolution=resolution, size=parse_size(size) if size else None)
    slots = None if history is None else tuple(s.strip() for s in history.split(",") if s.strip() and s.strip() != "none")
    spec = EditSpec(
        image, output or default_output(seed).with_suffix(".png"), settings, reference, mask, image_mask, target_index, reference_index, slots,
        model, model_dir, revision, tuple(_absolute_lora(item) for item in lora), RuntimeRequest(device, dtype, low_vram=low_vram, compile=False), overwrite,
    )  # fmt: skip
    job = resolve_edit(spec)  # every check before the models load
    for note in job.notes:
        report.warn(note)
    from fpgen.edit import run_edit
    from fpgen.loading import Components

    report.info(f"loading {job.files.spec.name} ...")
    report.info(job.runtime.describe())
    components = Components(job.files, job.runtime, job.loras).load()
    started = time.perf_counter()
    window = job.settings.window
    report.info(f"one frame at target index {spec.target(window)}, history {','.join(sorted(spec.slots)) or 'none'}" + (f", reference at {spec.reference_index}" if reference else "") + f" -> {spec.output}")
    picture = run_edit(components, job, lambda i, _x0: report.info(f"step {i + 1}/{job.settings.steps}") if not json_output else None)
    elapsed = time.perf_counter() - started
    result = {"output": str(spec.output), "width": picture.shape[1], "height": picture.shape[0], "seed": seed, "target_index": spec.target(window), "history": sorted(spec.slots), "elapsed_s": round(elapsed, 2)}
    report.result(result, f"{spec.output}  ({picture.shape[1]}x{picture.shape[0]}, {elapsed:.1f} s)")
