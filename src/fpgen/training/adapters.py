"""What a run trains: a LoRA injected with peft, or every weight of the transformer (``--full``).

The LoRA is injected into the diffusers transformer in place (``peft.inject_adapter_in_model``), so
the model keeps its class and ``fpgen.transformer.packed_forward`` drives it unchanged, for training
and for validation videos alike. LoRA weights are trained in float32 whatever the base's dtype.
"""

from __future__ import annotations

import re

import torch

from fpgen.errors import InputError
from fpgen.lora import DEFAULT_TARGETS, Lora, LoraModule

ADAPTER = "default"


def target_pattern(targets: str | None) -> str:
    """A regular expression over module names: the default, a regex, or a comma list of name endings."""
    if not targets:
        return DEFAULT_TARGETS
    if "," in targets or re.fullmatch(r"[\w.]+", targets):
        endings = [re.escape(t.strip()) for t in targets.split(",") if t.strip()]
        return r".*\.(" + "|".join(endings) + ")"
    return targets


def matching_linears(model: torch.nn.Module, pattern: str) -> list[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise InputError(f"--target-modules {pattern!r} is not a valid regular expression ({exc})", "e.g. to_q,to_k,to_v or a regex over module names") from None
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and compiled.fullmatch(name)]


def add_lora(model: torch.nn.Module, rank: int, alpha: float, targets: str | None, seed: int) -> list[str]:
    """Inject a LoRA (A: Kaiming-uniform, B: zeros, so training starts from the base model); returns the adapted modules."""
    from peft import LoraConfig, inject_adapter_in_model

    names = matching_linears(model, target_pattern(targets))
    if not names:
        raise InputError(f"--target-modules {targets!r} matches no linear layer of the transformer", "e.g. to_q,to_k,to_v,to_out.0 or leave it out for the default")
    cuda = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, lora_dropout=0.0), model, adapter_name=ADAPTER)
    for parameter in trainable_parameters(model):
        parameter.data = parameter.data.float()
    return names


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """peft's state dict of the adapter: ``<module>.lora_A.weight`` / ``.lora_B.weight``."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def load_lora_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise InputError(f"the checkpoint's LoRA does not fit this model ({len(unexpected)} unexpected keys, e.g. {unexpected[0]})", "resume with the settings the run was started with")


def lora_of(model: torch.nn.Module, alpha: float, info: str | None = None) -> Lora:
    """The trained adapter as a ``fpgen.lora.Lora`` (float32 copies on the CPU)."""
    state = lora_state(model)
    modules = {}
    for key, down in state.items():
        if key.endswith(".lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            modules[name] = LoraModule(down.detach().float().cpu().clone(), state[f"{name}.lora_B.weight"].detach().float().cpu().clone(), alpha)
    return Lora(modules, info)


def set_lora(model: torch.nn.Module, lora: Lora) -> None:
    """Load ``lora``'s weights into the injected adapter (for --resume)."""
    state = {}
    for name, module in lora.modules.items():
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = module.down, module.up
    load_lora_state(model, state)


def make_full_trainable(model: torch.nn.Module) -> list[str]:
    """A full finetune trains every weight, in float32 (bf16 autocast does the compute on a GPU)."""
    model.float().requires_grad_(True)
    return [name for name, _ in model.named_parameters()]
