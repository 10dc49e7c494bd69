"""The models fpgen knows: for each name, exactly the repos, folders and files it needs.

``fpgen generate`` and ``fpgen download`` both resolve through ``resolve_model``; nothing else in
fpgen names a Hub repository.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from fpgen.checkpoint import config_from_shapes, is_gguf, read_gguf_header, read_header, strip_prefix
from fpgen.errors import InputError
from fpgen.families import DEMO, FRAMEPACK, FRAMEPACK_F1, HELIOS, HELIOS_DISTILLED, HELIOS_MID, Family, family_for_order
from fpgen.plan import Order

HUNYUAN_VIDEO = "hunyuanvideo-community/HunyuanVideo"
FLUX_REDUX = "lllyasviel/flux_redux_bfl"
TRANSFORMER_FILES = ("config.json", "diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.safetensors.index.json")
DEMO_FOLDER = Path(__file__).parent / "demo_model"  # package data: a small FramePack trained by fpgen (demo/README.md);
# its example.png is a held-out photograph (scikit-image's coffee.png, CC0), never trained on
METADATA_FILE = "fpgen.json"  # written next to a full finetune: {"order": ..., "base_model": ...}


@dataclass(frozen=True)
class Source:
    """One folder of one Hub repository (or of a local directory when ``local`` is set)."""

    repo: str
    subfolder: str = ""
    revision: str | None = None  # a branch, tag or commit id to pin; None follows the repo's default branch
    files: tuple[str, ...] = ("*",)
    local: Path | None = None

    @property
    def allow_patterns(self) -> list[str]:
        return [f"{self.subfolder}/{f}" if self.subfolder else f for f in self.files]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    transformer: Source
    text_encoder: Source = Source(HUNYUAN_VIDEO, "text_encoder")
    text_encoder_2: Source = Source(HUNYUAN_VIDEO, "text_encoder_2")
    tokenizer: Source = Source(HUNYUAN_VIDEO, "tokenizer")
    tokenizer_2: Source = Source(HUNYUAN_VIDEO, "tokenizer_2")
    vae: Source = Source(HUNYUAN_VIDEO, "vae")
    image_encoder: Source = Source(FLUX_REDUX, "image_encoder")
    feature_extractor: Source = Source(FLUX_REDUX, "feature_extractor")
    scheduler: Source | None = None  # a family whose sampler is configured by the repo (Helios)
    download_gb: float | None = None  # what ``fpgen download`` fetches with nothing cached (README, Models and downloads)
    example: Path | None = None  # the start picture a job without one takes (a shipped model's own)

    @property
    def order(self) -> Order:
        return self.family.sections.name

    @property
    def shipped(self) -> bool:
        """Every file inside fpgen itself (the demo): nothing to download, nothing in the cache."""
        return all(source.local is not None for source in self.sources().values())

    def sources(self) -> dict[str, Source]:
        return {name: getattr(self, name) for name in self.family.components}


def helios_spec(name: str, family: Family, repo: str, download_gb: float | None = None) -> ModelSpec:
    """A Helios checkpoint: every component in its own repo, in HeliosPipeline's folders (model_index.json)."""
    folder = lambda subfolder, files=("*",): Source(repo, subfolder, files=files)  # noqa: E731
    return ModelSpec(
        name, family, folder("transformer", TRANSFORMER_FILES), text_encoder=folder("text_encoder"), tokenizer=folder("tokenizer"),
        vae=folder("vae", TRANSFORMER_FILES), scheduler=folder("scheduler", ("scheduler_config.json",)), download_gb=download_gb,
    )  # fmt: skip


def packaged_spec(name: str, family: Family, folder: Path) -> ModelSpec:
    """A model shipped inside fpgen: every component a folder of ``folder``, nothing to download."""
    here = lambda component: Source(f"fpgen/{name}", component, local=folder / component)  # noqa: E731
    return ModelSpec(
        name, family, here("transformer"), text_encoder=here("text_encoder"), text_encoder_2=here("text_encoder_2"), tokenizer=here("tokenizer"),
        tokenizer_2=here("tokenizer_2"), vae=here("vae"), image_encoder=here("image_encoder"), feature_extractor=here("feature_extractor"),
        example=folder / "example.png",
    )  # fmt: skip


MODELS: dict[str, ModelSpec] = {
    "framepack": ModelSpec("framepack", FRAMEPACK, Source("lllyasviel/FramePackI2V_HY", files=TRANSFORMER_FILES), download_gb=42.8),
    "framepack-f1": ModelSpec("framepack-f1", FRAMEPACK_F1, Source("lllyasviel/FramePack_F1_I2V_HY_20250503", files=TRANSFORMER_FILES), download_gb=42.8),
    "helios": helios_spec("helios", HELIOS, "BestWishYsh/Helios-Base"),
    "helios-mid": helios_spec("helios-mid", HELIOS_MID, "BestWishYsh/Helios-Mid"),
    "helios-distilled": helios_spec("helios-distilled", HELIOS_DISTILLED, "BestWishYsh/Helios-Distilled"),
    "demo": packaged_spec("demo", DEMO, DEMO_FOLDER),
}


def _guess_order(name: str) -> Order:
    """F1 checkpoints sample forwards; everything else is taken to be the original inverted model."""
    return "forward" if "f1" in name.lower() else "inverted"


def resolve_model(model: str, revision: str | None = None) -> ModelSpec:
    """A registry name, a Hub repo id (``owner/name``) or a local transformer folder.

    ``revision`` (a branch, tag or commit) replaces the transformer repo's revision; the shared
    encoders stay at the revision the registry names.
    """
    spec = _resolve(model)
    if revision is None:
        return spec
    if spec.transformer.local is not None:
        raise InputError(f"--revision applies to Hub models, not to the local folder {model}", "drop --revision")
    return replace(spec, transformer=replace(spec.transformer, revision=revision))


def checkpoint_spec(path: Path) -> ModelSpec:
    """A single transformer file (kijai's FramePackI2V_HY_bf16 / _fp8_e4m3fn, a GGUF) with the shared encoders.

    F1 and the original model have the same tensors, so the order comes from a safetensors file's
    ``__metadata__`` (``order``, as fpgen writes it) or the file's name ("f1" in it: forward).
    """
    refs, metadata = (read_gguf_header(path), {}) if is_gguf(path) else read_header(path)
    config_from_shapes(strip_prefix(refs), path)  # not a FramePack transformer: said now, before anything loads
    order = metadata.get("order") if metadata.get("order") in ("forward", "inverted") else _guess_order(path.name)
    return ModelSpec(str(path), family_for_order(order), Source(str(path), files=(path.name,), local=path))


def _resolve(model: str) -> ModelSpec:
    if model in MODELS:
        return MODELS[model]
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() in (".safetensors", ".gguf"):
        return checkpoint_spec(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} has no config.json", "pass a diffusers transformer folder, a Hub repo id, or one of: " + ", ".join(MODELS))
        metadata = path / METADATA_FILE
        saved = json.loads(metadata.read_text()).get("order") if metadata.is_file() else None
        return ModelSpec(str(path), family_for_order(saved or _guess_order(path.name)), Source(str(path), files=TRANSFORMER_FILES, local=path))
    if model.count("/") == 1 and all(model.split("/")) and not path.exists():
        return ModelSpec(model, family_for_order(_guess_order(model)), Source(model, files=TRANSFORMER_FILES))
    raise InputError(f"unknown model {model!r}", "use one of: " + ", ".join(MODELS) + ", a Hub repo id (owner/name), a local folder, or a .safetensors or .gguf transformer file")
