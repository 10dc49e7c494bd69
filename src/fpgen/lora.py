"""LoRA files: reading the layouts people have, writing ours and musubi-tuner's, merging into a transformer.

A LoRA is held as ``Lora``: per module name of diffusers' FramePack transformer (e.g.
``transformer_blocks.0.attn.to_q``), the module's update: a low-rank pair (``LoraModule``: the layer
computes ``W x + (alpha / rank) * up @ down @ x``) or a LyCORIS LoHa or LoKr (``LohaModule``,
``LokrModule``), whose full update is made only when it is merged.

Layouts:
- ``fpgen`` / ``diffusers``: peft keys ``transformer.<module>.lora_A.weight`` (down) and ``.lora_B.weight``
  (up), with diffusers' ``lora_adapter_metadata`` (``transformer.r``, ``transformer.lora_alpha``, ...) in
  the safetensors header; what ``fpgen finetune`` writes and ``HunyuanVideoFramepackPipeline.load_lora_weights``
  reads. peft's own files take alpha from the ``adapter_config.json`` beside them; files with neither
  take alpha = rank, as diffusers does, unless they carry ``.alpha`` tensors. diffusers' HunyuanVideo
  LoRAs use the same module names.
- ``musubi``: musubi-tuner's FramePack LoRAs, ``lora_unet_<module with dots as underscores>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha``.
- ``hunyuanvideo``: LoRAs for HunyuanVideo under the original model's names (Tencent, ComfyUI,
  diffusion-pipe: ``diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight``; musubi-tuner and kohya:
  ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``). FramePack is HunyuanVideo fine-tuned, so
  each module maps onto FramePack's, the fused ones split by rows as diffusers' converter splits them;
  the few with no FramePack linear (the patch embedding) are skipped and reported.
- LyCORIS LoHa (``hada_w1_a`` ...) and LoKr (``lokr_w1`` ...) under any of these names.

Helios LoRAs are read in the diffusers/peft layout on the Helios transformer's own names
(``transformer.blocks.0.attn1.to_q.lora_A.weight``); the block list a LoRA names (``LORA_KINDS``) tells a
FramePack LoRA from a Helios one, so either on the other's model is refused before anything loads.

Keys that fit no layout, and modules the model does not have, are errors: a LoRA that silently does
nothing is the failure users report most.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from fpgen.errors import InputError
from fpgen.tensorfile import DamagedFileError, load_tensors, save_tensors
from fpgen.terminal import printable

# The linear layers inside the two block kinds of the FramePack transformer, as diffusers (and the official
# code, and musubi-tuner) name them. musubi's names replace every dot with an underscore, so this table is
# what turns them back.
DOUBLE_BLOCK_LINEARS = (
    "norm1.linear", "norm1_context.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj",
    "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
    "ff_context.net.0.proj", "ff_context.net.2",
)  # fmt: skip
SINGLE_BLOCK_LINEARS = ("norm.linear", "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")
BLOCK_KINDS = {"transformer_blocks": DOUBLE_BLOCK_LINEARS, "single_transformer_blocks": SINGLE_BLOCK_LINEARS}

# HunyuanVideo's original block linears (Tencent's code, ComfyUI, musubi-tuner's HunyuanVideo), for reading
# kohya-style names, where the dots are gone.
ORIGINAL_DOUBLE_LINEARS = (
    "img_mod.linear", "img_attn_qkv", "img_attn_proj", "img_mlp.fc1", "img_mlp.fc2",
    "txt_mod.linear", "txt_attn_qkv", "txt_attn_proj", "txt_mlp.fc1", "txt_mlp.fc2",
)  # fmt: skip
ORIGINAL_SINGLE_LINEARS = ("linear1", "linear2", "modulation.linear")
KOHYA_KINDS = {**BLOCK_KINDS, "double_blocks": ORIGINAL_DOUBLE_LINEARS, "single_blocks": ORIGINAL_SINGLE_LINEARS}

# HunyuanVideo's original module -> FramePack's (diffusers') modules, and how its output rows are shared
# among them: "qkv" in equal thirds, "qkv_mlp" as hidden, hidden, hidden and the rest (hidden = the layer's
# input size), "swap" the two halves (the final norm's shift and scale come in the other order). This is
# the table of diffusers' ``_convert_hunyuan_video_lora_to_diffusers``.
_REFINER = "context_embedder.token_refiner.refiner_blocks.{}."
HUNYUAN_VIDEO_MODULES = (
    (r"double_blocks\.(\d+)\.img_attn_qkv", ("transformer_blocks.{}.attn.to_q", "transformer_blocks.{}.attn.to_k", "transformer_blocks.{}.attn.to_v"), "qkv"),
    (r"double_blocks\.(\d+)\.txt_attn_qkv", ("transformer_blocks.{}.attn.add_q_proj", "transformer_blocks.{}.attn.add_k_proj", "transformer_blocks.{}.attn.add_v_proj"), "qkv"),
    (r"double_blocks\.(\d+)\.img_attn_proj", ("transformer_blocks.{}.attn.to_out.0",), None),
    (r"double_blocks\.(\d+)\.txt_attn_proj", ("transformer_blocks.{}.attn.to_add_out",), None),
    (r"double_blocks\.(\d+)\.img_mlp\.fc1", ("transformer_blocks.{}.ff.net.0.proj",), None),
    (r"double_blocks\.(\d+)\.img_mlp\.fc2", ("transformer_blocks.{}.ff.net.2",), None),
    (r"double_blocks\.(\d+)\.txt_mlp\.fc1", ("transformer_blocks.{}.ff_context.net.0.proj",), None),
    (r"double_blocks\.(\d+)\.txt_mlp\.fc2", ("transformer_blocks.{}.ff_context.net.2",), None),
    (r"double_blocks\.(\d+)\.img_mod\.linear", ("transformer_blocks.{}.norm1.linear",), None),
    (r"double_blocks\.(\d+)\.txt_mod\.linear", ("transformer_blocks.{}.norm1_context.linear",), None),
    (r"single_blocks\.(\d+)\.linear1", tuple(f"single_transformer_blocks.{{}}.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")), "qkv_mlp"),
    (r"single_blocks\.(\d+)\.linear2", ("single_transformer_blocks.{}.proj_out",), None),
    (r"single_blocks\.(\d+)\.modulation\.linear", ("single_transformer_blocks.{}.norm.linear",), None),
    (r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.self_attn_qkv", (_REFINER + "attn.to_q", _REFINER + "attn.to_k", _REFINER + "attn.to_v"), "qkv"),
    (r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.self_attn_proj", (_REFINER + "attn.to_out.0",), None),
    (r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.mlp\.fc1", (_REFINER + "ff.net.0.proj",), None),
    (r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.mlp\.fc2", (_REFINER + "ff.net.2",), None),
    (r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.adaLN_modulation\.1", (_REFINER + "norm_out.linear",), None),
    (r"txt_in\.input_embedder", ("context_embedder.proj_in",), None),
    (r"txt_in\.t_embedder\.mlp\.0", ("context_embedder.time_text_embed.timestep_embedder.linear_1",), None),
    (r"txt_in\.t_embedder\.mlp\.2", ("context_embedder.time_text_embed.timestep_embedder.linear_2",), None),
    (r"txt_in\.c_embedder\.linear_1", ("context_embedder.time_text_embed.text_embedder.linear_1",), None),
    (r"txt_in\.c_embedder\.linear_2", ("context_embedder.time_text_embed.text_embedder.linear_2",), None),
    (r"time_in\.mlp\.0", ("time_text_embed.timestep_embedder.linear_1",), None),
    (r"time_in\.mlp\.2", ("time_text_embed.timestep_embedder.linear_2",), None),
    (r"guidance_in\.mlp\.0", ("time_text_embed.guidance_embedder.linear_1",), None),
    (r"guidance_in\.mlp\.2", ("time_text_embed.guidance_embedder.linear_2",), None),
    (r"vector_in\.in_layer", ("time_text_embed.text_embedder.linear_1",), None),
    (r"vector_in\.out_layer", ("time_text_embed.text_embedder.linear_2",), None),
    (r"final_layer\.linear", ("proj_out",), None),
    (r"final_layer\.adaLN_modulation\.1", ("norm_out.linear",), "swap"),
)  # fmt: skip
# HunyuanVideo modules a LoRA may adapt that have no linear layer in FramePack (the patch embedding is a
# convolution there): skipped and reported, not merged.
HUNYUAN_VIDEO_WITHOUT_FRAMEPACK_LINEAR = (r"img_in\.proj",)

# Default training targets: every attention and MLP linear of both block kinds; the adaptive-norm
# modulation layers (names with "norm") stay frozen, as musubi-tuner does.
DEFAULT_TARGETS = (
    r"(transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|to_out\.0|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))"
    r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp|proj_out))"
)

PREFIX = "transformer."  # diffusers' pipeline-level prefix of the transformer's LoRA keys
FOREIGN_PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.")
MUSUBI_PREFIX = "lora_unet_"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors header entry
FPGEN_METADATA_KEY = "fpgen"  # provenance (base model, order, training settings), carried through conversions
# The SAI model spec entry kohya's and musubi-tuner's LoRAs carry (``flux-1-dev/lora``, ``framepack/lora``):
# Flux's kohya names for its attention layers are HunyuanVideo's, so only this tells such a LoRA apart.
ARCHITECTURE_KEY = "modelspec.architecture"
ARCHITECTURES = ("framepack", "hunyuan")
LORA_FILE_NAMES = ("lora.safetensors", "pytorch_lora_weights.safetensors", "adapter_model.safetensors")
# Tensor name endings of every kind of module, and the part each one is.
SUFFIXES = {
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_A.default.weight": "down", ".lora_B.default.weight": "up",
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a", ".hada_w2_b": "hada_w2_b",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b", ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b",
}  # fmt: skip
# The block lists of the transformers fpgen runs: a LoRA's module names say which kind of model it was made for
LORA_KINDS = {"transformer_blocks.": "FramePack", "single_transformer_blocks.": "FramePack", "blocks.": "Helios"}


@dataclass(frozen=True)
class LoraModule:
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, int]:
        return self.up.shape[0], self.down.shape[1]

    def delta(self, device) -> torch.Tensor:
        return (self.up.to(device, torch.float32) @ self.down.to(device, torch.float32)) * self.scale

    def rows(self, index: torch.Tensor) -> LoraModule:
        """The update of the output rows ``index`` only (a fused layer's share of a split one)."""
        return replace(self, up=self.up[index])


@dataclass(frozen=True)
class LohaModule:
    """LyCORIS LoHa: ``dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank`` (a Hadamard product of two low-rank products)."""

    w1_a: torch.Tensor  # (out, rank)
    w1_b: torch.Tensor  # (rank, in)
    w2_a: torch.Tensor  # (out, rank)
    w2_b: torch.Tensor  # (rank, in)
    alpha: float

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.w1_a.shape[0], self.w1_b.shape[1]

    def delta(self, device) -> torch.Tensor:
        def product(a, b):
            return a.to(device, torch.float32) @ b.to(device, torch.float32)

        return product(self.w1_a, self.w1_b) * product(self.w2_a, self.w2_b) * (self.alpha / self.rank)

    def rows(self, index: torch.Tensor) -> LohaModule:
        return replace(self, w1_a=self.w1_a[index], w2_a=self.w2_a[index])


@dataclass(frozen=True)
class LokrModule:
    """LyCORIS LoKr: ``dW = kron(w1, w2) * alpha / rank``, each factor stored whole or as a product ``a @ b``.

    ``rank`` is the inner size of a factor stored as a product; with both whole, LyCORIS scales by 1
    (alpha = rank = 1 here). ``index`` keeps only those output rows (a fused layer's share): a Kronecker
    product's rows do not split into smaller Kronecker products in general, so just those rows are made.
    """

    w1: tuple[torch.Tensor, ...]  # (w1,) or (w1_a, w1_b)
    w2: tuple[torch.Tensor, ...]
    alpha: float
    rank: int
    index: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        (out1, in1), (out2, in2) = (_factor_shape(f) for f in (self.w1, self.w2))
        return (out1 * out2 if self.index is None else len(self.index)), in1 * in2

    def delta(self, device) -> torch.Tensor:
        def factor(parts):
            parts = [part.to(device, torch.float32) for part in parts]
            return parts[0] if len(parts) == 1 else parts[0] @ parts[1]

        w1, w2 = factor(self.w1), factor(self.w2)
        if self.index is None:
            return torch.kron(w1, w2) * (self.alpha / self.rank)
        rows = self.index.to(device)  # row i of kron(w1, w2) is w1[i // h] (x) w2[i % h], h = w2's row count
        return (w1[rows // w2.shape[0], :, None] * w2[rows % w2.shape[0], None, :]).flatten(1) * (self.alpha / self.rank)

    def rows(self, index: torch.Tensor) -> LokrModule:
        return replace(self, index=index if self.index is None else self.index[index])


def _factor_shape(parts: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    return parts[0].shape[0], parts[-1].shape[1]


Module = LoraModule | LohaModule | LokrModule
KIND_NAMES = {LoraModule: "LoRA", LohaModule: "LoHa", LokrModule: "LoKr"}


@dataclass(frozen=True)
class Lora:
    modules: dict[str, Module]
    info: str | None = None  # the fpgen provenance JSON, kept verbatim
    skipped: tuple[str, ...] = ()  # the file's keys for modules FramePack has no linear for
    keys: int = 0  # how many keys the file has
    layout: str = "diffusers"  # the layout the file was in

    def summary(self, source: str) -> str:
        """One line: what of the file was applied, and what was skipped by name."""
        line = f"{source}: {self.layout} layout, {self.keys - len(self.skipped)} keys applied to {len(self.modules)} FramePack modules"
        if not self.skipped:
            return line
        names = sorted(printable(key) for key in self.skipped)
        return f"{line}, {len(names)} skipped because FramePack has no such module: {', '.join(names[:4])}" + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    def to(self, dtype: torch.dtype) -> Lora:
        """The same LoRA with its weights stored in ``dtype`` (bfloat16 halves a float32 file; alphas and row indices are kept)."""

        def cast(value):
            if isinstance(value, tuple):
                return tuple(cast(part) for part in value)
            return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

        return replace(self, modules={name: replace(m, **{f.name: cast(getattr(m, f.name)) for f in fields(m)}) for name, m in self.modules.items()})

    def adapter_metadata(self) -> dict:
        """diffusers' LoraConfig kwargs: the most common rank and alpha, and patterns for the others."""
        ranks = [m.rank for m in self.modules.values()]
        alphas = [m.alpha for m in self.modules.values()]
        rank, alpha = max(set(ranks), key=ranks.count), max(set(alphas), key=alphas.count)
        return {
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": sorted(self.modules),
            "rank_pattern": {n: m.rank for n, m in sorted(self.modules.items()) if m.rank != rank},
            "alpha_pattern": {n: m.alpha for n, m in sorted(self.modules.items()) if m.alpha != alpha},
            "lora_dropout": 0.0,
            "bias": "none",
            "use_dora": False,
        }


# ---------------------------------------------------------------------------------------------- names


def musubi_name(module: str) -> str:
    return MUSUBI_PREFIX + module.replace(".", "_")


def module_from_musubi(name: str) -> str | None:
    """``lora_unet_transformer_blocks_0_attn_to_q`` -> ``transformer_blocks.0.attn.to_q`` (HunyuanVideo's
    ``lora_unet_double_blocks_0_img_attn_qkv`` -> ``double_blocks.0.img_attn_qkv``); None if not a block linear."""
    for kind, linears in KOHYA_KINDS.items():
        match = re.fullmatch(re.escape(MUSUBI_PREFIX + kind) + r"_(\d+)_(.+)", name)
        if match:
            by_underscores = {linear.replace(".", "_"): linear for linear in linears}
            linear = by_underscores.get(match.group(2))
            return f"{kind}.{match.group(1)}.{linear}" if linear else None
    return None


def _strip_prefix(key: str) -> str:
    for prefix in FOREIGN_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


# ---------------------------------------------------------------------------------------------- reading


def find_lora_file(path: Path) -> Path:
    """A LoRA file, or a folder holding one under a usual name."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in LORA_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise InputError(f"{path} holds no LoRA file", f"expected one of {', '.join(LORA_FILE_NAMES)}, or pass the .safetensors file itself")
    if not path.is_file():
        raise InputError(f"LoRA not found: {path}", "check the path")
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        return load_tensors(path)
    except DamagedFileError as error:
        raise InputError(error.message, "pass a LoRA .safetensors file") from None


def _unknown_keys_error(path: Path, keys: Iterable[str], what: str) -> InputError:
    keys = sorted(printable(key) for key in keys)  # names read from the file: no terminal escapes reach the screen
    shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return InputError(
        f"{path}: {what}: {shown}",
        "fpgen reads FramePack and HunyuanVideo LoRAs: diffusers/peft, musubi-tuner/kohya, diffusion-pipe/ComfyUI keys, LyCORIS LoHa and LoKr",
    )


def _group(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Split keys ``<name><suffix>`` into {name: {part: tensor}}; keys with no known suffix are returned apart."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        for suffix, part in SUFFIXES.items():
            if key.endswith(suffix):
                grouped.setdefault(key[: -len(suffix)], {})[part] = tensor
                break
        else:
            unknown.append(key)
    return grouped, unknown


def _module(path: Path, raw: str, parts: dict[str, torch.Tensor], default_alpha) -> Module | None:
    """The module a file's parts make, or None when a part is missing; ``default_alpha(rank)`` when it has no ``.alpha``."""

    def alpha(rank: int) -> float:
        return float(parts["alpha"].item()) if "alpha" in parts else default_alpha(rank)

    def matrices(*names: str) -> list[torch.Tensor] | None:
        if not all(name in parts for name in names):
            return None
        if any(parts[name].ndim != 2 for name in names):
            raise InputError(f"{path}: {raw} is not a linear layer's update ({', '.join(f'{n} {tuple(parts[n].shape)}' for n in names)})", "fpgen merges LoRAs of linear layers only")
        return [parts[name] for name in names]

    if any(name.startswith("hada_") for name in parts):
        found = matrices("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        module = LohaModule(*found, alpha(found[1].shape[0])) if found else None
        fits = module is not None and found[0].shape[1] == found[1].shape[0] and found[2].shape == found[0].shape and found[3].shape == found[1].shape
    elif any(name.startswith("lokr_") for name in parts):
        w1 = matrices("lokr_w1") or matrices("lokr_w1_a", "lokr_w1_b")
        w2 = matrices("lokr_w2") or matrices("lokr_w2_a", "lokr_w2_b")
        module = None
        if w1 and w2:
            inner = next((factor[0].shape[1] for factor in (w1, w2) if len(factor) == 2), None)
            module = LokrModule(tuple(w1), tuple(w2), alpha(inner), inner) if inner else LokrModule(tuple(w1), tuple(w2), 1.0, 1)
        fits = module is not None and all(len(factor) == 1 or factor[0].shape[1] == factor[1].shape[0] for factor in (w1, w2))
    else:
        found = matrices("down", "up")
        module = LoraModule(found[0], found[1], alpha(found[0].shape[0])) if found else None
        fits = module is not None and found[1].shape[1] == found[0].shape[0]
    if module is not None and not fits:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in sorted(parts.items()) if name != "alpha")
        raise InputError(f"{path}: {raw} has {shapes}, which do not make a {KIND_NAMES[type(module)]} update", "the file is damaged or not a linear LoRA")
    return module


def _peft_alpha(metadata: dict[str, str], beside: Path):
    """alpha per module from diffusers' header metadata (keys prefixed ``transformer.``) or from peft's
    ``adapter_config.json`` next to the file (``lora_alpha``, or ``alpha`` for LoHa and LoKr); alpha = rank
    when there is neither, as diffusers assumes."""
    raw = metadata.get(METADATA_KEY)
    if raw is None and (beside / "adapter_config.json").is_file():
        raw = (beside / "adapter_config.json").read_text()
    config = {k.removeprefix(PREFIX): v for k, v in json.loads(raw).items()} if raw else {}

    def alpha(name: str, rank: int) -> float:
        pattern = config.get("alpha_pattern") or {}
        for key, value in pattern.items():
            if name == key or name.endswith("." + key) or re.fullmatch(key, name):
                return float(value)
        for key in ("lora_alpha", "alpha"):
            if config.get(key) is not None:
                return float(config[key])
        return float(rank)

    return alpha


def framepack_parts(name: str, module: Module) -> list[tuple[str, Module]] | None:
    """HunyuanVideo's module ``name`` as FramePack's modules and their share of its update; None when
    ``name`` is not one of HunyuanVideo's original names."""
    for pattern, targets, share in HUNYUAN_VIDEO_MODULES:
        match = re.fullmatch(pattern, name)
        if match:
            names = [target.format(*match.groups()) for target in targets]
            return list(zip(names, _shares(name, module, share)))
    return None


def _shares(name: str, module: Module, share: str | None) -> list[Module]:
    out, hidden = module.shape
    if share is None:
        return [module]
    sizes = {"qkv": [out // 3] * 3 if out % 3 == 0 else None, "qkv_mlp": [hidden] * 3 + [out - 3 * hidden] if out > 3 * hidden else None,
             "swap": [out // 2] * 2 if out % 2 == 0 else None}[share]  # fmt: skip
    if sizes is None:
        raise InputError(f"{name}'s update has {out} output rows, which do not split into FramePack's layers", "the LoRA is for another model")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    ranges = [torch.arange(start, start + size) for start, size in zip(starts, sizes)]
    if share == "swap":  # HunyuanVideo's final modulation gives shift then scale, diffusers' scale then shift
        return [module.rows(torch.cat(ranges[::-1]))]
    return [module.rows(rows) for rows in ranges]


def read_lora(path: str | Path) -> tuple[Lora, str]:
    """Read a LoRA file (or a folder holding one); returns it on FramePack's module names and the layout it
    was in (``diffusers``, ``musubi``, ``hunyuanvideo`` or ``hunyuanvideo-kohya``, with `` LoHa``/`` LoKr``)."""
    path = find_lora_file(Path(path))
    tensors, metadata = _read_safetensors(path)
    if not tensors:
        raise InputError(f"{path} holds no tensors", "pass a LoRA .safetensors file")
    architecture = metadata.get(ARCHITECTURE_KEY, "")
    if architecture and not any(name in architecture.lower() for name in ARCHITECTURES):
        raise InputError(f"{path} is a LoRA for {printable(architecture)} (its {ARCHITECTURE_KEY}), not for FramePack or HunyuanVideo", "pass a FramePack or HunyuanVideo LoRA")
    grouped, unknown = _group(tensors)
    if unknown:
        raise _unknown_keys_error(path, unknown, "keys that are not LoRA weights")
    kohya = all(raw.startswith(MUSUBI_PREFIX) for raw in grouped)
    names = {raw: module_from_musubi(raw) if kohya else _strip_prefix(raw) for raw in grouped}
    foreign = [raw for raw, name in names.items() if name is None]
    if foreign:
        raise _unknown_keys_error(path, foreign, "keys that are not musubi-tuner FramePack or HunyuanVideo LoRA modules")
    without = {raw for raw, name in names.items() if any(re.fullmatch(pattern, name) for pattern in HUNYUAN_VIDEO_WITHOUT_FRAMEPACK_LINEAR)}
    skipped = sorted(key for key in tensors if any(key.startswith(raw + ".") for raw in without))
    peft_alpha = _peft_alpha(metadata, path.parent)
    built, incomplete = {}, []
    for raw, parts in grouped.items():
        if raw in without:
            continue
        default = (lambda rank: float(rank)) if kohya else (lambda rank, name=names[raw]: peft_alpha(name, rank))
        built[raw] = _module(path, raw, parts, default)
        if built[raw] is None:
            incomplete.append(raw)
    if incomplete:
        raise _unknown_keys_error(path, incomplete, "these LoRA modules miss their down or up matrix")
    modules, original = {}, bool(skipped)
    for raw, module in built.items():
        parts = framepack_parts(names[raw], module)
        original = original or parts is not None
        for name, part in parts if parts is not None else [(names[raw], module)]:
            if name in modules:
                raise InputError(f"{path}: two updates for FramePack's {name} (one is {printable(raw)})", "the file mixes layouts; keep one")
            modules[name] = part
    if not modules:
        raise _unknown_keys_error(path, skipped, "nothing to apply: FramePack has none of these modules")
    layout = ("hunyuanvideo" + ("-kohya" if kohya else "")) if original else "musubi" if kohya else "diffusers"
    layout = " ".join([layout, *_lycoris_kinds(modules)])
    return Lora(modules, metadata.get(FPGEN_METADATA_KEY), tuple(skipped), len(tensors), layout), layout


# ---------------------------------------------------------------------------------------------- writing


def _lycoris_kinds(modules: Mapping[str, Module]) -> list[str]:
    return sorted({KIND_NAMES[type(m)] for m in modules.values()} - {"LoRA"})


def _only_low_rank(lora: Lora, layout: str) -> None:
    kinds = _lycoris_kinds(lora.modules)
    if kinds:
        raise InputError(f"the LoRA has {' and '.join(kinds)} modules, which the {layout} layout cannot hold", "apply it as it is: fpgen generate --lora FILE")


def write_lora(path: str | Path, lora: Lora) -> Path:
    """Our layout: diffusers' keys and metadata, so diffusers' ``load_lora_weights`` reads it as it is."""
    _only_low_rank(lora, "diffusers")
    tensors = {}
    for name, module in lora.modules.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = module.down
        tensors[f"{PREFIX}{name}.lora_B.weight"] = module.up
    adapter = {PREFIX + key: value for key, value in lora.adapter_metadata().items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(adapter, indent=2, sort_keys=True)}
    if lora.info is not None:
        metadata[FPGEN_METADATA_KEY] = lora.info
    save_tensors(Path(path), tensors, metadata)
    return Path(path)


def write_musubi(path: str | Path, lora: Lora) -> Path:
    """musubi-tuner's FramePack layout (``networks.lora_framepack``): underscored names, per-module alpha."""
    _only_low_rank(lora, "musubi")
    tensors = {}
    for name, module in lora.modules.items():
        if module_from_musubi(musubi_name(name)) != name:
            raise InputError(f"module {name} has no name in musubi-tuner's FramePack layout", "musubi-tuner LoRAs only adapt linears inside the transformer blocks")
        tensors[f"{musubi_name(name)}.lora_down.weight"] = module.down
        tensors[f"{musubi_name(name)}.lora_up.weight"] = module.up
        tensors[f"{musubi_name(name)}.alpha"] = torch.tensor(module.alpha, dtype=torch.float32)
    config = lora.adapter_metadata()
    metadata = {"ss_network_module": "networks.lora_framepack", "ss_network_dim": str(config["r"]), "ss_network_alpha": str(config["lora_alpha"])}
    if lora.info is not None:
        metadata[FPGEN_METADATA_KEY] = lora.info
    save_tensors(Path(path), tensors, metadata)
    return Path(path)


# ---------------------------------------------------------------------------------------------- applying


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA to apply and its strength, as given on the command line (``PATH[:SCALE]``)."""

    path: Path
    scale: float = 1.0

    @staticmethod
    def parse(text: str) -> LoraChoice:
        """``PATH[:SCALE]``; a PATH that is a folder stands for the LoRA file in it, as for ``fpgen lora info``."""
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return LoraChoice(_file_if_folder(Path(head)), float(tail))
            except ValueError:
                pass  # a colon that is part of the path
        return LoraChoice(_file_if_folder(Path(text)))


def _file_if_folder(path: Path) -> Path:
    """The LoRA file a folder holds; any other path as it is (a missing file is reported where it is read)."""
    return find_lora_file(path) if path.expanduser().is_dir() else path


def check_fits(lora: Lora, model: torch.nn.Module, source: str) -> None:
    """Every module must exist in ``model`` as a linear layer of the right shape, or nothing is applied."""
    layers = dict(model.named_modules())
    missing = [name for name in lora.modules if not isinstance(layers.get(name), torch.nn.Linear)]
    if missing:
        raise _unknown_keys_error(Path(source), missing, "the LoRA names modules this transformer does not have")
    for name, module in lora.modules.items():
        weight = layers[name].weight
        if module.shape != tuple(weight.shape):
            raise InputError(
                f"{source}: {name} is {module.shape[0]}x{module.shape[1]} in the LoRA but {tuple(weight.shape)[0]}x{tuple(weight.shape)[1]} in the model",
                "the LoRA was trained for a model of another size",
            )


@torch.no_grad()
def merge_lora(model: torch.nn.Module, lora: Lora, scale: float = 1.0) -> None:
    """Add ``scale`` times each module's update to its weight, in float32, stored back in the weight's dtype
    (a float8 weight is requantized: rounded to the nearest float8, saturating at its largest value)."""
    layers = dict(model.named_modules())
    for name, module in lora.modules.items():
        weight = layers[name].weight
        merged = weight.float() + module.delta(weight.device) * scale
        if weight.dtype.itemsize == 1 and weight.dtype.is_floating_point:
            largest = torch.finfo(weight.dtype).max
            merged = merged.clamp(-largest, largest)
        weight.copy_(merged.to(weight.dtype))


def check_kind(lora: Lora, source: str, kind: str) -> None:
    """Refuse a LoRA made for another kind of model (``LORA_KINDS``), by its module names, before any model loads."""
    other = sorted({made for name in lora.modules for prefix, made in LORA_KINDS.items() if name.startswith(prefix)} - {kind})
    if other:
        raise InputError(f"{source} is a {other[0]} LoRA; the model is a {kind} model", f"use a LoRA trained for {kind}, or drop --lora {source}")


def load_loras(choices: Iterable[LoraChoice | tuple[Lora, LoraChoice]], kind: str | None = None) -> list[tuple[Lora, LoraChoice]]:
    """Read the files (those not read already) before any model is loaded, so a bad LoRA (or one for another ``kind``) fails fast."""
    loras = [item if isinstance(item, tuple) else (read_lora(item.path)[0], item) for item in choices]
    if kind is not None:
        for lora, choice in loras:
            check_kind(lora, str(choice.path), kind)
    return loras


def lora_notes(loras: Iterable[tuple[Lora, LoraChoice]]) -> tuple[str, ...]:
    """What the user should see about LoRAs read from another model's layout or with modules left out."""
    return tuple(lora.summary(str(choice.path)) for lora, choice in loras if lora.skipped or lora.layout.startswith("hunyuanvideo"))


def apply_loras(model: torch.nn.Module, loras: list[tuple[Lora, LoraChoice]]) -> None:
    """Check every LoRA against the model first, then merge them all."""
    for lora, choice in loras:
        check_fits(lora, model, str(choice.path))
    for lora, choice in loras:
        merge_lora(model, lora, choice.scale)
