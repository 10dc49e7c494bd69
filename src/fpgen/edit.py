"""One-frame edits: FramePack samples a single latent frame at a chosen RoPE time, the start picture as its clean context.

The original model was trained to make a window of frames between the start picture and its future;
asked for one frame placed ``target_index`` latent frames after the start, it draws the picture as
the prompt says it will look then (musubi-tuner's ``--one_frame_inference``, FramePack-eichi's
"oichi"). With a reference picture in the post slot, masked, it mixes the two (kisekaeichi).
``EditSpec`` is what the user asked (checked without torch), ``resolve_edit`` decides everything
before models load, ``sample_one_frame`` is the sampling. Torch and the models' modules are imported
inside the functions that need them, so a bad option is refused before they load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fpgen.errors import InputError
from fpgen.spec import RuntimeRequest, Settings, check_new_file

if TYPE_CHECKING:
    from fpgen.hub import ModelFiles
    from fpgen.runtime import RuntimePlan

SLOTS = ("post", "2x", "4x")
DEFAULT_REFERENCE_INDEX = 10  # musubi-tuner's kisekaeichi example (control_index=0;10); FramePack-eichi uses 13


@dataclass(frozen=True)
class EditSpec:
    """An edit as ``fpgen edit`` options; ``target_index`` and ``history`` left None take the peers' defaults."""

    image: Path
    output: Path
    settings: Settings = Settings()
    reference: Path | None = None
    mask: Path | None = None  # the reference's mask: white is used, black ignored
    image_mask: Path | None = None  # the start picture's mask
    target_index: int | None = None  # window (9) without a reference, 1 with one
    reference_index: int = DEFAULT_REFERENCE_INDEX
    history: tuple[str, ...] | None = None  # all three without a reference, none with one
    model: str = "framepack"
    model_dir: Path | None = None
    revision: str | None = None
    lora: tuple[str, ...] = ()
    runtime: RuntimeRequest = RuntimeRequest(compile=False)
    overwrite: bool = False

    def __post_init__(self):
        self.settings.validate()
        for path in (self.image, self.reference, self.mask, self.image_mask):
            if path is not None and not path.exists():
                raise InputError(f"image not found: {path}", "check the path")
        if self.mask is not None and self.reference is None:
            raise InputError("--mask masks the --reference picture, and there is none", "pass --reference IMG, or use --image-mask for the start picture")
        for name, index in (("--target-index", self.target_index), ("--reference-index", self.reference_index)):
            if index is not None and not 0 <= index <= 1000:
                raise InputError(f"{name} must be between 0 and 1000 (got {index})", "musubi-tuner found up to about 40 to work; the default is 9 (1 with --reference)")
        unknown = set(self.history or ()) - set(SLOTS)
        if unknown:
            raise InputError(f"--history {','.join(sorted(unknown))} is not a history slot", "use any of post,2x,4x, or none")
        if self.reference is not None and "post" in (self.history or ()):
            raise InputError("--reference takes the post slot's place", "leave post out of --history")
        check_new_file(self.output, ".png", "edited.png", self.overwrite)

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(self.history if self.history is not None else (() if self.reference is not None else SLOTS))

    def target(self, window: int) -> int:
        return self.target_index if self.target_index is not None else 1 if self.reference is not None else window

    def options(self) -> dict:
        """What the PNG records about how it was made."""
        settings = {k: v for k, v in self.settings.__dict__.items() if k in ("prompt", "negative_prompt", "seed", "steps", "distilled_guidance", "cfg", "window")}
        paths = {k: str(getattr(self, k)) if getattr(self, k) else None for k in ("image", "reference", "mask", "image_mask")}
        return {**paths, **settings, "target_index": self.target(self.settings.window or 9), "reference_index": self.reference_index, "history": sorted(self.slots), "model": self.model, "lora": list(self.lora)}


@dataclass(frozen=True)
class EditJob:
    """An edit ready to run: the pictures decoded, the model found, the settings complete."""

    spec: EditSpec
    files: ModelFiles
    runtime: RuntimePlan
    loras: tuple
    start: np.ndarray
    size: tuple[int, int]
    reference: np.ndarray | None
    mask: np.ndarray | None  # (H, W) float in [0, 1] at the output size
    image_mask: np.ndarray | None
    notes: tuple[str, ...] = ()

    @property
    def settings(self) -> Settings:
        return self.spec.settings


def resolve_edit(spec: EditSpec, loaded=None) -> EditJob:
    """Check and decide everything before any model loads (``loaded``: models already loaded)."""
    from fpgen.buckets import load_picture, pick_bucket
    from fpgen.hub import find_model
    from fpgen.lora import LoraChoice, load_loras
    from fpgen.registry import resolve_model
    from fpgen.runtime import plan_runtime

    family = loaded.family if loaded is not None else resolve_model(spec.model, spec.revision).family
    if family.sections.name != "inverted":
        raise InputError(f"fpgen edit needs the original FramePack model; {spec.model} makes its sections forwards", "use --model framepack (one-frame edits rely on its inverted, two-sided context)")
    files = loaded.files if loaded is not None else find_model(spec.model, spec.model_dir, revision=spec.revision)
    spec = replace(spec, settings=spec.settings.complete(files.spec.family.defaults))
    read = {name: load_picture(getattr(spec, name)) for name in ("image", "reference", "mask", "image_mask") if getattr(spec, name) is not None}
    start = read["image"].pixels
    size = spec.settings.size or pick_bucket(start.shape[0], start.shape[1], spec.settings.resolution)
    masks = {name: mask_values(read[name].pixels, *size) if name in read else None for name in ("mask", "image_mask")}
    runtime = loaded.runtime if loaded is not None else plan_runtime(spec.runtime, files.paths["transformer"])
    loras = tuple(loaded.loras) if loaded is not None else tuple(load_loras(LoraChoice.parse(item) for item in spec.lora))
    reference = read["reference"].pixels if "reference" in read else None
    notes = tuple(note for picture in read.values() for note in picture.notes)
    return EditJob(spec, files, runtime, loras, start, size, reference, masks["mask"], masks["image_mask"], notes)


def mask_values(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask picture cropped like the pictures, as (H, W) floats: its grey level, white 1."""
    from fpgen.buckets import resize_and_center_crop

    return resize_and_center_crop(picture, height, width).astype(np.float32).mean(axis=2) / 255.0


def latent_mask(mask: np.ndarray):
    """An (H, W) mask at latent resolution (8x8 pixel means), shaped to multiply a (1, C, 1, h, w) latent."""
    import torch

    return torch.nn.functional.avg_pool2d(torch.from_numpy(mask)[None, None], 8)[:, :, None]


def sample_one_frame(components, inputs, settings: Settings, context, on_step=None):
    """The one latent frame (1, C, 1, h, w), float32 on the CPU, sampled in ``context`` (``fpgen.packing.pack_one_frame``)."""
    import torch

    from fpgen.denoiser import Guidance
    from fpgen.geometry import LATENT_CHANNELS
    from fpgen.packing import context_to

    parts, device, dtype = components.family.parts, components.runtime.device, components.runtime.transformer_dtype
    positive = parts.conditioning(inputs.positive, inputs.image_embeds, device, dtype)
    negative = parts.conditioning(inputs.negative, inputs.image_embeds, device, dtype) if inputs.negative is not None else None
    height, width = inputs.start_latent.shape[-2:]
    noise = torch.randn((1, LATENT_CHANNELS, 1, height, width), generator=torch.Generator("cpu").manual_seed(settings.seed))
    guidance = Guidance(settings.distilled_guidance, settings.cfg, settings.guidance_rescale)
    with components.denoising() as (transformer, blocks):
        blocks.reset_hooks()
        denoise = parts.denoiser(transformer, blocks, positive, negative, context_to(context, device), guidance)
        latent = parts.sample(components, denoise, noise.to(device), settings.steps, height * width // 4, on_step or (lambda i, x0: None))
    return latent.float().cpu()


def edit_context(job: EditJob, inputs):
    """The packed context of ``job``: start latent (masked), history slots, reference (masked) at its index."""
    from fpgen.packing import pack_one_frame

    start, reference = inputs.start_latent, inputs.end_latent
    if job.image_mask is not None:
        start = start * latent_mask(job.image_mask)
    if reference is not None and job.mask is not None:
        reference = reference * latent_mask(job.mask)
    window = job.settings.window
    return pack_one_frame(start, window, job.spec.target(window), job.spec.slots, reference, job.spec.reference_index)


def run_edit(components, job: EditJob, on_step=None) -> np.ndarray:
    """Encode, sample the one frame, decode it and write the PNG (atomically); the picture, (H, W, 3) uint8."""
    from PIL import Image, PngImagePlugin

    from fpgen.config import Pictures
    from fpgen.framepack import decode, encode
    from fpgen.pixels import to_uint8

    settings = job.settings
    negative = settings.negative_prompt if settings.cfg != 1.0 else None
    inputs = encode(components, Pictures(job.start, job.size, end=job.reference), [settings.prompt], negative, settings.window)
    latent = sample_one_frame(components, inputs, settings, edit_context(job, inputs), on_step)
    picture = to_uint8(decode(components, latent))[0]
    output = job.spec.output
    output.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("fpgen", json.dumps(job.spec.options()))
    partial = output.with_name(output.name + ".partial")
    try:
        Image.fromarray(picture).save(partial, format="PNG", pnginfo=info)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return picture
