"""``fpgen models``: the models fpgen knows, whether their files are on this machine, their size on disk."""

from __future__ import annotations

from pathlib import Path

import typer

from fpgen.cli import app

EXAMPLES = """
Examples:

  fpgen models

  fpgen models --model-dir /data/fpgen --json
"""


@app.command(epilog=EXAMPLES)
def models(
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Look in a folder made by `fpgen download --local-dir` instead of the Hugging Face cache."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """List the known models, whether each is complete on this machine, and the disk space it takes.

    Looks at local files only (no network). Components two models share (the text encoders, VAE and image encoder) count in the size of each, once in the total.
    """
    from huggingface_hub import constants

    from fpgen.cli.report import Reporter
    from fpgen.download import human_size
    from fpgen.hub import download_command, model_status, size_on_disk
    from fpgen.registry import MODELS

    statuses = [model_status(spec, model_dir) for spec in MODELS.values()]
    where = model_dir or Path(constants.HF_HUB_CACHE)
    total = size_on_disk([folder for status in statuses if not status.spec.shipped for folder in status.present_folders])
    rows = [
        {
            "name": s.spec.name, "transformer": s.spec.transformer.repo, "order": s.spec.order, "complete": not s.missing,
            "missing": s.missing, "size_bytes": size_on_disk(s.present_folders), "shipped": s.spec.shipped,
            "download_command": download_command(s.spec, model_dir) if s.missing else None,
        }
        for s in statuses
    ]  # fmt: skip
    lines, width = [f"models in {where}:"], max(14, *(len(row["name"]) for row in rows))
    for row, status in zip(rows, statuses):
        state = "ships with fpgen" if status.spec.shipped else "complete" if row["complete"] else "incomplete" if status.present_folders else "not downloaded"
        lines.append(f"  {row['name']:<{width}} {human_size(row['size_bytes']):>9}  {state:<14}  {row['transformer']}")
        if row["download_command"]:
            lines.append(f"  {'':<{width}} {'':>9}  get it with: {row['download_command']}")
    lines.append(f"  {'total':<{width}} {human_size(total):>9}  (shared files counted once; the demo not counted)")
    Reporter(json_output).result({"location": str(where), "models": rows, "total_bytes": total}, "\n".join(lines))
