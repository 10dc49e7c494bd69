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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fullsize  # noqa: E402

from fpgen.acceleration import compile_blocks, float8_linears  # noqa: E402
from fpgen.offload import StreamedBlockStack  # noqa: E402
from fpgen.packing import pack_section  # noqa: E402
from fpgen.plan import plan_sections  # noqa: E402
from fpgen.transformer import BlockStack, Conditioning, packed_forward  # noqa: E402

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


def fpgen_call(model, x, sigma, cond, context, blocks=None):
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
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    for name in ("diffusers", "transformers", "torchao", "huggingface_hub"):
        try:
            env[name] = __import__(name).__version__
        except Exception as error:
            env[name] = f"missing ({type(error).__name__})"
    results.add("env", **env)

    model = fullsize.transformer(device, tiny=args.tiny)
    x, cond, context = section_inputs(args.tiny, device, args.text_tokens)
    sigma = torch.tensor([0.8], device=device)
    length = sequence_length(x, context, args.text_tokens, cond.image_embeds.shape[1])
    flops = step_flops(length, model)
    results.add("shape", tokens=length, flops=flops, built_s=time.perf_counter() - started)

    def report(name, seconds, out, reference, **extra):
        results.add(name, s_per_step=seconds, tflops=flops / seconds / 1e12, rel_l2=rel_l2(out, reference) if reference is not None else 0.0, **extra)

    with torch.no_grad():
        peak_reset()
        seconds, baseline = timed(lambda: official_call(model, x, sigma, cond, context))
        report("baseline.eager_sdpa", seconds, baseline, None, **peak())

        seconds, out = timed(lambda: fpgen_call(model, x, sigma, cond, context))
        report("fpgen.eager_bf16_head", seconds, out, baseline)
        fp32_head = torch.nn.Linear(model.proj_out.in_features, model.proj_out.out_features, device=device, dtype=torch.float32)
        fp32_head.load_state_dict({k: v.float() for k, v in model.proj_out.state_dict().items()})
        bf16_head, model.proj_out = model.proj_out, fp32_head
        seconds, exact_eager = timed(lambda: fpgen_call(model, x, sigma, cond, context))
        report("fpgen.eager", seconds, exact_eager, baseline)

        if device.type == "cuda":
            attention_kernels(results, device, length, args.tiny)
            for backend in ("_native_cudnn", "_native_flash", "native"):
                model.set_attention_backend(backend)  # diffusers' dispatcher; "native" lets PyTorch pick
                seconds, out = timed(lambda: fpgen_call(model, x, sigma, cond, context))
                report(f"fpgen.eager.{backend}", seconds, out, baseline)

        compile_blocks(model)
        start = time.perf_counter()
        fpgen_call(model, x, sigma, cond, context)
        sync()
        compile_s = time.perf_counter() - start
        peak_reset()
        seconds, exact = timed(lambda: fpgen_call(model, x, sigma, cond, context), warmup=1, reps=5)
        report("fpgen.exact_compiled", seconds, exact, baseline, compile_s=compile_s, vs_eager_rel_l2=rel_l2(exact, exact_eager), **peak())

        # a later section: same shapes, other values; it must reuse the compiled graphs
        x2, _, context2 = section_inputs(args.tiny, device, args.text_tokens)
        context2 = type(context2)(context2.indices, context2.clean * 0.5, context2.clean_2x * 0.5, context2.clean_4x * 0.5)
        torch._dynamo.config.error_on_recompile = True
        try:
            fpgen_call(model, x2 * 1.1, torch.tensor([0.3], device=device), cond, context2)
            results.add("fpgen.exact_compiled.recompile", recompiled=False)
        except Exception as error:
            results.add("fpgen.exact_compiled.recompile", recompiled=True, error=str(error)[:200])
        torch._dynamo.config.error_on_recompile = False

        if device.type == "cuda":
            torch._dynamo.reset()
            for block in (*model.transformer_blocks, *model.single_transformer_blocks):
                block._compiled_call_impl = None
            model.to("cpu")  # the low-vram layout: blocks pinned on the host, the rest on the GPU
            for name, child in model.named_children():
                if name not in ("transformer_blocks", "single_transformer_blocks"):
                    child.to(device)
            streamed = StreamedBlockStack(model, device)
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(6 * GIB / total)
            peak_reset()
            try:
                seconds, out = timed(lambda: fpgen_call(model, x, sigma, cond, context, blocks=streamed), warmup=1, reps=3)
                report("fpgen.lowvram_streamed", seconds, out, baseline, **peak())
            except torch.OutOfMemoryError as error:
                results.add("fpgen.lowvram_streamed", error=f"OOM under 6 GiB: {str(error)[:160]}")
            torch.cuda.set_per_process_memory_fraction(1.0)
            restore_blocks_to(device, model, streamed)
            del streamed

            try:
                float8_linears(model)
                compile_blocks(model, match_eager_rounding=False)
                start = time.perf_counter()
                fpgen_call(model, x, sigma, cond, context)
                sync()
                compile_s = time.perf_counter() - start
                peak_reset()
                seconds, out = timed(lambda: fpgen_call(model, x, sigma, cond, context), warmup=1, reps=5)
                report("fpgen.fast_fp8_compiled", seconds, out, baseline, compile_s=compile_s, vs_exact_rel_l2=rel_l2(out, exact), **peak())
            except Exception as error:  # record and go on to the VAE
                results.add("fpgen.fast_fp8_compiled", error=f"{type(error).__name__}: {str(error)[:300]}")
        del model
        peak_reset()
        vae_decode(results, device, args.tiny, args.budget, started)
    results.add("total", s=time.perf_counter() - started)


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/fpgen-inductor")
    main()
