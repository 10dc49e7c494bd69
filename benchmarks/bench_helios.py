"""Helios on one GPU with full-size random weights: Distilled's end-to-end speed, Base's s/frame, peak memory, low-vram.

    bash benchmarks/on_device.sh python3 benchmarks/bench_helios.py --out $OUT/h200-helios-DATE.json   # every part, one process
    python benchmarks/bench_helios.py --part write distilled --out /tmp/h.json   # parts: write, distilled, fast, base, lowvram; a later run adds to --out
    python benchmarks/bench_helios.py --part distilled fast --profile --out /tmp/h.json   # and where a chunk's time goes
    python benchmarks/bench_helios.py --tiny --out /tmp/h.json                  # CPU smoke run: tiny models, tiny sizes

The models are written once as a ``--model-dir`` folder (``--models``, default .bench/helios) with the
real classes and configs (HeliosTransformer3DModel at Wan2.1-14B size, UMT5-XXL, Wan2.1's VAE),
random weights built on the GPU, and the tokenizer of tests/heliosmodels.py (its ids fit UMT5's
vocabulary). Helios-Base links to Distilled's weights with its own scheduler (the weights' values
do not change the speed). A job is ``fpgen.generate_video`` text-to-video, MP4 included, model
loading excluded:
- distilled: 384x640, 10 s (8 chunks, 264 frames at 24 fps), the model's defaults (1 step in each of
  3 pyramid stages, no CFG): ``helios_distilled_fps`` (frames / job seconds),
  ``helios_distilled_s_per_chunk`` (median chunk after the first), ``peak_reserved_gib``;
- base: 384x640, one chunk of 33 frames, 50 steps with CFG 5: ``helios_base_s_per_frame``;
- fast: distilled with ``--fast`` (FP8 matmuls in the blocks, a compiled VAE decoder): ``helios_distilled_fast_fps``
  and its latents' relative L2 from the exact job's (same seed);
- decode: one chunk's Wan VAE decode (9 latents -> 33 frames at 384x640, float16) eager and compiled, each
  with and without cuDNN's autotuner (``torch.backends.cudnn.benchmark``): ``decode_s``;
- lowvram: distilled, 2 chunks, ``--low-vram`` (UMT5 and the transformer streamed): ``lowvram_peak_reserved_gib``;
  run it in a process of its own (``--part lowvram``): torch.compile's caches keep an earlier part's weights.
Helios' blocks are compiled as FramePack's are (a 3-s warm-up job on the same models compiles them for every
shape before the timed job); low-vram streams them eager. ``--profile`` runs each timed job once more with the
GPU synchronised at every event and the VAE decode timed: each chunk's passes, decode and the rest.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
import fullsize  # noqa: E402
import heliosmodels  # noqa: E402

from fpgen.api import Components, generate_video  # noqa: E402
from fpgen.events import SectionDone  # noqa: E402
from fpgen.hub import find_model  # noqa: E402
from fpgen.runtime import plan_runtime  # noqa: E402
from fpgen.spec import RuntimeRequest, Settings  # noqa: E402

GIB = 2**30
PARTS = ("write", "distilled", "fast", "decode", "base", "lowvram")
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def write_models(root: Path, device, tiny: bool) -> Path:
    """DIR/BestWishYsh/Helios-Distilled with full-size random models (tiny ones with ``tiny``); Base links to its weights."""
    from diffusers import AutoencoderKLWan, HeliosTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    distilled, base = root / heliosmodels.HELIOS_REPOS["helios-distilled"], root / heliosmodels.HELIOS_REPOS["helios"]
    tokenizer = heliosmodels.tiny_tokenizer()
    tokenizer.save_pretrained(distilled / "tokenizer")
    parts = {
        "transformer": (heliosmodels.tiny_transformer if tiny else HeliosTransformer3DModel, torch.bfloat16),
        "text_encoder": ((lambda: heliosmodels.tiny_text_encoder(len(tokenizer))) if tiny else (lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL))), torch.bfloat16),
        "vae": (heliosmodels.tiny_vae if tiny else AutoencoderKLWan, torch.float32),
    }
    for seed, (name, (factory, dtype)) in enumerate(parts.items()):
        model = fullsize.build(factory, device, dtype, seed)
        model.save_pretrained(distilled / name, max_shard_size="10GB")
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    heliosmodels.tiny_scheduler("helios-distilled").save_pretrained(distilled / "scheduler")
    heliosmodels.tiny_scheduler("helios").save_pretrained(base / "scheduler")
    for name in ("tokenizer", *parts):
        (base / name).unlink(missing_ok=True)
        (base / name).symlink_to((distilled / name).resolve(), target_is_directory=True)
    return root


def synchronised() -> float:
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter()


def profile(components: Components, settings: Settings, out: Path) -> dict:
    """The job again with the GPU synchronised at every event: per chunk, each transformer pass (with its sampler step),
    the VAE decode, and the rest (packing the context before, moving and writing the frames after)."""
    marks, decodes, decode = [], [], components.vae.decode

    def timed_decode(*args, **kwargs):
        started = synchronised()
        frames = decode(*args, **kwargs)
        decodes.append(synchronised() - started)
        return frames

    components.vae.decode = timed_decode
    started = synchronised()
    try:
        generate_video(components, None, out, settings, lambda event: marks.append((type(event).__name__, synchronised())), overwrite=True)
    finally:
        del components.vae.decode
    chunks, previous, opened, steps = [], started, started, []
    for kind, moment in marks:  # each section: SectionStarted, a StepDone per pass, SectionDone
        if kind == "SectionStarted":
            opened, steps = moment, []
        elif kind == "StepDone":
            steps.append(moment)
        elif kind == "SectionDone":
            chunks.append({"before_s": opened - previous, "passes_s": [b - a for a, b in zip([opened, *steps], steps)], "after_s": moment - steps[-1]})
            previous = moment
    for chunk, seconds in zip(chunks, decodes):
        chunk["decode_s"] = seconds
    steady = chunks[1:] or chunks
    median = statistics.median
    return {"chunks": chunks, "median_passes_s": [median([c["passes_s"][i] for c in steady]) for i in range(len(steady[0]["passes_s"]))],
            "median_decode_s": median([c["decode_s"] for c in steady]), "median_after_s": median([c["after_s"] for c in steady]), "median_before_s": median([c["before_s"] for c in steady]),
            "median_chunk_s": median([c["before_s"] + sum(c["passes_s"]) + c["after_s"] for c in steady])}  # fmt: skip


def job(name: str, models: Path, settings: Settings, out: Path, low_vram: bool = False, fast: bool = False, warm_up: Settings | None = None, profiled: bool = False) -> dict:
    """Load ``name`` from ``models`` (not timed), run one text-to-video job, and say how long each chunk took and the peak memory.

    ``warm_up``: a shorter job run first on the same models (not timed), which compiles the blocks for every shape the job meets.
    ``profiled``: the job once more, synchronised (``profile``). The latents are returned under ``latents`` (not written to JSON).
    """
    files = find_model(name, models)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    left_over = torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else None  # what an earlier part left on the GPU
    components = Components(files, plan_runtime(RuntimeRequest(device=device, low_vram=low_vram, fast=fast), files.paths["transformer"])).load()
    warm_up_s = None
    if warm_up is not None:
        started = time.perf_counter()
        generate_video(components, None, out / f"{name}-warm-up.mp4", warm_up, overwrite=True)
        warm_up_s = time.perf_counter() - started
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    marks = []
    started = time.perf_counter()
    output = out / f"{name}-{components.runtime.mode}.mp4"
    video = generate_video(components, None, output, settings, lambda event: marks.append(time.perf_counter()) if isinstance(event, SectionDone) else None, overwrite=True)
    elapsed = time.perf_counter() - started
    chunks = [b - a for a, b in zip([started, *marks], marks)]
    result = {"frames": video.frames, "fps": video.fps, "job_s": elapsed, "chunk_s": chunks, "passes": video.result.transformer_passes, "mode": components.runtime.mode,
              "compiled": components.runtime.compile and components.runtime.is_cuda and not low_vram, "warm_up_s": warm_up_s}  # fmt: skip
    if torch.cuda.is_available():
        result.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB, peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB, left_over_gib=left_over)
    if profiled:
        result["profile"] = profile(components, settings, output.with_name(output.stem + "-profiled.mp4"))
    result["latents"] = video.result.latents
    del components, video
    torch._dynamo.reset()  # compiled blocks keep their weights referenced: the next part would measure them too
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return result


def decode_speeds(models: Path, size: tuple[int, int], repeats: int = 3) -> dict:
    """Seconds for one chunk's VAE decode (median of ``repeats`` after a warm-up), eager and compiled, cuDNN autotuned or not."""
    from diffusers import AutoencoderKLWan

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    vae = AutoencoderKLWan.from_pretrained(find_model("helios-distilled", models).paths["vae"], torch_dtype=dtype).to(device).eval()
    latents = torch.randn(1, 16, 9, size[0] // 8, size[1] // 8, device=device, dtype=dtype)
    eager, seconds = vae.decoder.forward, {}
    for compiled in (False, True):
        vae.decoder.forward = torch.compile(eager) if compiled else eager
        for autotuned in (False, True):
            torch.backends.cudnn.benchmark = autotuned
            times = []
            with torch.no_grad():
                for _ in range(repeats + 1):
                    started = synchronised()
                    vae.decode(latents)
                    times.append(synchronised() - started)
            seconds[f"{'compiled' if compiled else 'eager'}{'_cudnn_benchmark' if autotuned else ''}"] = statistics.median(times[1:])
    torch.backends.cudnn.benchmark = False
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes, for a CPU smoke run")
    parser.add_argument("--profile", action="store_true", help="run each Distilled job once more, synchronised, to split a chunk's time")
    parser.add_argument("--models", type=Path, default=ROOT / ".bench" / "helios")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = (64, 64) if args.tiny else (384, 640)
    work = args.out.parent / "helios-videos"
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"

    def keep(**items) -> None:
        """Add ``items`` and write everything so far: a part that fails leaves the earlier ones' figures."""
        results.update({key: {k: v for k, v in value.items() if k != "latents"} if isinstance(value, dict) else value for key, value in items.items()})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

    if "write" in args.part:
        started = time.perf_counter()
        write_models(args.models, device, args.tiny)
        keep(write_s=time.perf_counter() - started)
    warm_up = Settings(prompt="a red cat walks on the beach", seconds=3, size=size) if torch.cuda.is_available() else None  # 3 chunks: every shape the job meets
    distilled = Settings(prompt="a red cat walks on the beach", seconds=2 if args.tiny else 10, size=size)
    exact_latents = None
    if "distilled" in args.part:
        run = job("helios-distilled", args.models, distilled, work, warm_up=warm_up, profiled=args.profile)
        exact_latents = run["latents"]
        steady = run["chunk_s"][1:] or run["chunk_s"]
        keep(distilled=run, helios_distilled_fps=run["frames"] / run["job_s"], helios_distilled_s_per_chunk=statistics.median(steady), peak_reserved_gib=run.get("peak_reserved_gib"))
    if "fast" in args.part:
        run = job("helios-distilled", args.models, distilled, work, fast=torch.cuda.is_available(), warm_up=warm_up, profiled=args.profile)
        steady = run["chunk_s"][1:] or run["chunk_s"]
        apart = float((run["latents"] - exact_latents).norm() / exact_latents.norm()) if exact_latents is not None else None
        keep(fast=run, helios_distilled_fast_fps=run["frames"] / run["job_s"], helios_distilled_fast_s_per_chunk=statistics.median(steady), fast_rel_l2_vs_exact=apart)
    if "decode" in args.part:
        keep(decode_s=decode_speeds(args.models, size, repeats=1 if args.tiny else 3))
    if "base" in args.part:
        run = job("helios", args.models, Settings(prompt="a red cat walks on the beach", negative_prompt="blurry", seconds=1, steps=2 if args.tiny else 50, size=size), work)
        keep(base=run, helios_base_s_per_frame=run["job_s"] / run["frames"])
    if "lowvram" in args.part:
        run = job("helios-distilled", args.models, Settings(prompt="a red cat walks on the beach", seconds=2, size=size), work, low_vram=torch.cuda.is_available())
        keep(lowvram=run, lowvram_peak_reserved_gib=run.get("peak_reserved_gib"))
    print(json.dumps({key: value for key, value in results.items() if not isinstance(value, dict)}, indent=1))
    return results


if __name__ == "__main__":
    main()
