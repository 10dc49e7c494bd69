"""LoRA training-step benchmark of the full-size FramePack transformer (13B), randomly initialised, one GPU.

    python benchmarks/train_step.py --out results.json           # GPU: the 640 bucket, window 9
    python benchmarks/train_step.py --tiny --out results.json    # CPU smoke run with a tiny config

The transformer is built on the meta device with the released FramePackI2V_HY config, materialised in
bf16 on the GPU and filled with random weights (nothing is downloaded). One training step is exactly
what ``fpgen finetune`` runs: a section's context packed by ``fpgen.packing.pack_section`` (inverted
layout, the last-generated section, so every history slot is used), the flow-matching loss of
``fpgen.training.objective.FlowMatchingLoss`` under bf16 autocast, backward, AdamW on the LoRA
(rank 32, fpgen's default targets) and gradient checkpointing of every block. Configurations, run in
this order on the same model:

- ``bf16``: the base in bf16;
- ``fp8``: the base's block linears stored in float8 (``--fp8-base``);
- ``fp8+offload``: and the checkpointed block inputs kept in CPU memory (``--offload-activations``).

Per configuration it reports seconds per step (median of the timed steps, after warm-up steps) and
the peak GPU memory allocated and reserved by PyTorch (the CUDA context, ~0.5 GB, comes on top).
Needs torch, diffusers and peft; fpgen is imported from this checkout's src/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from fullsize import TINY_TRANSFORMER, TRANSFORMER  # noqa: E402  lllyasviel/FramePackI2V_HY's transformer config, and a tiny one

from fpgen.packing import pack_section  # noqa: E402
from fpgen.plan import plan_sections  # noqa: E402
from fpgen.training.adapters import add_lora, trainable_parameters  # noqa: E402
from fpgen.acceleration import compile_blocks  # noqa: E402
from fpgen.training.memory import cast_base_to_fp8, enable_checkpointing  # noqa: E402
from fpgen.training.objective import FlowMatchingLoss  # noqa: E402
from fpgen.transformer import Conditioning, use_float32_head  # noqa: E402

SIGLIP_TOKENS = 729  # SigLIP's 27x27 patch grid


def build_model(config: dict, device: torch.device, dtype: torch.dtype):
    """The transformer with random weights: built on meta (no memory), materialised on ``device``, then filled."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**config).to(dtype)
    model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("weight") and "norm" in name:
                parameter.fill_(1.0)
            else:
                parameter.zero_()
    use_float32_head(model)
    return model.requires_grad_(False)


def make_batch(config: dict, height: int, width: int, window: int, prompt_tokens: int, device):
    """A random section with the real shapes: the context comes from pack_section, as in training."""
    generator = torch.Generator("cpu").manual_seed(1)
    plan = plan_sections(2, window, "inverted")
    video = torch.randn((1, 16, plan.num_latents, height // 8, width // 8), generator=generator)
    section = plan.sections[-1]  # padding 0: the start latent, the nearest future frame and the 2x/4x slots
    context = pack_section("inverted", video, section, window)
    target = video[:, :, 1 : 1 + window]
    cond = Conditioning(
        torch.randn((1, prompt_tokens, config["text_embed_dim"]), generator=generator),
        torch.ones((1, prompt_tokens), dtype=torch.bool),
        torch.randn((1, config["pooled_projection_dim"]), generator=generator),
        torch.randn((1, SIGLIP_TOKENS if config is TRANSFORMER else 16, config["image_proj_dim"]), generator=generator),
    )
    noise = torch.randn(target.shape, generator=generator)
    return target, noise, torch.tensor([0.7]), cond, context


def run(objective, parameters, batch, steps: int, warmup: int, device) -> dict:
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(warmup + steps):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = objective(*batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
        losses.append(loss.detach().item())
    result = {"s_per_step": round(statistics.median(times), 3), "step_times": [round(t, 3) for t in times], "loss_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses))}
    if cuda:
        result["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (a smoke test of this script)")
    parser.add_argument("--size", default="640x608", help="HxW in pixels; 640x608 is the 640 bucket of a square picture")
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    parser.add_argument("--configs", default="bf16,bf16+compile,fp8,fp8+offload")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    config = TINY_TRANSFORMER if args.tiny else TRANSFORMER
    height, width = (64, 64) if args.tiny else tuple(int(v) for v in args.size.split("x"))
    started = time.perf_counter()
    model = build_model(config, device, torch.bfloat16)
    add_lora(model, args.rank, args.rank, None, seed=0)
    built = time.perf_counter() - started
    parameters = trainable_parameters(model)
    objective = FlowMatchingLoss(model, guidance=1.0)
    batch = make_batch(config, height, width, args.window, args.prompt_tokens, device)
    tokens = args.window * (height // 16) * (width // 16)

    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "config": "tiny" if args.tiny else "FramePackI2V_HY (13B)", "parameters": sum(p.numel() for p in model.parameters()),
        "lora_parameters": sum(p.numel() for p in parameters), "size": f"{height}x{width}", "window": args.window,
        "window_tokens": tokens, "prompt_tokens": args.prompt_tokens, "rank": args.rank, "batch": 1, "build_s": round(built, 1), "runs": {},
    }  # fmt: skip
    for name in args.configs.split(","):
        blocks = (*model.transformer_blocks, *model.single_transformer_blocks)
        if name.endswith("compile"):
            compile_blocks(model, match_eager_rounding=False)  # what `fpgen finetune --compile` does
        else:
            for block in blocks:
                block._compiled_call_impl = None
        if name.startswith("fp8") and not any(p.dtype == torch.float8_e4m3fn for p in model.parameters()):
            cast_base_to_fp8(model)
        enable_checkpointing(model, offload=name.endswith("offload"))
        try:
            results["runs"][name] = run(objective, parameters, batch, args.steps, args.warmup, device)
        except torch.OutOfMemoryError:
            results["runs"][name] = {"error": "out of memory"}
        except Exception as error:  # e.g. a compile failure: record it and go on with the next configuration
            results["runs"][name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        print(f"{name}: {results['runs'][name]}", flush=True)
    results["total_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{results['config']} on {results['device']}, {results['size']} window {args.window} ({tokens} window tokens), LoRA rank {args.rank}, batch 1, gradient checkpointing")
    print(f"{'config':<14}{'s/step':>8}{'peak alloc GB':>15}{'peak reserved GB':>18}")
    for name, run_result in results["runs"].items():
        print(f"{name:<14}{run_result.get('s_per_step', '-'):>8}{run_result.get('peak_allocated_gb', '-'):>15}{run_result.get('peak_reserved_gb', '-'):>18}")


if __name__ == "__main__":
    main()
