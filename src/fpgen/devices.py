"""Which device runs what, in which dtype.

CUDA follows the official demo: transformer bf16, text encoders, SigLIP and VAE fp16. On the CPU the
encoders and VAE run in float32 and ``--dtype`` sets only the transformer's compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fpgen.errors import InputError

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    transformer_dtype: torch.dtype
    encoder_dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown --device {device!r}", "use auto, cuda, cuda:N or cpu") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but PyTorch sees no CUDA GPU", "use --device cpu, or install a CUDA build of torch")
    if chosen.type not in ("cuda", "cpu"):
        raise InputError(f"--device {device} is not supported", "use auto, cuda, cuda:N or cpu")
    if dtype == "auto":
        transformer_dtype = torch.bfloat16 if chosen.type == "cuda" else torch.float32
    elif dtype in DTYPES:
        transformer_dtype = DTYPES[dtype]
    else:
        raise InputError(f"unknown --dtype {dtype!r}", "use auto, bfloat16 or float32")
    encoder_dtype = torch.float16 if chosen.type == "cuda" else torch.float32
    return Placement(chosen, transformer_dtype, encoder_dtype)
