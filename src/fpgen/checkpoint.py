"""A transformer's weights on disk, read from the safetensors headers: a diffusers folder or a single file.

``TransformerWeights.of(path)`` maps each of the diffusers class's parameter names to where its
bytes are (file, offsets, dtype) without reading any of them, so the loaders can place every
tensor where it belongs (GPU, pinned host memory, or left in the file to be streamed) with one
copy at most. Single files are the ones in circulation for FramePackI2V_HY and F1 (bf16 and
fp8_e4m3fn, FramePack's own parameter names, sometimes behind a ComfyUI prefix); their config is
FramePack's, checked against the tensors' shapes. Nothing here imports torch: the runtime plan
reads sizes before any model loads.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from fpgen.errors import InputError

# lllyasviel/FramePackI2V_HY's config.json; FramePack-F1 has the same architecture (its file cannot be
# told from the original model's by its tensors: the file name decides, see fpgen.registry).
FRAMEPACK_CONFIG = {
    "attention_head_dim": 128, "guidance_embeds": True, "has_clean_x_embedder": True, "has_image_proj": True, "image_proj_dim": 1152,
    "in_channels": 16, "mlp_ratio": 4.0, "num_attention_heads": 24, "num_layers": 20, "num_refiner_layers": 2, "num_single_layers": 40,
    "out_channels": 16, "patch_size": 2, "patch_size_t": 1, "pooled_projection_dim": 768, "qk_norm": "rms_norm",
    "rope_axes_dim": [16, 56, 56], "rope_theta": 256.0, "text_embed_dim": 4096,
}  # fmt: skip
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")  # how ComfyUI and trainers save a bare transformer
MARKER = "single_transformer_blocks.0.attn.to_k.weight"  # a FramePack (HunyuanVideo-packed) transformer in diffusers names
DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are in a safetensors or GGUF file."""

    file: Path
    dtype: str  # a torch dtype name, or ``gguf:TYPE`` (Q8_0, Q4_K...) for a GGUF tensor
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def quantized(self) -> bool:
        """A GGUF block-quantized tensor (kept so on load), not a plain float one."""
        return self.dtype.startswith("gguf:") and self.dtype not in ("gguf:F32", "gguf:F16", "gguf:BF16")


def read_header(file: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """The tensors of a safetensors file (by their names in it) and its ``__metadata__``; reads only the header."""
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError("header too large")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise InputError(f"{file} is not a readable safetensors file ({exc})", "pass a .safetensors transformer checkpoint or a diffusers folder") from None
    base = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    refs = {}
    for key, entry in header.items():
        if entry["dtype"] not in DTYPES:
            raise InputError(f"{file}: tensor {key} has dtype {entry['dtype']}, which fpgen cannot load", "use a bf16, fp16, fp32 or fp8 checkpoint")
        start, end = entry["data_offsets"]
        refs[key] = TensorRef(Path(file), DTYPES[entry["dtype"]], tuple(entry["shape"]), base + start, base + end)
    return refs, metadata


def read_gguf_header(file: Path) -> dict[str, TensorRef]:
    """The tensors of a GGUF file (shapes in PyTorch's order); the data stays in the file."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise InputError(f"{file} is a GGUF file, which needs the gguf package", "pip install 'fpgen[gguf]'") from None
    try:
        reader = GGUFReader(str(file))
    except (OSError, ValueError) as exc:
        raise InputError(f"{file} is not a readable GGUF file ({exc})", "pass a GGUF transformer checkpoint") from None
    refs = {}
    for tensor in reader.tensors:  # GGUF lists the innermost dimension first
        shape = tuple(int(size) for size in reversed(tensor.shape.tolist()))
        refs[tensor.name] = TensorRef(Path(file), "gguf:" + tensor.tensor_type.name, shape, int(tensor.data_offset), int(tensor.data_offset) + int(tensor.n_bytes))
    return refs


def strip_prefix(refs: dict) -> dict:
    """The tensors under FramePack's own names: a prefix every key shares (ComfyUI's ``model.diffusion_model.``...) removed."""
    for prefix in PREFIXES:
        if refs and all(key.startswith(prefix) for key in refs):
            return {key[len(prefix) :]: ref for key, ref in refs.items()}
    return refs


def _count(refs: dict[str, TensorRef], pattern: str) -> int:
    found = {int(m.group(1)) for key in refs if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0


def config_from_shapes(refs: dict[str, TensorRef], file: Path) -> dict:
    """FramePack's config with the sizes the tensors show (layer counts, widths).

    The rotary split of a head is not visible in the shapes: FramePack's own is used for its
    128-wide heads; any other head width needs the diffusers ``config.json`` beside the file.
    """
    if MARKER not in refs:
        some = ", ".join(sorted(refs)[:3])
        raise InputError(f"{file} is not a FramePack transformer checkpoint (no {MARKER}; it has {some}, ...)", "pass a FramePackI2V_HY or FramePack-F1 transformer file")
    patch = refs["x_embedder.proj.weight"].shape  # (inner, in_channels, patch_t, patch, patch)
    inner, head = patch[0], refs["single_transformer_blocks.0.attn.norm_q.weight"].shape[0]
    config = {
        **FRAMEPACK_CONFIG,
        "num_layers": _count(refs, r"transformer_blocks\.(\d+)\."),
        "num_single_layers": _count(refs, r"single_transformer_blocks\.(\d+)\."),
        "num_refiner_layers": _count(refs, r"context_embedder\.token_refiner\.refiner_blocks\.(\d+)\."),
        "attention_head_dim": head,
        "num_attention_heads": inner // head,
        "in_channels": patch[1],
        "patch_size_t": patch[2],
        "patch_size": patch[3],
        "out_channels": refs["proj_out.weight"].shape[0] // (patch[2] * patch[3] * patch[4]),
        "mlp_ratio": refs["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / inner,
        "text_embed_dim": refs["context_embedder.proj_in.weight"].shape[1],
        "pooled_projection_dim": refs["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in refs,
        "has_image_proj": "image_projection.up.weight" in refs,
        "has_clean_x_embedder": "clean_x_embedder.proj.weight" in refs,
    }
    if config["has_image_proj"]:
        config["image_proj_dim"] = refs["image_projection.up.weight"].shape[1]
    beside = file.with_name("config.json")
    if head != FRAMEPACK_CONFIG["attention_head_dim"]:
        if not beside.is_file():
            raise InputError(f"{file} has {head}-wide attention heads (FramePack's are 128): its rotary embedding split is unknown", f"put the model's diffusers config.json in {file.parent}")
        config["rope_axes_dim"] = json.loads(beside.read_text())["rope_axes_dim"]
    return config


@dataclass(frozen=True)
class TransformerWeights:
    """A transformer's config and, for each diffusers parameter name, where its tensor is."""

    path: Path
    config: dict
    refs: dict[str, TensorRef]

    @classmethod
    def of(cls, path: Path) -> TransformerWeights:
        path = Path(path)
        if path.is_file():
            refs = strip_prefix(read_gguf_header(path) if is_gguf(path) else read_header(path)[0])
            return cls(path, config_from_shapes(refs, path), refs)
        refs = {}
        for file in sorted(path.glob("*.safetensors")):
            refs.update(read_header(file)[0])
        return cls(path, json.loads((path / "config.json").read_text()), refs)

    def nbytes(self, element_size: int) -> int:
        """The weights' size once loaded at ``element_size`` bytes per value (GGUF's quantized tensors stay as stored)."""
        return sum(ref.end - ref.start if ref.quantized else _numel(ref.shape) * element_size for ref in self.refs.values())

    def stored_dtypes(self) -> set[str]:
        return {ref.dtype for ref in self.refs.values()}


def is_gguf(path: Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


class MappedFiles:
    """The checkpoint's files memory-mapped (private, copy-on-write): tensors are views of the page cache, not copies."""

    def __init__(self):
        self.maps: dict[Path, mmap.mmap] = {}

    def _map(self, file: Path) -> mmap.mmap:
        if file not in self.maps:
            with open(file, "rb") as f:
                self.maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self.maps[file]

    def tensor(self, ref: TensorRef):
        import torch

        dtype = getattr(torch, ref.dtype)
        count = (ref.end - ref.start) // dtype.itemsize
        return torch.frombuffer(self._map(ref.file), dtype=dtype, count=count, offset=ref.start).view(ref.shape)

    def prefetch(self, ref: TensorRef) -> None:
        """Ask the kernel to start reading a tensor's pages (from disk when the page cache has dropped them)."""
        start = ref.start - ref.start % mmap.PAGESIZE
        self._map(ref.file).madvise(mmap.MADV_WILLNEED, start, ref.end - start)
