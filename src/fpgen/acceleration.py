"""What the exact and fast modes do on CUDA (``fpgen.runtime`` chooses the mode).

- exact (default on CUDA): the official bf16 maths, made faster without changing it: each block
  compiled with torch.compile, rounding as eager PyTorch does; attention through FlashAttention-3
  on Hopper when installed, else PyTorch's SDPA (``fpgen.attention``).
- fast: exact plus FP8 matmuls in the blocks (Ada, Hopper and newer), FP8 attention on Hopper and
  TeaCache; results move away from the official ones (benchmarks/RESULTS.md reports by how much).
- low-vram: the transformer's blocks and the Llama text encoder streamed from pinned host memory,
  VAE tiling; chosen by itself when the card cannot hold the transformer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fpgen.errors import InputError


def fpgen_cache() -> Path:
    """fpgen's cache folder (compiled kernels, MagCache calibrations): $XDG_CACHE_HOME/fpgen or ~/.cache/fpgen."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fpgen"


COMPILE_CACHE = fpgen_cache() / "inductor"


def compile_cache_key(torch_version: str, gpu: str, dtype: torch.dtype, rounding: str) -> str:
    """A folder name for compiled kernels: what changes them besides the shapes.

    Inductor's own cache keys each graph on all of this and on the input shapes too, so the folder
    only keeps artefacts that cannot be reused apart (a torch upgrade or another GPU leaves an old
    folder that can be deleted whole). Shapes stay out: one folder serves every size bucket, and the
    dynamic-shape graph compiled for a new prompt length is shared across buckets.
    """
    parts = (torch_version, gpu, str(dtype).removeprefix("torch."), rounding)
    return "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in part) for part in parts)


def chosen_compile_cache() -> Path | None:
    """TORCHINDUCTOR_CACHE_DIR unless unset or inductor's per-machine default (inductor writes that into the environment itself)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return None if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()) else Path(current)


def rounding_of(match_eager_rounding: bool) -> str:
    return "eager-rounding" if match_eager_rounding else "fused"


def compile_cache_folder(device: torch.device, dtype: torch.dtype, rounding: str) -> Path:
    """fpgen's folder for the kernels compiled on ``device`` (``fpgen warmup`` fills it ahead)."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return COMPILE_CACHE / compile_cache_key(torch.__version__, gpu, dtype, rounding)


def use_persistent_compile_cache(device: torch.device, dtype: torch.dtype, rounding: str) -> Path:
    """Keep inductor's compiled kernels across runs under fpgen's cache, keyed, so the next process starts warm
    (measured on an H200: weights loaded to first step done in 5.4 s). A TORCHINDUCTOR_CACHE_DIR the user
    set elsewhere is kept."""
    folder = compile_cache_folder(device, dtype, rounding)
    current = chosen_compile_cache()
    if current is None or current.is_relative_to(COMPILE_CACHE):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


# Inductor settings that make fused kernels round like eager PyTorch: keep bf16 intermediates'
# downcasts, keep each linear's bias inside its matmul (on GPUs inductor otherwise splits it off,
# rounding twice), and divide with IEEE rounding.
EAGER_ROUNDING = {"emulate_precision_casts": True, "keep_addmm_fused_for_half_dtypes": True, "eager_numerics.division_rounding": True}


def inductor_options(match_eager_rounding: bool) -> dict:
    """The eager-rounding options this torch knows (older releases lack some)."""
    if not match_eager_rounding:
        return {}
    import torch._inductor.config as inductor_config

    known = set(inductor_config._config.keys()) if hasattr(inductor_config, "_config") else set()
    return {key: value for key, value in EAGER_ROUNDING.items() if key in known}


BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")  # FramePack's two kinds of block, Helios' one


def transformer_blocks(transformer) -> list[torch.nn.Module]:
    """Every block of a FramePack or Helios transformer, in order."""
    return [block for name in BLOCK_LISTS for block in getattr(transformer, name, ())]


def compile_blocks(transformer, match_eager_rounding: bool = True) -> None:
    """torch.compile each block in place: fused elementwise work, one graph per block kind.

    Fused kernels keep intermediates in float32 where eager PyTorch rounds to bf16; with
    ``match_eager_rounding`` they round as eager does, so the exact mode stays at eager's numbers.
    """
    blocks = transformer_blocks(transformer)
    embedder = (transformer.x_embedder.proj if hasattr(transformer, "x_embedder") else transformer.patch_embedding).weight  # on the compute device in every mode (streamed blocks wait on the host)
    use_persistent_compile_cache(embedder.device, embedder.dtype, rounding_of(match_eager_rounding))
    options = inductor_options(match_eager_rounding)
    for block in blocks:
        block.compile(options=options)


def compile_decoder(vae) -> None:
    """torch.compile the VAE decoder's forward, before ``vae_reuse`` wraps it (the tile cache then stores compiled outputs).

    Fast mode only: the fused kernels round differently from eager PyTorch (3.5e-3 relative L2 on an
    H200), and a decode takes 2.18 s instead of 3.66 s there (18 latents). Each new tile shape compiles
    once into the same keyed cache as the blocks. Wan's decoder, called once per latent frame with its
    causal cache, compiles into a few graphs (first frame, later frames).
    """
    vae.decoder.forward = torch.compile(vae.decoder.forward)


FP8_MAX = 448.0  # largest float8_e4m3fn value


def to_float8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scaled float8_e4m3fn copy of a 2-D tensor, and the float32 (rows, 1) scales."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


class Float8Linear(torch.nn.Module):
    """A Linear whose matmul runs in FP8: weights stored as e4m3 with per-output-row scales,
    activations quantised per token on the fly (fused into one kernel once compiled).

    Plain tensors rather than tensor subclasses, so torch.compile traces one graph per block kind
    and reuses it for all 60 blocks.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight, scale = to_float8_rows(linear.weight.detach())
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.out_dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, x_scale = to_float8_rows(x.reshape(-1, x.shape[-1]))
        out = torch._scaled_mm(rows, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale, out_dtype=self.out_dtype)
        out = out.reshape(*x.shape[:-1], -1)
        return out + self.bias if self.bias is not None else out


def float8_linears(transformer, device: torch.device | None = None) -> int:
    """Swap the blocks' large linears for Float8Linear; the per-token modulation linears and
    everything outside the blocks stay bf16. Returns how many were swapped (FramePack's and Helios' blocks alike).

    With ``device``, each block moves there just before its conversion, so the GPU never holds
    more than one block in bf16 (a 24 GB card takes the FP8 transformer).
    """
    target = torch.device(device) if device is not None else transformer.device
    if target.type == "cuda" and torch.cuda.get_device_capability(target) < (8, 9):
        raise InputError("--fast needs FP8 matmuls (an Ada, Hopper or newer GPU)", "run without --fast")
    swapped = 0
    for block in transformer_blocks(transformer):
        if device is not None:
            block.to(device)
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear) and "norm" not in f"{name}.{child_name}":
                    setattr(module, child_name, Float8Linear(child))
                    swapped += 1
    return swapped
