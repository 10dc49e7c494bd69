"""Helpers shared by several test files (fixtures live in conftest.py)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fpgen.geometry import latents_to_frames

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
HUB = GOLDEN / "hub"
TRANSFORMER = HUB / "lllyasviel" / "FramePackI2V_HY"
TRANSFORMER_BYTES = 25_748_629_632  # the released transformer in bf16


@dataclass
class Ran:
    """What an in-process ``fpgen`` run left: the same fields as a finished ``subprocess.run``."""

    returncode: int
    stdout: str
    stderr: str


def assert_one_line_error(proc, code: int, *needles: str) -> None:
    """The error contract: exit ``code``, one line on stderr naming every needle, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def read_until(stream, *prefixes: str) -> list[str]:
    """Read ``stream`` line by line until each of ``prefixes`` has begun a line; the lines read (the stream ending first fails)."""
    lines, waiting = [], set(prefixes)
    for line in stream:
        lines.append(line)
        waiting -= {prefix for prefix in waiting if line.startswith(prefix)}
        if not waiting:
            return lines
    raise AssertionError(f"the stream ended before lines starting with {sorted(waiting)}:\n{''.join(lines)}")


@contextmanager
def offline_hub(cache: Path):
    """huggingface_hub (in this process) reads ``cache`` and never goes online, until the block ends."""
    import huggingface_hub.constants as constants

    saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache), True
    try:
        yield cache
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved


def official_soft_append(history, current, overlap):
    """The official soft_append_bcthw, written out for comparison."""
    weights = torch.linspace(1, 0, overlap, dtype=history.dtype).view(1, 1, -1, 1, 1)
    blended = weights * history[:, :, -overlap:] + (1 - weights) * current[:, :, :overlap]
    return torch.cat([history[:, :, :-overlap], blended, current[:, :, overlap:]], dim=2)


def fake_decode(span, window, seed):
    """Random frames of the length a decode of latent ``span`` has: stands in for the VAE in stitching tests."""
    begin, end = span
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, 3, latents_to_frames(end - begin), 2, 2), generator=generator)


def tiny_transformer_with_lora(rank: int = 4, alpha: float = 2.0, std: float = 0.3, seed: int = 1):
    """The tiny golden transformer carrying a LoRA whose every weight is random (non-zero): stands in for a trained one."""
    from fpgen.loading import load_transformer
    from fpgen.training.adapters import add_lora

    model = load_transformer(TRANSFORMER, torch.float32)
    add_lora(model, rank, alpha, None, seed=0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def block_inputs(model, tokens=12, text=5, seed=0):
    """Random inputs of one pass through a transformer's block stack (hidden, context, temb, no mask, rope)."""
    generator = torch.Generator().manual_seed(seed)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    head = model.config.attention_head_dim
    hidden, context = torch.randn(1, tokens, width, generator=generator), torch.randn(1, text, width, generator=generator)
    temb = torch.randn(1, width, generator=generator)
    angles = torch.randn(tokens, head, generator=generator)
    return hidden, context, temb, None, (angles.cos(), angles.sin())
