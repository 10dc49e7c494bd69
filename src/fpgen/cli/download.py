"""``fpgen download``: parse, show the plan, check the disk, download with progress, report."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fpgen.cli import app

EXAMPLES = """
Examples:

  fpgen download

  fpgen download framepack framepack-f1 --dry-run

  fpgen download framepack-f1 --local-dir /data/fpgen
  fpgen generate face.png -m framepack-f1 --model-dir /data/fpgen

  HF_TOKEN=hf_... fpgen download me/my-finetune --revision v2 --json
"""


@app.command(epilog=EXAMPLES)
def download(
    models: list[str] | None = typer.Argument(None, help="framepack, framepack-f1, helios, helios-mid, helios-distilled, or the Hub repo id of a FramePack transformer (default: framepack)."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit of the model's own (transformer) repo; one model at a time. The shared encoders come at the revision fpgen pins."),
    local_dir: Path | None = typer.Option(None, "--local-dir", help="Download into this folder (DIR/owner/name/...) instead of the Hugging Face cache, for `fpgen generate --model-dir DIR`."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be downloaded and check the disk space; download nothing."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the plan and the result on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No plan listing or progress output."),
) -> None:
    """Download exactly the weights a model needs, into the Hugging Face cache or a folder.

    Lists the files and their total size first and refuses when the disk lacks room. Files already downloaded are never fetched again, so an interrupted download goes on where it stopped when you run the same command again. Gated or private repos use your `hf auth login` token or HF_TOKEN.
    """
    from huggingface_hub.utils import logging as hf_logging

    from fpgen.cli.report import DownloadProgress, Reporter
    from fpgen.download import check_space, plan_download, run_download
    from fpgen.errors import InputError
    from fpgen.registry import resolve_model

    names = list(dict.fromkeys(models or ["framepack"]))
    if revision and len(names) > 1:
        raise InputError("--revision applies to one model at a time", "run fpgen download once per model")
    specs = [resolve_model(name, revision=revision) for name in names]
    report = Reporter(json_output, quiet)
    hf_logging.set_verbosity_error()  # fpgen reports huggingface_hub's failures itself, in one line
    started = time.perf_counter()

    to_fetch = [spec for spec in specs if not spec.shipped]
    for spec in specs:
        if spec.shipped:
            report.info(f"{spec.name} ships with fpgen: nothing to download (try: fpgen generate --model {spec.name})")
    if not to_fetch:
        report.result({"models": names, "download_bytes": 0, "shipped": True}, f"{', '.join(names)}: nothing to download")
        return
    plan = plan_download(to_fetch, local_dir)
    for line in plan_lines(plan):
        report.info(line)
    check_space(plan)
    if not dry_run:
        with DownloadProgress(report, plan.fetch_bytes) as progress:
            run_download(plan, progress)
    report.result(plan_document(plan, dry_run, time.perf_counter() - started), result_line(plan, dry_run))
    if local_dir is not None and not dry_run:
        report.info(f"use it with: fpgen generate IMAGE --model-dir {local_dir}" + ("" if names == ["framepack"] else f" --model {names[0]}"))


def plan_lines(plan) -> list[str]:
    """The files, each with its size and whether it is on disk already, under a one-line summary."""
    from fpgen.download import human_size

    fetch = plan.to_fetch
    lines = [
        f"{', '.join(plan.models)}: {len(plan.files)} files, {human_size(plan.total_bytes)}; "
        f"{len(fetch)} to download ({human_size(plan.fetch_bytes)}) into {plan.destination} ({human_size(plan.free_bytes)} free)"
    ]
    lines += [f"  {'have' if f.present else 'get '}  {human_size(f.size):>9}  {f.repo}/{f.path}" for f in plan.files]
    return lines


def result_line(plan, dry_run: bool) -> str:
    from fpgen.download import human_size

    fetched = f"{len(plan.to_fetch)} files ({human_size(plan.fetch_bytes)})"
    if dry_run:
        return f"would download {fetched} into {plan.destination}"
    if not plan.to_fetch:
        return f"{', '.join(plan.models)}: complete in {plan.destination}, nothing to download"
    return f"downloaded {fetched} into {plan.destination}"


def plan_document(plan, dry_run: bool, elapsed: float) -> dict:
    return {
        "models": list(plan.models), "destination": str(plan.destination), "dry_run": dry_run,
        "total_bytes": plan.total_bytes, "download_bytes": plan.fetch_bytes, "free_bytes": plan.free_bytes,
        "files": [
            {"repo": f.repo, "path": f.path, "revision": f.revision, "commit": f.commit, "size": f.size, "already_present": f.present}
            for f in plan.files
        ],
        "elapsed_s": round(elapsed, 2),
    }  # fmt: skip
