"""``fpgen info``: what made a video (prompt, seeds, model, every setting, fpgen's version)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fpgen.cli import app

EXAMPLES = """
Examples:

  fpgen info walk.mp4

  fpgen info walk.mp4 --json | jq .job.seed

  fpgen generate --from walk.mp4 --seed 8     (make it again, with another seed)
"""


@app.command(epilog=EXAMPLES)
def info(
    video: Path = typer.Argument(..., help="A video made by fpgen (its MP4 tags, or its .json sidecar)."),
    json_output: bool = typer.Option(False, "--json", help="Print the whole description as one JSON object."),
) -> None:
    """Show how a video was made: read from its MP4 metadata, or its JSON sidecar."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from fpgen.metadata import read_description
    from fpgen.terminal import printable

    description = read_description(video)
    if json_output:
        print(json.dumps(description))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = {"video": str(video), "made by": f"fpgen {description['fpgen']} on {description.get('created', '?')}"}
    shape = description.get("video")
    if isinstance(shape, dict) and {"frames", "seconds", "fps", "width", "height", "sections", "order"} <= shape.keys():
        rows["frames"] = f"{shape['frames']} ({shape['seconds']} s at {shape['fps']} fps), {shape['width']}x{shape['height']}, {shape['sections']} sections, {shape['order']} order" + (", colours matched" if shape.get("color_match") else "")
    rows |= {name: "" if value is None else str(value) for name, value in description["job"].items()}
    for name, value in rows.items():  # the file's text, as plain text: no escape sequence, no rich markup (links) reaches the terminal
        table.add_row(Text(printable(name)), Text(printable(value, keep_newlines=True)))
    Console(highlight=False, width=max(100, Console().width)).print(table)
