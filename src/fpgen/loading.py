"""Load FramePack's models (diffusers transformer and VAE, transformers encoders) and place them for a mode.

``Models`` loads each component on first use. The mode decides placement: in the exact and fast
modes everything sits on the GPU (encoders visit it only while used when the card is smaller); in
the low-vram mode the transformer's blocks and the Llama encoder stream from pinned host memory,
the other models visit the GPU only for their call, and the Llama is dropped from host memory once
the prompts are encoded (``release``), so the 13B transformer and the 8B encoder never sit in RAM
together.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from fpgen.acceleration import ALL_RESIDENT_GIB, ModeChoice, compile_blocks, float8_linears, vram_budget
from fpgen.conditioning import check_prompt_template
from fpgen.devices import Placement
from fpgen.lora import Lora, LoraChoice, apply_loras
from fpgen.offload import StreamedBlockStack, load_transformer_for_streaming, on_device, release_cached_memory, stream_module_layers, use_expandable_segments
from fpgen.plan import Order
from fpgen.transformer import BlockStack, use_float32_head

ENCODERS = ("text_encoder", "text_encoder_2", "image_encoder", "vae")


def siglip_processor_class():
    """The PIL implementation of SigLIP's preprocessing, which the official results were made with."""
    import transformers

    return getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor


def load_tokenizers(paths: dict[str, Path]):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    check_prompt_template(tokenizer)
    return tokenizer, AutoTokenizer.from_pretrained(paths["tokenizer_2"])


def load_transformer(path: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(path, torch_dtype=dtype)
    use_float32_head(model)
    return model.to(device).eval().requires_grad_(False)


def load_vae(path: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo.from_pretrained(path, torch_dtype=dtype).to(device).eval().requires_grad_(False)


def load_encoder(name: str, path: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    from transformers import CLIPTextModel, LlamaModel, SiglipVisionModel

    cls = {"text_encoder": LlamaModel, "text_encoder_2": CLIPTextModel, "image_encoder": SiglipVisionModel}[name]
    return cls.from_pretrained(path, dtype=dtype).to(device).eval().requires_grad_(False)


def transformer_parameter_bytes(path: Path, dtype: torch.dtype) -> int:
    """Size of the transformer in ``dtype``, read from the safetensors headers (nothing is loaded)."""
    from safetensors import safe_open

    count = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                count += int(torch.Size(shape).numel())
    return count * torch.empty((), dtype=dtype).element_size()


class Models:
    """Every model a FramePack job needs, loaded on first use and placed for the chosen mode."""

    def __init__(
        self,
        paths: dict[str, Path],
        order: Order,
        placement: Placement,
        mode: ModeChoice,
        compile: bool = True,
        vram_budget_gib: float | None = None,
        loras: Sequence[tuple[Lora, LoraChoice]] = (),
    ):
        self.paths, self.order, self.placement, self.mode, self.compile = paths, order, placement, mode, compile
        self.loras = list(loras)  # merged into the transformer's weights as it loads, before any FP8 conversion or compilation
        self._loaded: dict[str, object] = {}
        cuda = placement.is_cuda
        # Below the measured all-resident peak, the encoders visit the GPU per call and the VAE decodes in tiles.
        self.offload_encoders = cuda and (mode.mode == "low-vram" or vram_budget(placement, vram_budget_gib) < ALL_RESIDENT_GIB)
        if cuda and mode.mode == "low-vram":
            use_expandable_segments()

    def _load(self, name: str):
        device, encoder_dtype = self.placement.device, self.placement.encoder_dtype
        resident = "cpu" if self.offload_encoders else device
        if name in ("tokenizer", "tokenizer_2"):
            self._loaded["tokenizer"], self._loaded["tokenizer_2"] = load_tokenizers(self.paths)
            return self._loaded[name]
        if name == "feature_extractor":
            model = siglip_processor_class().from_pretrained(self.paths[name])
        elif name == "transformer":
            model = self._load_transformer()
        elif name == "blocks":
            model = self._blocks(self.transformer)
        elif name == "vae":
            model = load_vae(self.paths[name], encoder_dtype, resident)
            if self.offload_encoders:
                model.enable_tiling()
        elif name == "text_encoder" and self.mode.mode == "low-vram":
            model = load_encoder(name, self.paths[name], encoder_dtype, "cpu")
            stream_module_layers(model, device)
        else:
            model = load_encoder(name, self.paths[name], encoder_dtype, resident)
        self._loaded[name] = model
        return model

    def _load_transformer(self):
        mode, device = self.mode.mode, self.placement.device
        if self.placement.is_cuda and mode == "low-vram":  # blocks straight into pinned host memory, the rest onto the GPU
            model = load_transformer_for_streaming(self.paths["transformer"], self.placement.transformer_dtype, device)
            use_float32_head(model)
        else:
            model = load_transformer(self.paths["transformer"], self.placement.transformer_dtype, device if mode == "exact" else "cpu")
        apply_loras(model, self.loras)
        if not self.placement.is_cuda:
            return model
        if mode == "fast":  # the blocks arrive on the GPU converted to FP8, one at a time; the rest moves as it is
            for name, child in model.named_children():
                if name not in ("transformer_blocks", "single_transformer_blocks"):
                    child.to(device)
            float8_linears(model, device)
        if self.compile:
            compile_blocks(model, match_eager_rounding=mode != "fast")
        return model

    def _blocks(self, transformer) -> BlockStack:
        if self.mode.mode == "low-vram":
            return StreamedBlockStack(transformer, self.placement.device)
        return BlockStack(transformer)

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in (*ENCODERS, "transformer", "blocks", "tokenizer", "tokenizer_2", "feature_extractor"):
            raise AttributeError(name)
        return self._loaded[name] if name in self._loaded else self._load(name)

    def load_all(self) -> Models:
        """Load everything now, so that missing or broken files show before a job starts.

        In the low-vram mode the transformer waits until the prompts are encoded and the Llama is
        released, so the two never occupy host memory together.
        """
        later = ("transformer", "blocks") if self.mode.mode == "low-vram" else ()
        for name in ("tokenizer", "feature_extractor", *ENCODERS, "transformer", "blocks"):
            if name not in later:
                getattr(self, name)
        return self

    @contextmanager
    def use(self, *names: str) -> Iterator[tuple]:
        """The named models, on the GPU for the duration of the block when they normally wait on the CPU."""
        with ExitStack() as stack:
            modules = []
            for name in names:
                module = getattr(self, name)
                visits = self.offload_encoders and name in ENCODERS and not (name == "text_encoder" and self.mode.mode == "low-vram")
                modules.append(stack.enter_context(on_device(module, self.placement.device, visits)))
            yield tuple(modules)

    def provide(self, **modules) -> Models:
        """Use these modules (e.g. the transformer being trained) instead of loading them from ``paths``."""
        self._loaded.update(modules)
        return self

    def release(self, *names: str) -> None:
        """Drop models from memory; they load again if used later."""
        for name in names:
            self._loaded.pop(name, None)
        gc.collect()
        release_cached_memory(self.placement.device)


def load_models(
    paths: dict[str, Path],
    order: Order,
    placement: Placement,
    mode: ModeChoice | None = None,
    compile: bool = True,
    vram_budget_gib: float | None = None,
    loras: Sequence[tuple[Lora, LoraChoice]] = (),
) -> Models:
    return Models(paths, order, placement, mode or ModeChoice("exact", "default"), compile, vram_budget_gib, loras).load_all()
