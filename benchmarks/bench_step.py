"""One transformer step and one VAE decode at the 640 bucket: the official baseline beside fpgen's modes.

    python benchmarks/bench_step.py --out results/step.json          # on the H100
    python benchmarks/bench_step.py --tiny --out /tmp/step.json      # a CPU smoke run

Baseline = diffusers' HunyuanVideoFramepackTransformer3DModel.forward called the official way (bf16
weights, bf16 timestep and guidance, eager, PyTorch SDPA). Every variant runs on the same inputs
and weights; its relative L2 error is against the baseline's output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fullsize  # noqa: E402

from fpgen.acceleration import compile_blocks, float8_linears  # noqa: E402
from fpgen.offload import StreamedBlockStack  # noqa: E402
from fpgen.packing import pack_section  # noqa: E402
from fpgen.plan import plan_sections  # noqa: E402
from fpgen.transformer import BlockStack, Conditioning, packed_forward, use_float32_head  # noqa: E402

GIB = 2**30


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup=1, reps=3):
    """Median wall time of ``fn`` (synchronised), and its last output."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def first_call_then_timed(fn):
    """Seconds of the first call (the compile), then the median step with peak memory reset."""
    start = time.perf_counter()
    fn()
    sync()
    compile_s = time.perf_counter() - start
    peak_reset()
    seconds, out = timed(fn, warmup=1, reps=5)
    return compile_s, seconds, out


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def peak_reset():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak():
    if not torch.cuda.is_available():
        return {}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB, "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB}


class Results(dict):
    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def add(self, key, **values):
        self[key] = values
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self, indent=1, default=str))
        print(f"{key:<34} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()), flush=True)


def section_inputs(tiny: bool, device, text_tokens: int):
    """A mid-video inverted section (padding 2, real history in every slot) at the 640x608 bucket."""
    h, w = (16, 16) if tiny else (80, 76)
    gen = torch.Generator().manual_seed(7)
    window = 9
    video = torch.randn((1, 16, 1 + 4 * window, h, w), generator=gen)
    section = plan_sections(4, window, "inverted").sections[1]
    context = pack_section("inverted", video, section, window)
    context = type(context)(context.indices, context.clean.to(device), context.clean_2x.to(device), context.clean_4x.to(device))
    text_dim, pooled_dim, image_tokens, image_dim = (32, 16, 16, 24) if tiny else (4096, 768, 729, 1152)
    embeds = torch.zeros((1, 512, text_dim))
    embeds[:, :text_tokens] = torch.randn((1, text_tokens, text_dim), generator=gen)
    mask = torch.zeros((1, 512), dtype=torch.bool)
    mask[:, :text_tokens] = True
    cond = Conditioning(embeds, mask, torch.randn((1, pooled_dim), generator=gen), torch.randn((1, image_tokens, image_dim), generator=gen))
    x = torch.randn((1, 16, window, h, w), generator=gen).to(device)
    return x, cond.to(device, torch.bfloat16), context


def official_call(model, x, sigma, cond, context):
    """diffusers' own forward, fed the way the official wrapper feeds its model."""
    b = torch.bfloat16
    return model(
        hidden_states=x.to(b), timestep=(sigma * 1000).to(b), encoder_hidden_states=cond.prompt_embeds,
        encoder_attention_mask=cond.prompt_mask, pooled_projections=cond.pooled, image_embeds=cond.image_embeds,
        indices_latents=context.indices.latents, guidance=torch.tensor([10000.0], device=x.device).to(b),
        latents_clean=context.clean.to(b), indices_latents_clean=context.indices.clean,
        latents_history_2x=context.clean_2x.to(b), indices_latents_history_2x=context.indices.clean_2x,
        latents_history_4x=context.clean_4x.to(b), indices_latents_history_4x=context.indices.clean_4x, return_dict=False,
    )[0].float()  # fmt: skip


def fpgen_call(model, x, sigma, cond, context, blocks: BlockStack):
    """fpgen's transformer call (``packed_forward``) through ``blocks``, with the official wrapper's scalars."""
    b = torch.bfloat16
    guidance = torch.tensor([10000.0], device=x.device).to(b)
    return packed_forward(model, x.to(b), (sigma * 1000).to(b), guidance, cond, context, blocks=blocks)


def sequence_length(x, context, text_tokens: int, image_tokens: int) -> int:
    """Joint attention length: window + 1x + 2x + 4x tokens (2x/4x grids padded), SigLIP and text tokens."""
    _, _, t, h, w = x.shape
    clean = (t + context.clean.shape[2]) * (h // 2) * (w // 2)
    history = math.ceil(h / 4) * math.ceil(w / 4) + 4 * math.ceil(h / 8) * math.ceil(w / 8)
    return clean + history + image_tokens + text_tokens


def step_flops(length: int, model) -> float:
    """Matmul FLOPs of one step: 24 d^2 per token per block for the linears, 4 L^2 d for attention."""
    cfg = model.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    return (cfg.num_layers + cfg.num_single_layers) * (24 * d * d * length + 4 * length * length * d)


def attention_kernels(results: Results, device, length: int, tiny: bool):
    """The joint attention of one block, alone: which kernel is fastest at FramePack's length."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, dim = (2, 16) if tiny else (24, 128)
    gen = torch.Generator(device=device).manual_seed(3)
    q, k, v = (torch.randn((1, heads, length, dim), generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * length * length * heads * dim
    reference = None
    backends = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    for name, backend in backends if device.type == "cuda" else [("math", SDPBackend.MATH)]:
        try:
            with sdpa_kernel(backend):
                seconds, out = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), warmup=2, reps=5)
        except RuntimeError as error:
            results.add(f"attention.{name}", error=str(error)[:120])
            continue
        reference = out if reference is None else reference
        results.add(f"attention.{name}", ms=seconds * 1e3, tflops=flops / seconds / 1e12, rel_l2=rel_l2(out, reference))
    try:
        from sageattention import sageattn
    except ImportError as error:
        results.add("attention.sage_int8", error=str(error)[:120])
        return
    try:
        seconds, out = timed(lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False), warmup=2, reps=5)
        results.add("attention.sage_int8", ms=seconds * 1e3, tflops=flops / seconds / 1e12, rel_l2=rel_l2(out, reference))
    except Exception as error:  # a Triton kernel that does not build here is a finding, not a crash
        results.add("attention.sage_int8", error=f"{type(error).__name__}: {str(error)[:120]}")


def restore_blocks_to(device, model, streamed: StreamedBlockStack):
    for block, tensors in zip(streamed.order, streamed.host):
        for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
            tensor.data = tensors[name].to(device)


def vae_decode(results: Results, device, tiny: bool, budget_s: float, started: float):
    from fpgen.decode import decode_latents

    vae = fullsize.vae(device, tiny=tiny)
    h, w = (16, 16) if tiny else (80, 76)
    latents = torch.randn((1, 16, 18, h, w), generator=torch.Generator().manual_seed(5))
    peak_reset()
    seconds, reference = timed(lambda: decode_latents(vae, latents), warmup=1, reps=2)
    results.add("vae.default", s=seconds, frames=reference.shape[2], **peak())
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    seconds, out = timed(lambda: decode_latents(vae, latents), warmup=1, reps=2)
    results.add("vae.cudnn_benchmark", s=seconds, rel_l2=rel_l2(out, reference))
    vae.to(memory_format=torch.channels_last_3d)
    seconds, out = timed(lambda: decode_latents(vae, latents), warmup=1, reps=2)
    results.add("vae.cudnn_benchmark+channels_last", s=seconds, rel_l2=rel_l2(out, reference))
    vae.to(memory_format=torch.contiguous_format)
    vae.enable_tiling()
    peak_reset()
    seconds, out = timed(lambda: decode_latents(vae, latents), warmup=1, reps=2)
    results.add("vae.tiled", s=seconds, rel_l2=rel_l2(out, reference), **peak())
    vae.disable_tiling()
    if time.perf_counter() - started > budget_s:
        results.add("vae.compiled", skipped="time budget")
        return
    vae.decoder.compile()
    start = time.perf_counter()
    decode_latents(vae, latents)
    sync()
    compile_s = time.perf_counter() - start
    seconds, out = timed(lambda: decode_latents(vae, latents), warmup=0, reps=2)
    results.add("vae.compiled", s=seconds, compile_s=compile_s, rel_l2=rel_l2(out, reference))


@dataclass
class StepBench:
    """One transformer and its inputs, timed variant after variant; each result's error is against ``baseline``."""

    results: Results
    model: torch.nn.Module
    blocks: BlockStack
    inputs: tuple  # x, sigma, cond, context
    flops: float
    baseline: torch.Tensor | None = None

    def fpgen(self, blocks: BlockStack | None = None) -> torch.Tensor:
        x, sigma, cond, context = self.inputs
        return fpgen_call(self.model, x, sigma, cond, context, self.blocks if blocks is None else blocks)

    def official(self) -> torch.Tensor:
        x, sigma, cond, context = self.inputs
        return official_call(self.model, x, sigma, cond, context)

    def report(self, name: str, seconds: float, out: torch.Tensor, **extra) -> None:
        error = rel_l2(out, self.baseline) if self.baseline is not None else 0.0
        self.results.add(name, s_per_step=seconds, tflops=self.flops / seconds / 1e12, rel_l2=error, **extra)


def environment() -> dict:
    """The versions the figures depend on."""
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    for name in ("diffusers", "transformers", "torchao", "huggingface_hub"):
        try:
            env[name] = __import__(name).__version__
        except Exception as error:
            env[name] = f"missing ({type(error).__name__})"
    return env


def eager_variants(bench: StepBench, device, length: int, tiny: bool) -> torch.Tensor:
    """The baseline, fpgen's eager call (bf16, then the official float32 head) and, on CUDA, the attention
    kernels alone and diffusers' attention backends; returns fpgen's eager output."""
    peak_reset()
    seconds, bench.baseline = timed(bench.official)
    bench.report("baseline.eager_sdpa", seconds, bench.baseline, **peak())
    seconds, out = timed(bench.fpgen)
    bench.report("fpgen.eager_bf16_head", seconds, out)
    use_float32_head(bench.model)  # the official float32 output head, as fpgen's loader sets it
    seconds, exact_eager = timed(bench.fpgen)
    bench.report("fpgen.eager", seconds, exact_eager)
    if device.type == "cuda":
        attention_kernels(bench.results, device, length, tiny)
        for backend in ("_native_cudnn", "_native_flash", "native"):
            bench.model.set_attention_backend(backend)  # diffusers' dispatcher; "native" lets PyTorch pick
            seconds, out = timed(bench.fpgen)
            bench.report(f"fpgen.eager.{backend}", seconds, out)
    return exact_eager


def exact_compiled(bench: StepBench, exact_eager: torch.Tensor, tiny: bool, text_tokens: int) -> torch.Tensor:
    """The exact mode's compiled blocks; then a later section (same shapes, other values) must reuse the graphs."""
    compile_blocks(bench.model)
    compile_s, seconds, exact = first_call_then_timed(bench.fpgen)
    bench.report("fpgen.exact_compiled", seconds, exact, compile_s=compile_s, vs_eager_rel_l2=rel_l2(exact, exact_eager), **peak())
    x, sigma, cond, _ = bench.inputs
    x2, _, context2 = section_inputs(tiny, x.device, text_tokens)
    context2 = type(context2)(context2.indices, context2.clean * 0.5, context2.clean_2x * 0.5, context2.clean_4x * 0.5)
    torch._dynamo.config.error_on_recompile = True
    try:
        fpgen_call(bench.model, x2 * 1.1, torch.tensor([0.3], device=x.device), cond, context2, bench.blocks)
        bench.results.add("fpgen.exact_compiled.recompile", recompiled=False)
    except Exception as error:
        bench.results.add("fpgen.exact_compiled.recompile", recompiled=True, error=str(error)[:200])
    torch._dynamo.config.error_on_recompile = False
    return exact


def lowvram_streamed(bench: StepBench, device) -> None:
    """The low-vram layout (blocks pinned on the host, the rest on the GPU), eager, under a 6 GiB cap; the blocks go back after."""
    model = bench.model
    torch._dynamo.reset()
    for block in (*model.transformer_blocks, *model.single_transformer_blocks):
        block._compiled_call_impl = None
    model.to("cpu")
    for name, child in model.named_children():
        if name not in ("transformer_blocks", "single_transformer_blocks"):
            child.to(device)
    streamed = StreamedBlockStack(model, device)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(6 * GIB / total)
    peak_reset()
    try:
        seconds, out = timed(lambda: bench.fpgen(streamed), warmup=1, reps=3)
        bench.report("fpgen.lowvram_streamed", seconds, out, **peak())
    except torch.OutOfMemoryError as error:
        bench.results.add("fpgen.lowvram_streamed", error=f"OOM under 6 GiB: {str(error)[:160]}")
    torch.cuda.set_per_process_memory_fraction(1.0)
    restore_blocks_to(device, model, streamed)


def fast_fp8(bench: StepBench, exact: torch.Tensor) -> None:
    """The fast mode's step: FP8 linears, compiled with inductor's own rounding."""
    try:
        float8_linears(bench.model)
        compile_blocks(bench.model, match_eager_rounding=False)
        compile_s, seconds, out = first_call_then_timed(bench.fpgen)
        bench.report("fpgen.fast_fp8_compiled", seconds, out, compile_s=compile_s, vs_exact_rel_l2=rel_l2(out, exact), **peak())
    except Exception as error:  # record and go on to the VAE
        bench.results.add("fpgen.fast_fp8_compiled", error=f"{type(error).__name__}: {str(error)[:300]}")


def transformer_steps(results: Results, device, tiny: bool, text_tokens: int, started: float) -> None:
    """Every step variant on one transformer, built here and freed on return (before the VAE's turn)."""
    model = fullsize.transformer(device, tiny=tiny)
    x, cond, context = section_inputs(tiny, device, text_tokens)
    length = sequence_length(x, context, text_tokens, cond.image_embeds.shape[1])
    bench = StepBench(results, model, BlockStack(model), (x, torch.tensor([0.8], device=device), cond, context), step_flops(length, model))
    results.add("shape", tokens=length, flops=bench.flops, built_s=time.perf_counter() - started)
    with torch.no_grad():
        exact_eager = eager_variants(bench, device, length, tiny)
        exact = exact_compiled(bench, exact_eager, tiny, text_tokens)
        if device.type == "cuda":
            lowvram_streamed(bench, device)
            fast_fp8(bench, exact)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("step.json"))
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds after which optional parts are skipped")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = Results(args.out)
    results.add("env", **environment())
    transformer_steps(results, device, args.tiny, args.text_tokens, started)
    peak_reset()
    with torch.no_grad():
        vae_decode(results, device, args.tiny, args.budget, started)
    results.add("total", s=time.perf_counter() - started)


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/fpgen-inductor")
    main()
