"""Batches: good and bad jobs in one file, models loaded once per model, existing outputs skipped, a summary, exit codes, workers."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOLDEN, fpgen_env, fpgen_waiting, run_fpgen
from helpers import read_until
from safetensors.torch import load_file

from fpgen.batch import BatchJob
from fpgen.errors import ExitCode, InputError
from fpgen.spec import JobSpec
from fpgen.workers import next_job, plan_workers
from fpgen.video import read_mp4

IMAGE = str(GOLDEN / "input.png")
DEFAULTS = ["--steps", "1", "--size", "16x16", "--seconds", "1.2", "--device", "cpu"]  # every line's defaults, from the command line


@pytest.mark.slow
def test_jsonl_batch_mixed_jobs(hf_cache, tmp_path):
    (tmp_path / "exists.mp4").write_bytes(b"mine")
    lines = [
        {"image": IMAGE, "prompt": "a man walks", "output": "a.mp4"},
        {"image": IMAGE, "sede": 3, "output": "typo.mp4"},
        {"image": "missing.png", "output": "missing.mp4"},
        {"image": IMAGE, "prompt": "a man waves", "model": "framepack-f1", "output": "b.mp4", "seed": 5},
        {"image": IMAGE, "prompt": "0s: a man walks | 0.6s: he sits", "output": "c.mp4", "seconds": 2.4},
        "{not json",
        {"image": IMAGE, "output": "exists.mp4"},
    ]
    (tmp_path / "jobs.jsonl").write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    proc = run_fpgen("generate", "--jobs", "jobs.jsonl", *DEFAULTS, cache=hf_cache, cwd=tmp_path)
    assert proc.returncode == ExitCode.FAILED, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("loading framepack ...") == 1 and proc.stderr.count("loading framepack-f1 ...") == 1  # once per model
    assert proc.stdout.strip().splitlines()[-1] == "3 done, 1 skipped, 3 failed"  # under the summary table
    assert proc.stderr.strip().splitlines()[-1] == "error: 3 of 7 job(s) failed; see the summary"
    assert read_mp4(tmp_path / "a.mp4")[0].shape[0] == 37 and read_mp4(tmp_path / "c.mp4")[0].shape[0] == 73
    assert read_mp4(tmp_path / "b.mp4")[0].shape[0] == 37
    assert (tmp_path / "exists.mp4").read_bytes() == b"mine"  # never overwritten

    again = run_fpgen("generate", "--jobs", "jobs.jsonl", *DEFAULTS, "--json", cache=hf_cache, cwd=tmp_path)
    assert again.returncode == ExitCode.FAILED
    summary = json.loads(again.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 4, 3)
    assert [job["status"] for job in summary["jobs"]] == ["skipped", "failed", "failed", "skipped", "skipped", "failed", "skipped"]
    assert [job["line"] for job in summary["jobs"]] == list(range(1, 8))
    errors = [job["error"] for job in summary["jobs"]]
    assert errors[1] == "unknown field 'sede'; did you mean 'seed'?" and errors[2].startswith("image not found") and "not valid JSON" in errors[5]
    assert [job["exit_code"] for job in summary["jobs"] if job["status"] == "failed"] == [ExitCode.USAGE] * 3
    assert "loading" not in again.stderr  # nothing to make, no model loaded


@pytest.mark.slow
def test_csv_batch_with_overwrite(hf_cache, tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "face.png").write_bytes((GOLDEN / "input.png").read_bytes())
    (tmp_path / "old.mp4").write_bytes(b"old")
    (tmp_path / "jobs.csv").write_text(
        "image,prompt,seed,output,overwrite,teacache\n"
        "pictures/face.png,a man walks,7,one.mp4,,false\n"  # paths are relative to the jobs file
        'pictures/face.png,"a man, walking",8,old.mp4,true,no\n'
    )
    proc = run_fpgen("generate", "--jobs", tmp_path / "jobs.csv", *DEFAULTS, "--json", "--trust-jobs", cache=hf_cache)  # the file may overwrite
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [job["status"] for job in summary["jobs"]] == ["done", "done"] and [job["line"] for job in summary["jobs"]] == [2, 3]
    assert read_mp4(tmp_path / "old.mp4")[0].shape[0] == 37  # replaced, as that line asked
    info = json.loads(run_fpgen("info", tmp_path / "old.mp4", "--json").stdout)
    assert (info["job"]["prompt"], info["job"]["seed"], info["job"]["steps"]) == ("a man, walking", 8, 1)


@pytest.mark.slow
def test_two_cpu_workers(hf_cache, tmp_path):
    """``--device cpu --gpus 2`` runs the multi-GPU path with CPU workers: each job once, by either worker, as one process makes it."""
    env = fpgen_env(hf_cache, OMP_NUM_THREADS="1")  # the same threads in both runs, for identical results
    for name in ("one", "two"):
        lines = [{"image": IMAGE, "prompt": "a man walks", "seed": i, "output": f"{name}{i}.mp4", "save_latents": f"{name}{i}.safetensors"} for i in range(4)]
        lines[1]["seconds"] = 2.4  # uneven jobs
        (tmp_path / f"{name}.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    one = run_fpgen("generate", "--jobs", "one.jsonl", *DEFAULTS, "--json", env=env, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = run_fpgen("generate", "--jobs", "two.jsonl", *DEFAULTS, "--gpus", "2", "--json", env=env, cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    summary = json.loads(two.stdout)
    assert [job["status"] for job in summary["jobs"]] == ["done"] * 4 and summary["done"] == 4
    assert set(summary["workers"]) == {"cpu:0", "cpu:1"} and sum(summary["workers"].values()) == 4  # both took jobs
    assert {job["worker"] for job in summary["jobs"]} == {"cpu:0", "cpu:1"} and json.loads(one.stdout)["workers"] == {}
    made = sorted(path.name for path in tmp_path.glob("two*"))
    assert made == sorted(["two.jsonl"] + [f"two{i}{ext}" for i in range(4) for ext in (".mp4", ".json", ".safetensors")])  # no job folders left
    for i in range(4):
        assert torch.equal(load_file(tmp_path / f"one{i}.safetensors")["latents"], load_file(tmp_path / f"two{i}.safetensors")["latents"])
        assert np.array_equal(read_mp4(tmp_path / f"one{i}.mp4")[0], read_mp4(tmp_path / f"two{i}.mp4")[0])

    again = run_fpgen("generate", "--jobs", "two.jsonl", *DEFAULTS, "--gpus", "2", "--json", env=env, cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 4 and "loading" not in again.stderr


def test_worker_plan_and_hand_out(monkeypatch):
    """Each GPU worker sees one of the GPUs the parent sees; CPU workers split the cores; a worker keeps to its loaded models."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    assert [(w.label, w.env) for w in plan_workers("all", "auto")] == [(f"cuda:{i}", {"CUDA_VISIBLE_DEVICES": gpu}) for i, gpu in enumerate("467")]
    assert len(plan_workers("2", "cuda")) == 2
    with pytest.raises(InputError, match="PyTorch sees 3 GPU"):
        plan_workers("4", "auto")
    with pytest.raises(InputError, match="names one device"):
        plan_workers("2", "cuda:1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [(w.label, w.env, w.threads) for w in plan_workers("2", "cpu")] == [("cpu:0", {}, 4), ("cpu:1", {}, 4)]

    todo = [BatchJob(line, {}, JobSpec(Path(f"{line}.mp4"), model=model)) for line, model in enumerate(["framepack", "framepack", "framepack-f1"])]
    assert next_job(todo, todo[2].spec.models_key()).line == 2  # the loaded model's job first
    assert [next_job(todo, None).line for _ in range(2)] == [0, 1] and next_job(todo, None) is None


@pytest.mark.slow
def test_workers_stop_resumably(hf_cache, tmp_path):
    """SIGTERM (or Ctrl-C) to the parent stops every worker's job the way it stops one job; the same command continues them.

    Each worker waits for the signal right after its first section (stop_probe.py), so the signal always finds both jobs
    unfinished, however busy the machine is.
    """
    lines = [{"image": IMAGE, "seed": i, "output": f"w{i}.mp4"} for i in range(2)]
    (tmp_path / "jobs.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    args = ["generate", "--jobs", "jobs.jsonl", "--steps", "1", "--size", "16x16", "--seconds", "2.4", "--device", "cpu", "--gpus", "2"]  # 2 sections each
    env = fpgen_env(hf_cache, OMP_NUM_THREADS="1")
    with fpgen_waiting(*args, wait_after="section 1/2", env=env, cwd=tmp_path) as proc:
        seen = read_until(proc.stderr, "[cpu:0] section 1/2", "[cpu:1] section 1/2")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == ExitCode.INTERRUPTED
        rest = proc.stderr.read()
        assert "2 interrupted" in proc.stdout.read() and "error: batch interrupted" in rest and "Traceback" not in rest
    assert "%|" not in "".join(seen) + rest  # no library's loading bar: drawn without a newline, it swallows the other worker's line
    assert all((tmp_path / f"w{i}.mp4.job").is_dir() and not (tmp_path / f"w{i}.mp4").exists() for i in range(2))
    again = run_fpgen(*args, "--json", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [job["status"] for job in json.loads(again.stdout)["jobs"]] == ["resumed", "resumed"]
    assert all(read_mp4(tmp_path / f"w{i}.mp4")[0].shape[0] == 73 for i in range(2))
