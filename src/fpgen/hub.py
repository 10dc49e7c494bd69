"""Where a model's files are on disk: the Hugging Face cache, or a self-contained model folder.

Looking files up never touches the network (``local_files_only``): generation works unplugged once
the weights are cached. Fetching is ``fpgen download``'s job.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from fpgen.errors import ModelMissingError
from fpgen.registry import ModelSpec, Source


def download_command(spec: ModelSpec) -> str:
    return f"fpgen download {spec.name}"


def source_in_model_dir(source: Source, model_dir: Path) -> Path:
    """A model folder made by ``fpgen download --local-dir`` holds each repo at ``DIR/owner/name/subfolder``."""
    return model_dir / source.repo / source.subfolder if source.subfolder else model_dir / source.repo


def locate_source(source: Source, model_dir: Path | None = None) -> Path | None:
    """The local folder of ``source``, or None when its files are not on this machine."""
    if source.local is not None:
        return source.local
    if model_dir is not None:
        folder = source_in_model_dir(source, model_dir)
        return folder if folder.is_dir() and any(folder.iterdir()) else None
    try:
        snapshot = snapshot_download(source.repo, revision=source.revision, allow_patterns=source.allow_patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    folder = Path(snapshot) / source.subfolder if source.subfolder else Path(snapshot)
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def locate_model(spec: ModelSpec, model_dir: Path | None = None) -> dict[str, Path]:
    """Every component's folder, or a ModelMissingError naming what is missing and how to get it."""
    found = {name: locate_source(source, model_dir) for name, source in spec.sources().items()}
    missing = sorted({f"{s.repo}/{s.subfolder}".rstrip("/") for name, s in spec.sources().items() if found[name] is None})
    if missing:
        where = f"in {model_dir}" if model_dir else "in the Hugging Face cache"
        hint = f"run: {download_command(spec)}" + (f" --local-dir {model_dir}" if model_dir else "")
        raise ModelMissingError(f"model {spec.name!r} is not complete {where} (missing {', '.join(missing)})", hint)
    return found
