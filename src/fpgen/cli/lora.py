"""``fpgen lora``: look into LoRA files and convert them between fpgen/diffusers and musubi-tuner layouts."""

from __future__ import annotations

from pathlib import Path

import typer

from fpgen.cli import app

STORED_DTYPES = {"keep": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype -> torch's name

lora_app = typer.Typer(help="Inspect and convert FramePack LoRA files.", no_args_is_help=True)
app.add_typer(lora_app, name="lora")

EXAMPLES = """
Examples:

  fpgen lora convert runs/dance/lora.safetensors dance_musubi.safetensors --to musubi

  fpgen lora convert my_musubi_lora.safetensors my_lora.safetensors --to diffusers

  fpgen lora convert hunyuanvideo_style.safetensors style_framepack.safetensors --to diffusers

  fpgen lora convert runs/dance/lora.safetensors dance_bf16.safetensors --to diffusers --dtype bf16   (half the size)
"""

INFO_EXAMPLES = """
Examples:

  fpgen lora info runs/dance

  fpgen lora info hunyuanvideo_style.safetensors --json
"""


@lora_app.command(epilog=EXAMPLES)
def convert(
    source: Path = typer.Argument(..., help="A LoRA file in any layout fpgen reads (HunyuanVideo's are mapped onto FramePack's modules)."),
    target: Path = typer.Argument(..., help="The .safetensors file to write."),
    to: str = typer.Option(..., "--to", help="musubi (musubi-tuner's networks.lora_framepack) or diffusers (also fpgen's own)."),
    dtype: str = typer.Option("keep", "--dtype", help="keep (the weights as they are), fp32, bf16 or fp16: fpgen trains LoRAs in fp32, and bf16 halves the file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace TARGET if it exists."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
) -> None:
    """Write a LoRA in the fpgen/diffusers layout or musubi-tuner's; the weights are copied unchanged unless --dtype says otherwise (a HunyuanVideo LoRA's fused layers split by rows)."""
    from fpgen.cli.report import Reporter
    from fpgen.errors import InputError
    from fpgen.lora import read_lora, write_lora, write_musubi

    if to not in ("musubi", "diffusers"):
        raise InputError(f"unknown --to {to!r}", "use musubi or diffusers")
    if dtype not in STORED_DTYPES:
        raise InputError(f"unknown --dtype {dtype!r}", f"use {', '.join(STORED_DTYPES)}")
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists", "choose another TARGET, or pass --overwrite")
    if target.suffix != ".safetensors":
        raise InputError(f"{target} must end in .safetensors", "e.g. my_lora.safetensors")
    lora, layout = read_lora(source)
    if STORED_DTYPES[dtype] is not None:
        import torch

        lora = lora.to(getattr(torch, STORED_DTYPES[dtype]))
    size = (write_musubi if to == "musubi" else write_lora)(target, lora).stat().st_size
    Reporter(json_output).result(
        {"source": str(source), "source_layout": layout, "target": str(target), "target_layout": to, "modules": len(lora.modules), "dtype": dtype, "bytes": size},
        f"{target}  ({len(lora.modules)} modules, {layout} -> {to}, {size / 1e6:.1f} MB)",
    )


@lora_app.command(epilog=INFO_EXAMPLES)
def info(
    path: Path = typer.Argument(..., help="A LoRA file, or a folder holding one."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Show a LoRA's layout, what of it applies to FramePack (and what is skipped), ranks and alphas, and how it was trained (for fpgen's own)."""
    import json

    from fpgen.cli.report import Reporter
    from fpgen.lora import read_lora

    lora, layout = read_lora(path)
    config = lora.adapter_metadata()
    data = {
        "path": str(path), "layout": layout, "modules": len(lora.modules), "rank": config["r"], "alpha": config["lora_alpha"],
        "other_ranks": config["rank_pattern"], "other_alphas": config["alpha_pattern"], "trained": json.loads(lora.info) if lora.info else None,
        "keys": lora.keys, "skipped": list(lora.skipped),
    }  # fmt: skip
    Reporter(json_output).result(data, f"{lora.summary(str(path))}; rank {config['r']}, alpha {config['lora_alpha']:g}")
