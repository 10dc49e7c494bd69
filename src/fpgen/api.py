"""The Python API the CLI calls: load a model, then make videos with it.

    import fpgen
    models = fpgen.load_models("framepack")
    video = fpgen.generate_video(models, "start.png", "out.mp4", fpgen.Settings(prompt="a cat walks", seconds=5))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from fpgen.buckets import load_image
from fpgen.devices import choose_placement
from fpgen.errors import InputError
from fpgen.hub import locate_model
from fpgen.acceleration import choose_mode
from fpgen.loading import Models, load_models as load_from_paths, transformer_parameter_bytes
from fpgen.lora import Lora, LoraChoice, load_loras
from fpgen.output import SegmentedMp4
from fpgen.pipeline import Event, JobInputs, Result, Settings, generate_frames
from fpgen.plan import FPS, Order
from fpgen.registry import ModelSpec, resolve_model


@dataclass(frozen=True)
class ModelFiles:
    spec: ModelSpec
    paths: dict[str, Path]


def find_model(model: str = "framepack", model_dir: Path | None = None, order: Order | None = None, revision: str | None = None) -> ModelFiles:
    """Resolve a model name and find its files (HF cache, a ``--local-dir`` folder, or a local transformer folder).

    Never touches the network; ``revision`` picks the transformer's branch, tag or commit in the HF cache.
    """
    spec = resolve_model(model, order, revision)
    return ModelFiles(spec, locate_model(spec, Path(model_dir) if model_dir else None))


def load_models(
    model: str | ModelFiles = "framepack",
    model_dir: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    order: Order | None = None,
    fast: bool = False,
    low_vram: bool = False,
    vram_budget: float | None = None,
    compile: bool = True,
    loras: Sequence[LoraChoice | tuple[Lora, LoraChoice]] = (),
) -> Models:
    """Load every model a job needs; ``model`` is a name (see ``find_model``) or files already found.

    The mode (exact, fast, low-vram) follows ``fast``/``low_vram`` and the GPU's memory (or
    ``vram_budget`` in GiB); ``models.mode`` says which was picked and why. ``compile=False`` skips
    torch.compile (for machines without Triton, or to start faster). ``loras`` (``LoraChoice``, or
    already read by ``fpgen.lora.load_loras``) are merged into the transformer's weights as it
    loads, each at its scale; their files are read before any model loads.
    """
    placement = choose_placement(device, dtype)
    files = model if isinstance(model, ModelFiles) else find_model(model, model_dir, order)
    adapters = load_loras(loras)
    transformer_bytes = transformer_parameter_bytes(files.paths["transformer"], placement.transformer_dtype) if placement.is_cuda else 0
    mode = choose_mode(placement, transformer_bytes, fast, low_vram, vram_budget)
    return load_from_paths(files.paths, files.spec.order, placement, mode, compile, vram_budget, adapters)


@dataclass(frozen=True)
class VideoResult:
    output: Path
    frames: int
    height: int
    width: int
    seconds: float
    elapsed: float
    result: Result


def default_output(seed: int, folder: Path = Path("outputs")) -> Path:
    """A new file under ./outputs named from the local time and the seed."""
    stamp = time.strftime("%y%m%d_%H%M%S")
    path, n = folder / f"{stamp}_{seed}.mp4", 1
    while path.exists():
        path, n = folder / f"{stamp}_{seed}_{n}.mp4", n + 1
    return path


def check_output(output: Path, overwrite: bool, crf: int) -> None:
    """Refuse, before any work, an output that is not an MP4, exists already, or a CRF libx264 does not take."""
    if not 0 <= crf <= 51:
        raise InputError(f"--crf must be between 0 and 51 (got {crf})", "16 is the official default; lower is better quality")
    if output.suffix.lower() != ".mp4":
        raise InputError(f"output {output} must end in .mp4", "e.g. -o video.mp4")
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists", "choose another -o/--output, or pass --overwrite")


def generate_video(
    models: Models,
    image: str | Path | np.ndarray,
    output: str | Path,
    settings: Settings,
    crf: int = 16,
    save_latents: str | Path | None = None,
    overwrite: bool = False,
    on_event: Callable[[Event], None] | None = None,
    inputs: JobInputs | None = None,
) -> VideoResult:
    """Generate a video from ``image`` (a path or uint8 RGB array) into ``output`` (an MP4 that exists only once it is complete)."""
    output = Path(output)
    check_output(output, overwrite, crf)
    settings.validate()
    picture = image if isinstance(image, np.ndarray) else load_image(image)
    output.parent.mkdir(parents=True, exist_ok=True)
    sink = SegmentedMp4(output, output.with_name(output.name + ".job"), crf)
    started = time.perf_counter()
    result = generate_frames(models, picture, settings, sink, on_event, inputs)
    sink.finish()
    if save_latents is not None:
        save_file({"latents": result.latents.float().contiguous()}, str(save_latents))
    frames = result.num_frames
    return VideoResult(output, frames, result.height, result.width, frames / FPS, time.perf_counter() - started, result)
