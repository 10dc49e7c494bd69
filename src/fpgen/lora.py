"""LoRA files: reading the layouts people have, writing ours and musubi-tuner's, merging into a transformer.

A LoRA is held as ``Lora``: per module name of diffusers' FramePack transformer (e.g.
``transformer_blocks.0.attn.to_q``), a down matrix (rank, in), an up matrix (out, rank) and an alpha;
the layer computes ``W x + (alpha / rank) * up @ down @ x``.

Layouts:
- ``fpgen`` / ``diffusers``: peft keys ``transformer.<module>.lora_A.weight`` (down) and ``.lora_B.weight``
  (up), with diffusers' ``lora_adapter_metadata`` (``transformer.r``, ``transformer.lora_alpha``, ...) in
  the safetensors header; what ``fpgen finetune`` writes and ``HunyuanVideoFramepackPipeline.load_lora_weights``
  reads. peft's own files take alpha from the ``adapter_config.json`` beside them; files with neither
  take alpha = rank, as diffusers does, unless they carry ``.alpha`` tensors.
- ``musubi``: musubi-tuner's FramePack LoRAs, ``lora_unet_<module with dots as underscores>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha``.

Keys that fit no layout, and modules the model does not have, are errors: a LoRA that silently does
nothing is the failure users report most.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
LORA_FILE_NAMES = ("lora.safetensors", "pytorch_lora_weights.safetensors", "adapter_model.safetensors")
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


@dataclass(frozen=True)
class Lora:
    modules: dict[str, LoraModule]
    info: str | None = None  # the fpgen provenance JSON, kept verbatim

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
    """``lora_unet_transformer_blocks_0_attn_to_q`` -> ``transformer_blocks.0.attn.to_q``; None if not a block linear."""
    for kind, linears in BLOCK_KINDS.items():
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
        "fpgen reads FramePack LoRAs in the fpgen/diffusers (peft) layout and musubi-tuner's FramePack layout",
    )


def _group(tensors: Mapping[str, torch.Tensor], suffixes: dict[str, str]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Split keys ``<name><suffix>`` into {name: {role: tensor}}; keys with no known suffix are returned apart."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        for suffix, role in suffixes.items():
            if key.endswith(suffix):
                grouped.setdefault(key[: -len(suffix)], {})[role] = tensor
                break
        else:
            unknown.append(key)
    return grouped, unknown


def _modules(path: Path, grouped: dict[str, dict[str, torch.Tensor]], default_alpha, name_of) -> dict[str, LoraModule]:
    modules, incomplete = {}, []
    for raw, parts in grouped.items():
        if "down" not in parts or "up" not in parts:
            incomplete.append(raw)
            continue
        down, up = parts["down"], parts["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise InputError(f"{path}: {raw} has down {tuple(down.shape)} and up {tuple(up.shape)}, which do not make a LoRA pair", "the file is damaged or not a linear LoRA")
        name = name_of(raw)
        alpha = float(parts["alpha"].item()) if "alpha" in parts else default_alpha(name, down.shape[0])
        modules[name] = LoraModule(down, up, alpha)
    if incomplete:
        raise _unknown_keys_error(path, incomplete, "these LoRA modules miss their down or up matrix")
    return modules


def _peft_alpha(metadata: dict[str, str], beside: Path):
    """alpha per module from diffusers' header metadata (keys prefixed ``transformer.``) or from peft's
    ``adapter_config.json`` next to the file; alpha = rank when there is neither, as diffusers assumes."""
    raw = metadata.get(METADATA_KEY)
    if raw is None and (beside / "adapter_config.json").is_file():
        raw = (beside / "adapter_config.json").read_text()
    config = {k.removeprefix(PREFIX): v for k, v in json.loads(raw).items()} if raw else {}

    def alpha(name: str, rank: int) -> float:
        pattern = config.get("alpha_pattern") or {}
        for key, value in pattern.items():
            if name == key or name.endswith("." + key) or re.fullmatch(key, name):
                return float(value)
        return float(config["lora_alpha"]) if "lora_alpha" in config else float(rank)

    return alpha


def detect_layout(keys: Iterable[str]) -> str:
    keys = list(keys)
    if keys and all(k.startswith(MUSUBI_PREFIX) for k in keys):
        return "musubi"
    return "diffusers"


def read_lora(path: str | Path) -> tuple[Lora, str]:
    """Read a LoRA file (or a folder holding one); returns it and the layout it was in (``diffusers`` or ``musubi``)."""
    path = find_lora_file(Path(path))
    tensors, metadata = _read_safetensors(path)
    if not tensors:
        raise InputError(f"{path} holds no tensors", "pass a LoRA .safetensors file")
    layout = detect_layout(tensors)
    if layout == "musubi":
        grouped, unknown = _group(tensors, {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"})
        foreign = [raw for raw in grouped if module_from_musubi(raw) is None]
        if unknown or foreign:
            raise _unknown_keys_error(path, unknown + foreign, "keys that are not musubi-tuner FramePack LoRA modules")
        modules = _modules(path, grouped, lambda name, rank: float(rank), module_from_musubi)
    else:
        suffixes = {
            ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_A.default.weight": "down", ".lora_B.default.weight": "up",
            ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",
        }  # fmt: skip
        grouped, unknown = _group(tensors, suffixes)
        if unknown:
            raise _unknown_keys_error(path, unknown, "keys that are not LoRA weights")
        modules = _modules(path, grouped, _peft_alpha(metadata, path.parent), _strip_prefix)
    return Lora(modules, metadata.get(FPGEN_METADATA_KEY)), layout


# ---------------------------------------------------------------------------------------------- writing


def write_lora(path: str | Path, lora: Lora) -> Path:
    """Our layout: diffusers' keys and metadata, so diffusers' ``load_lora_weights`` reads it as it is."""
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
        if (module.up.shape[0], module.down.shape[1]) != tuple(weight.shape):
            raise InputError(
                f"{source}: {name} is {module.up.shape[0]}x{module.down.shape[1]} in the LoRA but {tuple(weight.shape)[0]}x{tuple(weight.shape)[1]} in the model",
                "the LoRA was trained for a model of another size",
            )


@torch.no_grad()
def merge_lora(model: torch.nn.Module, lora: Lora, scale: float = 1.0) -> None:
    """Add ``scale * alpha/rank * up @ down`` to each weight (in float32, stored back in the weight's dtype)."""
    layers = dict(model.named_modules())
    for name, module in lora.modules.items():
        weight = layers[name].weight
        delta = (module.up.to(weight.device, torch.float32) @ module.down.to(weight.device, torch.float32)) * (scale * module.scale)
        weight.copy_((weight.float() + delta).to(weight.dtype))


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


def apply_loras(model: torch.nn.Module, loras: list[tuple[Lora, LoraChoice]]) -> None:
    """Check every LoRA against the model first, then merge them all."""
    for lora, choice in loras:
        check_fits(lora, model, str(choice.path))
    for lora, choice in loras:
        merge_lora(model, lora, choice.scale)
