"""Where a model's files are on disk: the Hugging Face cache, or a self-contained model folder.

Looking files up never touches the network (``local_files_only``): generation works unplugged once
the weights are cached. Fetching is ``fpgen download``'s job.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from fpgen.errors import ModelMissingError
from fpgen.registry import ModelSpec, Source, resolve_model


def download_command(spec: ModelSpec, model_dir: Path | None = None) -> str:
    """The exact ``fpgen download`` command that fetches what ``spec`` needs (into ``model_dir`` when given)."""
    words = ["fpgen", "download", spec.name]
    if spec.transformer.revision:
        words += ["--revision", spec.transformer.revision]
    if model_dir is not None:
        words += ["--local-dir", str(model_dir)]
    return shlex.join(words)


def source_in_model_dir(source: Source, model_dir: Path) -> Path:
    """A model folder made by ``fpgen download --local-dir`` holds each repo at ``DIR/owner/name/subfolder``."""
    return model_dir / source.repo / source.subfolder if source.subfolder else model_dir / source.repo


def is_complete(folder: Path) -> bool:
    """Whether a component folder was downloaded to the end.

    ``fpgen download`` writes a folder's ``*config.json`` files after its other files, and every
    file appears only once it is whole, so a folder with its config and every shard its weight
    index names is complete; an interrupted download leaves one or the other missing.
    """
    if not folder.is_dir() or not any(folder.glob("*config.json")):
        return False
    for index in folder.glob("*.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        if not all((folder / shard).is_file() for shard in shards):
            return False
    return True


def locate_source(source: Source, model_dir: Path | None = None) -> Path | None:
    """The local folder of ``source``, or None when its files are not (all) on this machine."""
    if source.local is not None:
        return source.local
    if model_dir is not None:
        folder = source_in_model_dir(source, model_dir)
        return folder if is_complete(folder) else None
    try:
        snapshot = snapshot_download(source.repo, revision=source.revision, allow_patterns=source.allow_patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    folder = Path(snapshot) / source.subfolder if source.subfolder else Path(snapshot)
    return folder if is_complete(folder) else None


@dataclass(frozen=True)
class ModelStatus:
    """Which of a model's components are on this machine."""

    spec: ModelSpec
    folders: dict[str, Path | None]  # None where missing or incomplete
    missing: list[str]  # ``repo/subfolder`` of each missing component, sorted, without repeats

    @property
    def present_folders(self) -> list[Path]:
        return [folder for folder in self.folders.values() if folder is not None]


def model_status(spec: ModelSpec, model_dir: Path | None = None) -> ModelStatus:
    folders = {name: locate_source(source, model_dir) for name, source in spec.sources().items()}
    missing = sorted({f"{s.repo}/{s.subfolder}".rstrip("/") for name, s in spec.sources().items() if folders[name] is None})
    return ModelStatus(spec, folders, missing)


def locate_model(spec: ModelSpec, model_dir: Path | None = None) -> dict[str, Path]:
    """Every component's folder, or a ModelMissingError naming what is missing and how to get it."""
    status = model_status(spec, model_dir)
    if status.missing:
        where = str(model_dir) if model_dir else f"the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE})"
        size = f" (about {spec.download_gb:g} GB)" if spec.download_gb else ""
        if not status.present_folders:
            repos = ", ".join(dict.fromkeys(source.repo for source in spec.sources().values()))
            raise ModelMissingError(f"model {spec.name!r} is not downloaded: none of {repos} is in {where}", f"run: {download_command(spec, model_dir)}{size}; or see fpgen work now with the small model it ships: --model demo")
        raise ModelMissingError(f"model {spec.name!r} is not complete in {where} (missing {', '.join(status.missing)})", f"run: {download_command(spec, model_dir)}")
    return status.folders


def size_on_disk(folders: list[Path]) -> int:
    """Bytes the files under ``folders`` take, each file counted once (cache snapshots link shared blobs)."""
    seen: dict[tuple[int, int], int] = {}
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                try:
                    stat = (Path(root) / name).stat()
                except FileNotFoundError:  # a cache link whose blob was deleted
                    continue
                seen[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(seen.values())


@dataclass(frozen=True)
class ModelFiles:
    spec: ModelSpec
    paths: dict[str, Path]


def find_model(model: str = "framepack", model_dir: Path | None = None, revision: str | None = None) -> ModelFiles:
    """Resolve a model name and find its files (HF cache, a ``--local-dir`` folder, or a local transformer folder).

    Never touches the network; ``revision`` picks the transformer's branch, tag or commit in the HF cache.
    """
    spec = resolve_model(model, revision)
    return ModelFiles(spec, locate_model(spec, Path(model_dir) if model_dir else None))
