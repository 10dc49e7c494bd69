"""The GPU job benchmark's CPU smoke run: it goes through fpgen's API and measures what it says it does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HUB

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_job.py"
sys.path.insert(0, str(SCRIPT.parent))  # the benchmarks' own functions


def golden_assets(folder: Path) -> Path:
    """The tokenizers and SigLIP processor the benchmark writes beside its random models, from the golden repos."""
    for source in (HUB / "hunyuanvideo-community/HunyuanVideo/tokenizer", HUB / "hunyuanvideo-community/HunyuanVideo/tokenizer_2", HUB / "lllyasviel/flux_redux_bfl/feature_extractor"):
        shutil.copytree(source, folder / source.name)
    return folder


def run_bench(tmp_path: Path, part: str, steps: int, *options: str) -> dict:
    """``bench_job.py --part part`` on tiny random models (5 s at 32x32), fpgen's cache folder in ``tmp_path``; its results."""
    out = tmp_path / "out" / f"{part}.json"
    command = [sys.executable, str(SCRIPT), "--part", part, "--tiny", "--models", str(tmp_path / "models"), "--assets", str(golden_assets(tmp_path / "assets")),
               "--work", str(tmp_path / "work"), "--size", "32x32", "--seconds", "5", "--steps", str(steps), "--out", str(out), *options]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_bench_job_resident_runs_tiny(tmp_path):
    result = run_bench(tmp_path, "resident", 1)
    out = tmp_path / "out" / "resident.json"
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


CACHES = ("none", "magcache", "fbcache", "teacache")


def test_bench_job_stepcaches_runs_tiny(tmp_path):
    steps = 8
    result = run_bench(tmp_path, "stepcaches", steps)
    # MagCache calibrated first, on the loaded weights, over a 2-s video (2 sections) and stored where --step-cache magcache reads it
    calibration = result["magcache_calibration"]
    assert (calibration["sections"], len(calibration["ratios"]), calibration["ratios"][0]) == (2, steps, 1.0)
    assert Path(calibration["path"]).parent == tmp_path / "cache" / "fpgen" / "magcache" and result["magcache_calibrate_s"] > 0
    assert result["stepcache_none_passes_computed"] == [steps] * 4
    for cache in CACHES:
        passes = result[f"stepcache_{cache}_passes_computed"]
        assert len(passes) == 4 and all(2 <= p <= steps for p in passes), (cache, passes)  # a section's first and last steps always compute
        assert result[f"stepcache_{cache}_s_per_frame"] > 0 and result[f"stepcache_{cache}_job"]["frames"] == 145
        assert (tmp_path / "out" / f"stepcache_{cache}_latents.safetensors").is_file()
        if cache != "none":  # a cache that computed every pass gave the no-cache latents bit for bit; one that skipped, close ones
            error = result[f"stepcache_{cache}_latents_rel_l2"]
            assert error == 0.0 if passes == [steps] * 4 else 0 < error < 0.1, (cache, passes, error)
    # on the tiny models MagCache (with its calibrated ratios) and TeaCache skip in every section
    assert all(p < steps for cache in ("magcache", "teacache") for p in result[f"stepcache_{cache}_passes_computed"])
    # the fast step is timed at the jobs' prompt length (its profile needs CUDA); no stage was skipped or failed
    assert result["stepcache_none_job"]["prompt_tokens"] > 0 and result["fast_step"]["s_per_step"] > 0 and "fast_profile" not in result
    assert not any(key.endswith(("_skipped", "_error")) for key in result)


def test_bench_job_stepcaches_runs_the_caches_asked_for(tmp_path):
    """``--caches teacache``: no MagCache calibration, the no-cache job, then TeaCache alone."""
    result = run_bench(tmp_path, "stepcaches", 4, "--caches", "teacache")
    ran = {key.removeprefix("stepcache_").removesuffix("_job") for key in result if key.startswith("stepcache_") and key.endswith("_job")}
    assert ran == {"none", "teacache"} and "magcache_calibration" not in result


def test_bench_job_stepcaches_budget_skips_the_optional_stages(tmp_path):
    result = run_bench(tmp_path, "stepcaches", 2, "--budget-s", "0")
    assert result["stepcache_none_passes_computed"] == [2] * 4 and result["magcache_calibrate_s"] > 0  # always run
    assert [key for key in result if key.endswith("_skipped")] == ["magcache_skipped", "fbcache_skipped", "profile_skipped", "teacache_skipped"]
    assert not any(f"stepcache_{cache}_s_per_frame" in result for cache in CACHES[1:]) and "fast_step" not in result


@pytest.mark.parametrize(("kernel", "kind"), [  # names from the H200 fast-step profile (results/h200-stepcaches-2026-12-01.json)
    ("void cutlass::device_kernel<flash::enable_sm90<flash::FlashAttnFwdSm90<flash::CollectiveMa", "attention"),
    ("nvjet_sm90_qqtst_128x128_128x6_1x1_h_bz_coopA_algo2_ovscale_TNT", "gemm"),
    ("triton_red_fused__scaled_mm__to_copy_abs_add_amax_cat_clamp_div_gelu_mean_slice_t_view_17", "quantize"),
    ("triton_poi_fused__to_copy_add_mean_mul_neg_pow_rsqrt_slice_stack_unbind_view_4", "other"),
    ("triton_red_fused_abs_amax_6", "quantize"),
])  # fmt: skip
def test_profile_groups_inductor_kernels_by_what_they_do(kernel, kind):
    """An inductor kernel named after the FP8 matmul it feeds is quantization work, not a GEMM."""
    from bench_job import kernel_kind

    assert kernel_kind(kernel) == kind


def test_bench_helios_profiles_a_tiny_job(tmp_path):
    """``bench_helios.py --tiny --profile`` on the CPU: the profiled chunks have their three pyramid passes and a timed
    decode inside the time after them; the "fast" part falls back to exact without CUDA, so its latents are the same."""
    out = tmp_path / "helios.json"
    command = [sys.executable, str(SCRIPT.with_name("bench_helios.py")), "--tiny", "--models", str(tmp_path / "models"), "--part", "write", "distilled", "fast", "--profile", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["distilled"]["frames"] == 66 and result["distilled"]["passes"] == [3, 3]
    chunks = result["distilled"]["profile"]["chunks"]
    assert len(chunks) == 2 and all(len(chunk["passes_s"]) == 3 for chunk in chunks)
    assert all(0 < chunk["decode_s"] <= chunk["after_s"] for chunk in chunks)
    assert result["fast"]["mode"] == "exact" and result["fast_rel_l2_vs_exact"] == 0.0


def test_multi_gpu_plans_every_count_and_reads_scaling_per_count():
    """``benchmarks/multi_gpu.py`` for issue 19: the split stages from two GPUs on, every stage per count, and the
    scaling keys against one GPU (the goals: LoRA samples/s and warm jobs x N, a split pass's share of one GPU's)."""
    import multi_gpu

    assert multi_gpu.default_counts(4) == [1, 2, 4] and multi_gpu.default_counts(8) == [1, 2, 4, 8] and multi_gpu.default_counts(3) == [1, 2]
    plan = multi_gpu.stage_plan([1, 2, 4], {"train", "cp_step", "fsdp"})
    assert plan == [("fsdp", 2), ("fsdp", 4), ("train", 1), ("cp_step", 2), ("train", 2), ("cp_step", 4), ("train", 4)]
    results = {
        "train": {"1": {"samples_per_s": 0.2}, "2": {"samples_per_s": 0.4}, "4": {"samples_per_s": 0.76}},
        "generate": {"1": {"later_jobs_s_per_frame_per_gpu": 0.36}, "4": {"later_jobs_s_per_frame_per_gpu": 0.4}},
        "cp_step": {"2": {"one_gpu_s_per_step": 1.0, "split_s_per_step": 0.57}, "4": {"one_gpu_s_per_step": 1.0, "split_s_per_step": 0.3, "split_step_profile": {"nccl_share": 0.1}}},
        "fsdp": {"4": {"full_size": {"s_per_step": 9.0}}},
    }
    keys = multi_gpu.headline(results)
    assert keys["gpus"] == [1, 2, 4]
    assert keys["train_lora_scaling"] == {"1": 1.0, "2": 2.0, "4": 3.8}
    assert keys["jobs_warm_throughput_scaling"] == {"1": 1.0, "4": 3.6}  # 4 x 0.36 / 0.4
    assert keys["cp_step_vs_one_gpu"] == {"2": 0.57, "4": 0.3} and keys["cp_nccl_share"] == {"2": None, "4": 0.1}
    assert keys["train_full_fsdp_s_per_step"] == {"4": 9.0} and keys["one_gpu_job_s_per_frame"] == 0.36
