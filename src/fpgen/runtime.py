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

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from fpgen.errors import InputError
from fpgen.spec import RuntimeRequest

Mode = Literal["exact", "fast", "low-vram"]
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}

# Measured at the 640 bucket on an H100 (benchmarks/RESULTS.md): a job with every model resident
# and the untiled VAE decode peaked at 66.6 GiB reserved; a step's activations stay under 2 GiB
# and the tiled decode ran inside the 6 GiB low-vram cap. Margins on top.
ALL_RESIDENT_GIB = 72.0  # every model on the GPU, untiled VAE decode
WORKSPACE_GIB = 8.0  # besides a resident transformer: activations and a tiled VAE decode
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

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        visiting = ", encoders visit the GPU per call" if self.offload_encoders and self.mode != "low-vram" else ""
        return f"mode: {self.mode} ({self.reason}{visiting}) on {self.device}, transformer {str(self.transformer_dtype).removeprefix('torch.')}"


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


def transformer_parameter_bytes(path: Path, dtype: torch.dtype) -> int:
    """Size of the transformer in ``dtype``, read from the safetensors headers (nothing is loaded)."""
    from safetensors import safe_open

    count = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            count += sum(int(torch.Size(f.get_slice(key).get_shape()).numel()) for key in f.keys())
    return count * torch.empty((), dtype=dtype).element_size()


def plan_runtime(request: RuntimeRequest, transformer: Path | None = None) -> RuntimePlan:
    """The one runtime decision: what was asked for, or low-vram when the transformer and its workspace do not fit."""
    device, transformer_dtype, encoder_dtype = choose_device(request.device, request.dtype)
    if device.type != "cuda":
        if request.fast or request.low_vram or request.vram_budget:
            raise InputError("--fast, --low-vram and --vram-budget need a CUDA GPU", "drop them, or run with --device cuda")
        return RuntimePlan(device, transformer_dtype, encoder_dtype)
    if request.vram_budget is not None and request.vram_budget <= 0:
        raise InputError(f"--vram-budget must be positive (got {request.vram_budget})", "e.g. --vram-budget 6")
    budget = request.vram_budget or gpu_memory_gib(device)
    size = transformer_parameter_bytes(transformer, transformer_dtype) if transformer is not None else 0
    needed = size / GIB * (0.5 if request.fast else 1.0) + WORKSPACE_GIB
    if request.low_vram:
        mode, reason = "low-vram", "asked for with --low-vram"
    elif budget < needed:
        mode, reason = "low-vram", f"{budget:.0f} GiB of GPU memory is less than the {needed:.0f} GiB a resident transformer needs"
    elif request.fast:
        mode, reason = "fast", "asked for with --fast"
    else:
        mode, reason = "exact", f"{budget:.0f} GiB of GPU memory holds every model"
    offload = mode == "low-vram" or budget < ALL_RESIDENT_GIB
    return RuntimePlan(device, transformer_dtype, encoder_dtype, mode, reason, offload, request.compile)
