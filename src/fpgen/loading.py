"""Load a family's models (diffusers transformer and VAE, transformers encoders) as ``Components``.

``Components`` holds the loaded modules of one job's runtime plan and carries out its memory policy
in phases: ``encoding()`` lends the encoders (on the GPU for the block when they wait on the CPU),
``denoising()`` the transformer and its block stack, ``decoding()`` the VAE. In the exact and fast
modes everything sits on the GPU (encoders visit it only while used when the card is smaller); in
the low-vram mode the transformer's blocks and the Llama stream from pinned host memory, the Llama
is dropped when the encoding phase ends and the transformer loads only when denoising starts, so
the 13B transformer and the 8B encoder never sit in RAM together.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fpgen.acceleration import BLOCK_LISTS, compile_blocks, compile_decoder, float8_linears
from fpgen.attention import use_attention
from fpgen.checkpoint import TransformerWeights, is_gguf, strip_prefix
from fpgen.conditioning import check_prompt_template
from fpgen.lora import Lora, LoraChoice, apply_loras
from fpgen.offload import STREAMED_PREFIXES, MappedBlockStack, StreamedBlockStack, empty_transformer, fill_parameters, load_mapped_encoder, load_transformer_for_streaming, on_device, release_cached_memory, stream_module_layers, use_expandable_segments
from fpgen.quantize import quantize_blocks
from fpgen.runtime import RuntimePlan
from fpgen.stepcache import StepCachePlan
from fpgen.transformer import BlockStack, use_float32_head
from fpgen.vae_reuse import reuse_vae_tiles

if TYPE_CHECKING:
    from fpgen.hub import ModelFiles



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
    """The transformer of a diffusers folder, or of a single checkpoint file (``fpgen.checkpoint``)."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    if is_gguf(path):
        model = load_gguf_transformer(path, dtype, device)
    elif Path(path).is_file():
        weights = TransformerWeights.of(path)
        model = fill_parameters(empty_transformer(weights.config), weights, lambda key, mapped: mapped.to(device=device, dtype=dtype, copy=True))
    else:
        model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
    use_float32_head(model)
    return model.to(device).eval().requires_grad_(False)


def all_but_blocks_to(model: torch.nn.Module, device: torch.device) -> None:
    for name, child in model.named_children():
        if name not in BLOCK_LISTS:
            child.to(device)


def load_gguf_transformer(path: Path, dtype: torch.dtype, device: torch.device | str):
    """A GGUF transformer through diffusers' GGUF support: the blocks' quantized linear weights stay
    quantized (``GGUFLinear`` dequantizes them per call, in ``dtype``); every other tensor is dequantized
    to ``dtype`` as it loads."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter, dequantize_gguf_tensor

    weights = TransformerWeights.of(path)
    tensors = strip_prefix(load_gguf_checkpoint(str(path), return_tensors=True))
    model = empty_transformer(weights.config)
    for block_name, block in model.named_modules():
        if not block_name.startswith(STREAMED_PREFIXES):
            continue
        for name, linear in list(block.named_children()):
            if isinstance(linear, torch.nn.Linear) and isinstance(tensors.get(f"{block_name}.{name}.weight"), GGUFParameter):
                with torch.device("meta"):
                    setattr(block, name, GGUFLinear(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype=dtype).requires_grad_(False))

    def place(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, GGUFParameter) and isinstance(model.get_submodule(key.rpartition(".")[0]), GGUFLinear):
            return tensor.to(device)
        return dequantize_gguf_tensor(tensor).to(device=device, dtype=dtype)

    return fill_parameters(model, weights, place, tensors)


def load_vae(path: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo.from_pretrained(path, torch_dtype=dtype, use_safetensors=True).to(device).eval().requires_grad_(False)


def load_encoder(name: str, path: Path, dtype: torch.dtype, device: torch.device | str = "cpu"):
    from transformers import CLIPTextModel, LlamaModel, SiglipVisionModel

    cls = {"text_encoder": LlamaModel, "text_encoder_2": CLIPTextModel, "image_encoder": SiglipVisionModel}[name]
    return cls.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device).eval().requires_grad_(False)


@dataclass
class Encoders:
    """The encoders lent for the encoding phase (cleared when it ends, so no name keeps the Llama alive)."""

    tokenizer: object
    text_encoder: object
    tokenizer_2: object
    text_encoder_2: object
    feature_extractor: object
    image_encoder: object
    vae: object


class Components:
    """The loaded models of one family, placed by a runtime plan (see the module docstring)."""

    def __new__(cls, files: ModelFiles, *args, **kwargs):
        """Constructed as plain ``Components``, the object is of the family's own class (``Parts.components``)."""
        chosen = files.spec.family.parts.components if cls is Components else cls
        return super().__new__(chosen)

    def __init__(self, files: ModelFiles, runtime: RuntimePlan, loras: Sequence[tuple[Lora, LoraChoice]] = ()):
        self.files, self.family, self.runtime = files, files.spec.family, runtime
        self.loras = list(loras)  # merged into the transformer's weights as it loads, before any FP8 conversion or compilation
        self.tokenizer = self.tokenizer_2 = self.feature_extractor = None
        self.text_encoder = self.text_encoder_2 = self.image_encoder = self.vae = None
        self.transformer: torch.nn.Module | None = None
        self.blocks: BlockStack | None = None
        if runtime.is_cuda and runtime.mode == "low-vram":
            use_expandable_segments()

    @property
    def paths(self) -> dict[str, Path]:
        return self.files.paths

    @property
    def _resident(self):
        return "cpu" if self.runtime.offload_encoders else self.runtime.device

    def load_encoders(self) -> Components:
        return self.load_text_encoders().load_image_encoder().load_vae()

    def load_text_encoders(self) -> Components:
        device, dtype = self.runtime.device, self.runtime.encoder_dtype
        self.tokenizer, self.tokenizer_2 = load_tokenizers(self.paths)
        if self.runtime.mode == "low-vram":
            if self.runtime.streaming == "mapped":  # its layers read from the file as they stream, like the blocks
                from transformers import LlamaModel

                self.text_encoder = load_mapped_encoder(LlamaModel, self.paths["text_encoder"], dtype)
            else:
                self.text_encoder = load_encoder("text_encoder", self.paths["text_encoder"], dtype, "cpu")
            stream_module_layers(self.text_encoder, device)
        else:
            self.text_encoder = load_encoder("text_encoder", self.paths["text_encoder"], dtype, self._resident)
        self.text_encoder_2 = load_encoder("text_encoder_2", self.paths["text_encoder_2"], dtype, self._resident)
        return self

    def load_image_encoder(self) -> Components:
        self.feature_extractor = siglip_processor_class().from_pretrained(self.paths["feature_extractor"])
        self.image_encoder = load_encoder("image_encoder", self.paths["image_encoder"], self.runtime.encoder_dtype, self._resident)
        return self

    def load_vae(self) -> Components:
        self.vae = load_vae(self.paths["vae"], self.runtime.encoder_dtype, self._resident)
        if self.runtime.offload_encoders:
            self.vae.enable_tiling()
        if self.runtime.is_cuda and self.runtime.compile and self.runtime.mode == "fast":
            compile_decoder(self.vae)
        reuse_vae_tiles(self.vae, store=torch.device("cpu") if self.runtime.offload_encoders else None)
        return self

    def load_transformer(self) -> Components:
        mode, device = self.runtime.mode, self.runtime.device
        if self.runtime.streaming is not None:  # the blocks into pinned host memory or left in the file, the rest onto the GPU
            model = load_transformer_for_streaming(self.paths["transformer"], self.runtime.transformer_dtype, device, mapped=self.runtime.streaming == "mapped")
            use_float32_head(model)
        else:
            resident = mode == "exact" and not self.runtime.quantize
            model = load_transformer(self.paths["transformer"], self.runtime.transformer_dtype, device if resident else "cpu")
        apply_loras(model, self.loras)  # in the compute dtype, before any quantization
        if self.runtime.is_cuda:
            use_attention(model, self.runtime.attention)  # before compiling: the processor is traced into the graph
        if self.runtime.is_cuda and mode == "fast":  # the blocks arrive on the GPU converted to FP8, one at a time; the rest moves as it is
            all_but_blocks_to(model, device)
            float8_linears(model, device)
        if self.runtime.quantize:  # likewise, quantized
            all_but_blocks_to(model, device)
            quantize_blocks(model, self.runtime.quantize, device)
        if self.runtime.is_cuda and self.runtime.compile:
            compile_blocks(model, match_eager_rounding=mode != "fast")
        return self.use_transformer(model)

    def use_transformer(self, model: torch.nn.Module) -> Components:
        """Use ``model`` (loaded here, or the transformer being trained) with the block stack the plan calls for."""
        device, streaming = self.runtime.device, self.runtime.streaming
        if streaming == "mapped":
            blocks = MappedBlockStack(model, device, TransformerWeights.of(self.paths["transformer"]), self.runtime.transformer_dtype)
        else:
            blocks = StreamedBlockStack(model, device) if streaming == "pinned" else BlockStack(model)
        self.transformer, self.blocks = model, blocks
        return self

    def load(self) -> Components:
        """Load everything now, so that missing or broken files show before a job starts (low-vram: the transformer waits for ``denoising``)."""
        self.load_encoders()
        if self.runtime.mode != "low-vram":
            self.load_transformer()
        return self

    def _visit(self, module):
        return on_device(module, self.runtime.device, self.runtime.offload_encoders)

    @contextmanager
    def encoding(self) -> Iterator[Encoders]:
        """The encoders; low-vram drops the Llama from memory when the phase ends (it loads again if needed)."""
        if self.text_encoder is None:
            self.load_encoders()
        streamed_llama = self.runtime.mode == "low-vram"
        with self._visit(self.text_encoder_2), self._visit(self.image_encoder), self._visit(self.vae):
            with on_device(self.text_encoder, self.runtime.device, self.runtime.offload_encoders and not streamed_llama):
                lent = Encoders(self.tokenizer, self.text_encoder, self.tokenizer_2, self.text_encoder_2, self.feature_extractor, self.image_encoder, self.vae)
                try:
                    yield lent
                finally:
                    lent.text_encoder = None
        if streamed_llama:  # the 8B Llama leaves host memory before the 13B transformer loads
            self.text_encoder = None
            gc.collect()
            release_cached_memory(self.runtime.device)

    @contextmanager
    def denoising(self) -> Iterator[tuple[torch.nn.Module, BlockStack]]:
        if self.transformer is None:
            self.load_transformer()
        yield self.transformer, self.blocks

    @contextmanager
    def decoding(self) -> Iterator[torch.nn.Module]:
        with self._visit(self.vae) as vae:
            yield vae

    @contextmanager
    def step_cache(self, plan: StepCachePlan, steps: int) -> Iterator[None]:
        """The job's step cache (``fpgen.stepcache``) on the block stack while it runs."""
        if self.transformer is None:
            self.load_transformer()
        hook = plan.hook(self.blocks, steps)
        if hook is None:
            yield
            return
        self.blocks.hooks.append(hook)
        try:
            yield
        finally:
            self.blocks.hooks.remove(hook)
