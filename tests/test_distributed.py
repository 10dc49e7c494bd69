"""`fpgen finetune` under two gloo processes on the CPU: the same step as one process, and a checkpoint that resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fpgen_env
from safetensors.torch import load_file
from synthetic import make_dataset

from fpgen.training.trainer import LORA_FILE

DRIVER = Path(__file__).with_name("distributed_step.py")
COMMON = ("--size", "64x64", "--window", "3", "--device", "cpu", "--rank", "4", "--lr", "1e-3", "--batch-size", "2", "--save-every", "2", "--json")


def launch(cache: Path, processes: int, gradients: Path, *args) -> dict:
    """The driver (`fpgen finetune` that saves each step's gradients) in one process, or under torchrun in several."""
    gradients.mkdir(parents=True, exist_ok=True)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    command = [sys.executable, *launcher, str(DRIVER), "finetune", *map(str, args), *COMMON]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=fpgen_env(cache, OMP_NUM_THREADS="1", FPGEN_GRADIENTS=str(gradients)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def gradients(folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {int(f.stem.split("-")[1]): load_file(str(f)) for f in sorted(folder.glob("step-*.safetensors"))}


def losses(output: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (output / "log.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(hf_cache, tmp_path_factory):
    """One process at --grad-accum 2 for 4 steps; two processes at --grad-accum 1 for 2 steps, then --resume to 4."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "clips"
    make_dataset(data, 4, 25)
    one = launch(hf_cache, 1, root / "grads-one", data, "-o", root / "one", "--grad-accum", "2", "--max-steps", "4")
    two = launch(hf_cache, 2, root / "grads-two", data, "-o", root / "two", "--grad-accum", "1", "--max-steps", "2")
    resumed = launch(hf_cache, 2, root / "grads-two", data, "-o", root / "two", "--grad-accum", "1", "--max-steps", "4", "--resume")
    alone = launch(hf_cache, 1, root / "grads-alone", data, "-o", root / "alone", "--grad-accum", "1", "--max-steps", "1")
    return root, {"one": one, "two": two, "resumed": resumed, "alone": alone}


def test_two_processes_compute_the_step_of_one(runs):
    """Every LoRA weight's full gradient, at each of the 4 steps (2 before and 2 after the resume), matches the one-process run's."""
    root, _ = runs
    one, two, alone = gradients(root / "grads-one"), gradients(root / "grads-two"), gradients(root / "grads-alone")
    assert sorted(one) == sorted(two) == [0, 1, 2, 3]
    names = sorted(one[0])
    assert len(names) == 68 and all(".lora_A." in n or ".lora_B." in n for n in names)  # 34 adapted linears x (A, B)
    for step in one:
        assert sorted(two[step]) == names
        for name in names:
            torch.testing.assert_close(two[step][name], one[step][name], rtol=1e-6, atol=1e-9, msg=lambda m: f"step {step}, {name}: {m}")
    assert all(one[1][n].count_nonzero() > 0 for n in names)  # every weight learns (at step 0 the zero-initialised B stops A's gradient)
    # The comparison sees the second process: one micro-batch alone gives another gradient.
    differences = [(alone[0][n] - one[0][n]).abs().max() / one[0][n].abs().max() for n in names if one[0][n].abs().max() > 0]
    assert min(differences) > 1e-2, min(differences)


def test_two_process_run_resumes_like_one_run(runs):
    root, results = runs
    assert (results["two"]["steps"], results["resumed"]["steps"]) == (2, 4)
    assert sorted(p.name for p in (root / "two" / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert not (root / "two" / "checkpoints" / "step-0000002" / "model.safetensors").exists()  # the LoRA only, not the base
    two, one = losses(root / "two"), losses(root / "one")
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    assert two == pytest.approx(one, rel=1e-6)
    one, two = load_file(str(root / "one" / LORA_FILE)), load_file(str(root / "two" / LORA_FILE))
    assert one.keys() == two.keys() and len(one) == 68
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-6, atol=1e-9)
