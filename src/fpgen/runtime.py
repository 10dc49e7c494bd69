"""Where and how a job runs: device, dtypes and mode, decided once with one reason.

CUDA follows the official demo: transformer bf16, text encoders, SigLIP and VAE fp16. On the CPU
the encoders and VAE run in float32 and ``--dtype`` sets only the transformer's compute dtype.

Modes (``fpgen.acceleration`` implements the first two, ``fpgen.offload`` the third):
- exact (default on CUDA): the official bf16 maths, compiled, rounding as eager PyTorch does;
- fast: FP8 matmuls and TeaCache; results move away from the official ones;
- low-vram: the transformer's blocks and the Llama stream from pinned host memory, the VAE tiles;
  chosen by itself when the card cannot hold the transformer.
Below the measured all-resident peak the encoders also visit the GPU only while they are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from fpgen.attention import attention_for
from fpgen.checkpoint import TransformerWeights, is_gguf
from fpgen.errors import InputError
from fpgen.quantize import AUTO_KINDS, SIZE_VS_BF16, check_quantization_available
from fpgen.spec import RuntimeRequest

Mode = Literal["exact", "fast", "low-vram"]
Streaming = Literal["pinned", "mapped"]
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}

# Measured at the 640 bucket on an H100 (benchmarks/RESULTS.md): a job with every model resident
# and the untiled VAE decode peaked at 66.6 GiB reserved; a step's activations stay under 2 GiB
# and the tiled decode ran inside the 6 GiB low-vram cap. Margins on top.
ALL_RESIDENT_GIB = 72.0  # every model on the GPU, untiled VAE decode
WORKSPACE_GIB = 8.0  # besides a resident transformer: activations and a tiled VAE decode
HOST_WORKSPACE_GIB = 8.0  # host memory besides pinned blocks (CLIP, SigLIP, the VAE, frames, the process): today's low-vram peaked at 30 GiB
GIB = 2**30


@dataclass(frozen=True)
class RuntimePlan:
    device: torch.device
    transformer_dtype: torch.dtype
    encoder_dtype: torch.dtype
    mode: Mode = "exact"
    reason: str = "CPU"
    offload_encoders: bool = False  # encoders visit the GPU per call and the VAE decodes in tiles
    compile: bool = False
    attention: str = "sdpa"  # the blocks' attention backend (fpgen.attention)
    attention_reason: str = "not on CUDA"
    streaming: Streaming | None = None  # low-vram: blocks pinned in host memory, or read from the memory-mapped file
    streaming_reason: str = ""
    quantize: str | None = None  # the blocks' weights quantized (fpgen.quantize), resident on the device
    quantize_reason: str = ""

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        visiting = ", encoders visit the GPU per call" if self.offload_encoders and self.mode != "low-vram" else ""
        streaming = f", blocks {STREAMING_WORDS[self.streaming]} ({self.streaming_reason})" if self.streaming else ""
        weights = f" with {self.quantize} weights ({self.quantize_reason})" if self.quantize else ""
        return (
            f"mode: {self.mode} ({self.reason}{visiting}{streaming}) on {self.device}, transformer {str(self.transformer_dtype).removeprefix('torch.')}{weights}, "
            f"attention: {self.attention} ({self.attention_reason})"
        )


def choose_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype, torch.dtype]:
    """The device, the transformer's dtype and the encoders' dtype."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown --device {device!r}", "use auto, cuda, cuda:N or cpu") from None
    if chosen.type not in ("cuda", "cpu"):
        raise InputError(f"--device {device} is not supported", "use auto, cuda, cuda:N or cpu")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but PyTorch sees no CUDA GPU", "use --device cpu, or install a CUDA build of torch")
    if dtype != "auto" and dtype not in DTYPES:
        raise InputError(f"unknown --dtype {dtype!r}", "use auto, bfloat16 or float32")
    is_cuda = chosen.type == "cuda"
    transformer_dtype = DTYPES[dtype] if dtype != "auto" else (torch.bfloat16 if is_cuda else torch.float32)
    return chosen, transformer_dtype, torch.float16 if is_cuda else torch.float32


def gpu_memory_gib(device: torch.device) -> float:
    return torch.cuda.get_device_properties(device).total_memory / GIB


STREAMING_WORDS = {"pinned": "pinned in host memory", "mapped": "read from the memory-mapped file"}


def transformer_parameter_bytes(path: Path, dtype: torch.dtype) -> int:
    """Size of the transformer (a folder or a single file) in ``dtype``, read from the files' headers (nothing is loaded)."""
    return TransformerWeights.of(path).nbytes(dtype.itemsize)


def host_memory_gib() -> float:
    """This machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def choose_mode(budget_gib: float, transformer_bytes: int, request: RuntimeRequest) -> tuple[Mode, str]:
    """What was asked for, or low-vram when the transformer and its workspace do not fit in ``budget_gib``."""
    needed = transformer_bytes / GIB * (0.5 if request.fast else 1.0) + WORKSPACE_GIB
    if request.low_vram:
        return "low-vram", "asked for with --low-vram"
    if budget_gib < needed:
        return "low-vram", f"{budget_gib:.0f} GiB of GPU memory is less than the {needed:.0f} GiB a resident transformer needs"
    if request.fast:
        return "fast", "asked for with --fast"
    return "exact", f"{budget_gib:.0f} GiB of GPU memory holds every model"


def choose_quantization(budget_gib: float, transformer_bytes: int, request: RuntimeRequest) -> tuple[str | None, str]:
    """The blocks' weight quantization: the one asked for; with ``auto``, none when the bf16 transformer
    fits ``budget_gib`` (or low-vram is asked for), else the least lossy of ``AUTO_KINDS`` that fits, else
    none (low-vram then streams bf16 blocks)."""
    if request.quantize != "auto":
        return request.quantize, f"asked for with --quantize {request.quantize}" if request.quantize else ""
    if request.low_vram:
        return None, ""
    for kind, factor in (("bf16", 1.0), *((kind, SIZE_VS_BF16[kind]) for kind in AUTO_KINDS)):
        needed = transformer_bytes * factor / GIB + WORKSPACE_GIB
        if budget_gib >= needed:
            return (None, "") if kind == "bf16" else (kind, f"--quantize auto: {budget_gib:.0f} GiB holds the {kind} transformer ({needed:.0f} GiB), not bf16")
    return None, ""


def choose_streaming(ram_gib: float, transformer_bytes: int, loras: bool) -> tuple[Streaming, str]:
    """Where low-vram keeps the blocks: pinned in host memory (fastest) when ``ram_gib`` holds them and
    the rest of the job, else read block by block from the memory-mapped checkpoint (two blocks of
    own memory). LoRAs are merged into the weights, which then exist only in memory: pinned."""
    needed = transformer_bytes / GIB + HOST_WORKSPACE_GIB
    if loras:
        return "pinned", f"LoRAs are merged into them; {ram_gib:.0f} GiB of RAM, {needed:.0f} GiB needed"
    if ram_gib < needed:
        return "mapped", f"{ram_gib:.0f} GiB of RAM is less than the {needed:.0f} GiB pinned blocks need"
    return "pinned", f"{ram_gib:.0f} GiB of RAM holds them"


def plan_runtime(request: RuntimeRequest, transformer: Path | None = None, loras: bool = False, picks_attention: bool = True) -> RuntimePlan:
    """The one runtime decision: what was asked for, or low-vram when the transformer and its workspace do not fit
    (and then where its blocks stream from, by ``--ram-budget`` or this machine's RAM). ``picks_attention``: the
    model family's blocks take the attention backend chosen here (Helios' keep SDPA: FA3 was slower for them)."""
    device, transformer_dtype, encoder_dtype = choose_device(request.device, request.dtype)
    gguf = transformer is not None and is_gguf(transformer)
    if gguf and (request.quantize or request.fast or request.low_vram or loras):
        raise InputError("a GGUF transformer is quantized already and stays on the GPU as it is", "drop --quantize, --fast, --low-vram and --lora, or load a safetensors file for them")
    if request.quantize:
        check_quantization_available()
    if device.type != "cuda":
        if request.fast or request.low_vram or request.vram_budget or request.ram_budget:
            raise InputError("--fast, --low-vram, --vram-budget and --ram-budget need a CUDA GPU", "drop them, or run with --device cuda")
        if request.quantize == "auto":
            raise InputError("--quantize auto picks by GPU memory", "on the CPU name one: --quantize int8, fp8 or nf4")
        return RuntimePlan(device, transformer_dtype, encoder_dtype, quantize=request.quantize, quantize_reason=f"asked for with --quantize {request.quantize}")
    if request.vram_budget is not None and request.vram_budget <= 0:
        raise InputError(f"--vram-budget must be positive (got {request.vram_budget})", "e.g. --vram-budget 6")
    budget = request.vram_budget or gpu_memory_gib(device)
    size = transformer_parameter_bytes(transformer, transformer_dtype) if transformer is not None else 0
    quantize, quantize_reason = choose_quantization(budget, size, request)
    if quantize and (request.fast or request.low_vram):
        raise InputError(f"--quantize {request.quantize} cannot be combined with {'--fast' if request.fast else '--low-vram'}", "use one of them")
    mode, reason = choose_mode(budget, int(size * SIZE_VS_BF16[quantize]) if quantize else size, request)
    if gguf and mode == "low-vram":
        raise InputError(f"the GGUF transformer does not fit {budget:.0f} GiB of GPU memory ({reason})", "use a smaller GGUF, or a safetensors file (low-vram mode streams it)")
    if quantize and mode == "low-vram":
        raise InputError(f"the {quantize} transformer does not fit {budget:.0f} GiB of GPU memory ({reason})", "drop --quantize: low-vram mode streams the blocks instead")
    if request.ram_budget is not None and request.ram_budget <= 0:
        raise InputError(f"--ram-budget must be positive (got {request.ram_budget})", "e.g. --ram-budget 16")
    streaming, streaming_reason = choose_streaming(request.ram_budget or host_memory_gib(), size, loras) if mode == "low-vram" else (None, "")
    offload = mode == "low-vram" or budget < ALL_RESIDENT_GIB
    attention, why = attention_for(device, fast=mode == "fast") if picks_attention else ("sdpa", "this model family keeps SDPA (FA3 was slower for Helios on an H200)")
    compile = request.compile and not (quantize or gguf)  # quantized weights run eager: their compiled kernels are not measured yet
    return RuntimePlan(device, transformer_dtype, encoder_dtype, mode, reason, offload, compile, attention, why, streaming, streaming_reason, quantize, quantize_reason)
