"""Weight-only quantization of the transformer's blocks (``--quantize int8|fp8|nf4``), through torchao.

The blocks' linear weights (95% of the 13B parameters) are stored quantized and dequantized in
each matmul; activations, the embedders, norms and the float32 output head keep the compute
dtype. What each costs in memory and accuracy is measured by ``benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import importlib.util
import math
import logging
from contextlib import contextmanager

import torch

from fpgen.errors import InputError
from fpgen.terminal import IMPORT_NOISE

# Bytes per weight relative to bf16, scales included: per-row int8/fp8, NF4 in blocks of 64 with
# 8-bit scalers in blocks of 256 (4 bits + 8/64 + 32/(64*256) bits).
SIZE_VS_BF16 = {"int8": 0.5, "fp8": 0.5, "nf4": 0.27}
NF4_BLOCK, NF4_SCALER_BLOCK = 64, 256  # QLoRA's; every linear of the released transformer is a multiple of 64*256 weights
BY_ACCURACY = ("int8", "fp8", "nf4")  # least lossy first (relative L2 on random weights: 4e-3, 3e-2, 8e-2)
# What --quantize auto may pick: the kinds measured to lower the GPU peak. On the H200 (benchmarks/RESULTS.md,
# 2026-12-01) int8 took the transformer from 27.7 to 16.3 GiB; fp8 (28.0) and nf4 (34.1) did not.
AUTO_KINDS = ("int8",)


def check_quantization_available() -> None:
    """A one-line error before any model loads when the optional extra is missing."""
    if importlib.util.find_spec("torchao") is None:
        raise InputError("--quantize needs torchao, which is not installed", "pip install 'fpgen[quantize]'")


@contextmanager
def _quiet_import():
    """torchao's import warns about every CUDA extension a CPU build of torch cannot load, and torch about its enums."""
    loggers = [logging.getLogger(name) for name in IMPORT_NOISE]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quantize_blocks(transformer, kind: str, device: torch.device | None = None) -> int:
    """Quantize every linear weight of the blocks in place; returns how many.

    With ``device``, each block moves there just before it is quantized, so the GPU never holds
    more than one block unquantized.
    """
    with _quiet_import():
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_, to_nf4

    count = 0
    for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks):
        if device is not None:
            block.to(device)
        linears = [module for module in block.modules() if isinstance(module, torch.nn.Linear)]
        if kind == "nf4":
            for linear in linears:  # blocks of 64 weights, their scales quantized in blocks of 256 (fewer for small layers)
                scaler_block = math.gcd(NF4_SCALER_BLOCK, linear.weight.numel() // NF4_BLOCK)
                linear.weight = torch.nn.Parameter(to_nf4(linear.weight.detach(), NF4_BLOCK, scaler_block), requires_grad=False)
        else:
            quantize_(block, Int8WeightOnlyConfig() if kind == "int8" else Float8WeightOnlyConfig())
        count += len(linears)
    return count
