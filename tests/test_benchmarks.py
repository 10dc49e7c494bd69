"""The GPU job benchmark's CPU smoke run: it goes through fpgen's API and measures what it says it does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import HUB

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_job.py"


def golden_assets(folder: Path) -> Path:
    """The tokenizers and SigLIP processor the benchmark writes beside its random models, from the golden repos."""
    for source in (HUB / "hunyuanvideo-community/HunyuanVideo/tokenizer", HUB / "hunyuanvideo-community/HunyuanVideo/tokenizer_2", HUB / "lllyasviel/flux_redux_bfl/feature_extractor"):
        shutil.copytree(source, folder / source.name)
    return folder


def test_bench_job_resident_runs_tiny(tmp_path):
    out = tmp_path / "out" / "resident.json"
    command = [sys.executable, str(SCRIPT), "--part", "resident", "--tiny", "--models", str(tmp_path / "models"), "--assets", str(golden_assets(tmp_path / "assets")),
               "--work", str(tmp_path / "work"), "--size", "32x32", "--seconds", "5", "--steps", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    exact, baseline, vae = result["exact"], result["baseline"], result["vae"]
    assert (exact["frames"], exact["transformer_passes"], baseline["transformer_passes"]) == (145, [1, 1, 1, 1], [1, 1, 1, 1])
    # on the CPU the exact mode is the official arithmetic (SDPA, eager): the step and the job match the baseline bit for bit
    assert result["attention"]["backend"] == "sdpa"
    assert result["exact_step"]["rel_l2_vs_baseline"] == 0.0 and exact["latents_rel_l2_vs_baseline"] == 0.0
    # the loader's tile cache served the exact job: 5 of a 4-section job's 22 temporal tiles (the middle sections' overlaps)
    assert (exact["vae_tiles_reused"], exact["vae_tiles_decoded"]) == (5, 17)
    # the baseline's VAE had no cache: the reuse attached to it afterwards starts empty, and changes no frame
    assert (vae["sections"], vae["tiles_reused"], vae["tiles_decoded"], vae["identical"]) == (4, 5, 17, True)
    assert result["warm_start"]["warm_start_s"] > 0 and result["warm_start"]["transformer_load_s"] > 0
    assert (out.parent / "exact_latents.safetensors").is_file()
