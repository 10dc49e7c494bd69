"""Helios on one GPU with full-size random weights: Distilled's end-to-end speed, Base's s/frame, peak memory, low-vram.

    bash benchmarks/on_device.sh python3 benchmarks/bench_helios.py --out $OUT/h200-helios-DATE.json   # every part, one process
    python benchmarks/bench_helios.py --part write distilled --out /tmp/h.json   # parts: write, distilled, base, lowvram; a later run adds to --out
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
- lowvram: distilled, 2 chunks, ``--low-vram`` (UMT5 and the transformer streamed): ``lowvram_peak_reserved_gib``.
Helios' blocks are compiled as FramePack's are (exact mode; a 3-s warm-up job on the same models compiles them
for every shape before the timed Distilled job); low-vram streams them eager.
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
PARTS = ("write", "distilled", "base", "lowvram")
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


def job(name: str, models: Path, settings: Settings, out: Path, low_vram: bool = False, warm_up: Settings | None = None) -> dict:
    """Load ``name`` from ``models`` (not timed), run one text-to-video job, and say how long each chunk took and the peak memory.

    ``warm_up``: a shorter job run first on the same models (not timed), which compiles the blocks for every shape the job meets.
    """
    files = find_model(name, models)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    left_over = torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else None  # what an earlier part left on the GPU
    components = Components(files, plan_runtime(RuntimeRequest(device=device, low_vram=low_vram), files.paths["transformer"])).load()
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
    video = generate_video(components, None, out / f"{name}{'-lowvram' if low_vram else ''}.mp4", settings, lambda event: marks.append(time.perf_counter()) if isinstance(event, SectionDone) else None, overwrite=True)
    elapsed = time.perf_counter() - started
    chunks = [b - a for a, b in zip([started, *marks], marks)]
    result = {"frames": video.frames, "fps": video.fps, "job_s": elapsed, "chunk_s": chunks, "passes": video.result.transformer_passes, "mode": components.runtime.mode,
              "compiled": components.runtime.compile and components.runtime.is_cuda and not low_vram, "warm_up_s": warm_up_s}  # fmt: skip
    if torch.cuda.is_available():
        result.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB, peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB, left_over_gib=left_over)
    del components, video
    torch._dynamo.reset()  # compiled blocks keep their weights referenced: the next part would measure them too
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes, for a CPU smoke run")
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
        results.update(items)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

    if "write" in args.part:
        started = time.perf_counter()
        write_models(args.models, device, args.tiny)
        keep(write_s=time.perf_counter() - started)
    if "distilled" in args.part:
        warm_up = Settings(prompt="a red cat walks on the beach", seconds=3, size=size) if torch.cuda.is_available() else None  # 3 chunks: every shape the job meets
        run = job("helios-distilled", args.models, Settings(prompt="a red cat walks on the beach", seconds=2 if args.tiny else 10, size=size), work, warm_up=warm_up)
        steady = run["chunk_s"][1:] or run["chunk_s"]
        keep(distilled=run, helios_distilled_fps=run["frames"] / run["job_s"], helios_distilled_s_per_chunk=statistics.median(steady), peak_reserved_gib=run.get("peak_reserved_gib"))
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
