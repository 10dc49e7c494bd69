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

from fpgen.errors import ExitCode
from fpgen.training.checkpoint import LORA_FILE

DRIVER = Path(__file__).with_name("distributed_step.py")
COMMON = ("--size", "64x64", "--window", "3", "--device", "cpu", "--rank", "4", "--lr", "1e-3", "--batch-size", "2", "--save-every", "2", "--json")


def launch(cache: Path, processes: int, gradients: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    """The driver (`fpgen finetune` that saves each step's gradients) in one process, or under torchrun in several."""
    gradients.mkdir(parents=True, exist_ok=True)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    command = [sys.executable, *launcher, str(DRIVER), "finetune", *map(str, args), *COMMON]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=fpgen_env(cache, OMP_NUM_THREADS="1", FPGEN_GRADIENTS=str(gradients)))
    assert proc.returncode == 0 or not check, proc.stderr[-3000:]
    return proc


def gradients(folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {int(f.stem.split("-")[1]): load_file(str(f)) for f in sorted(folder.glob("step-*.safetensors"))}


def losses(output: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (output / "log.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(hf_cache, tmp_path_factory) -> Path:
    """One process at --grad-accum 2 for 6 steps; the same run split: 2 steps in two processes at --grad-accum 1,
    --resume to 4 in two processes, --resume to 6 in one process at --grad-accum 2. And one step of one micro-batch."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "clips"
    make_dataset(data, 4, 25)
    launch(hf_cache, 1, root / "grads-one", data, "-o", root / "one", "--grad-accum", "2", "--max-steps", "6")
    launch(hf_cache, 2, root / "grads-split", data, "-o", root / "split", "--grad-accum", "1", "--max-steps", "2")
    launch(hf_cache, 2, root / "grads-split", data, "-o", root / "split", "--grad-accum", "1", "--max-steps", "4", "--resume")
    launch(hf_cache, 1, root / "grads-split", data, "-o", root / "split", "--grad-accum", "2", "--max-steps", "6", "--resume")
    launch(hf_cache, 1, root / "grads-alone", data, "-o", root / "alone", "--grad-accum", "1", "--max-steps", "1")
    return root


def test_two_processes_compute_the_step_of_one(runs):
    """Every LoRA weight's full gradient, at each of the 6 steps, matches the one-process run's.

    Steps 0-3 ran in two processes (with a resume after step 1), steps 4-5 in one process resumed from their checkpoint.
    """
    one, split, alone = gradients(runs / "grads-one"), gradients(runs / "grads-split"), gradients(runs / "grads-alone")
    assert sorted(one) == sorted(split) == list(range(6))
    names = sorted(one[0])
    assert len(names) == 68 and all(".lora_A." in n or ".lora_B." in n for n in names)  # 34 adapted linears x (A, B)
    for step in one:
        assert sorted(split[step]) == names
        for name in names:
            torch.testing.assert_close(split[step][name], one[step][name], rtol=1e-6, atol=1e-9, msg=lambda m: f"step {step}, {name}: {m}")
    assert all(one[1][n].count_nonzero() > 0 for n in names)  # every weight learns (at step 0 the zero-initialised B stops A's gradient)
    # The comparison sees the second process: one micro-batch alone gives another gradient.
    differences = [(alone[0][n] - one[0][n]).abs().max() / one[0][n].abs().max() for n in names if one[0][n].abs().max() > 0]
    assert min(differences) > 1e-2, min(differences)


def test_checkpoints_resume_on_another_process_count(runs, hf_cache):
    """The split run ends where the straight one does: the same losses and LoRA; a resume with another batch is refused."""
    assert sorted(p.name for p in (runs / "split" / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    assert not list((runs / "split" / "checkpoints" / "step-0000004").glob("model*"))  # the LoRA only, not the base
    split, one = losses(runs / "split"), losses(runs / "one")
    assert sorted(split) == sorted(one) == list(range(1, 7))
    assert split == pytest.approx(one, rel=1e-6)
    one, split = load_file(str(runs / "one" / LORA_FILE)), load_file(str(runs / "split" / LORA_FILE))
    assert one.keys() == split.keys() and len(one) == 68
    for name in one:
        torch.testing.assert_close(split[name], one[name], rtol=1e-6, atol=1e-9)

    args = (runs / "clips", "-o", runs / "split", "--max-steps", "8", "--resume")
    proc = launch(hf_cache, 1, runs / "grads-refused", *args, "--grad-accum", "1", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Loading" not in line]
    assert proc.returncode == ExitCode.USAGE and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1] == "error: the checkpoint's steps take 2 micro-batches (processes x --grad-accum), this run's 1 x 1; pass --grad-accum 2 to continue the same run"


def test_two_hosts_train_the_step_of_one_process(runs, hf_cache):
    """Two "hosts" (torchrun --nnodes 2 on 127.0.0.1, one process each, gloo), sharing the clips and the output folder
    as hosts share storage: their steps equal the one-process run's (the same gradients and losses)."""
    from fpgen.parallel import free_port

    port, output, grads = free_port(), runs / "hosts", runs / "grads-hosts"
    grads.mkdir()
    hosts = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
             "--master_port", str(port), str(DRIVER), "finetune", str(runs / "clips"), "-o", str(output), "--grad-accum", "1", "--max-steps", "2", *COMMON],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=fpgen_env(hf_cache, OMP_NUM_THREADS="1", FPGEN_GRADIENTS=str(grads)),
        )  # fmt: skip
        for rank in (0, 1)
    ]
    done = [host.communicate(timeout=300) for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], [stderr[-3000:] for _, stderr in done]
    one, two = gradients(runs / "grads-one"), gradients(grads)
    assert sorted(two) == [0, 1]
    for step in two:
        for name in one[step]:
            torch.testing.assert_close(two[step][name], one[step][name], rtol=1e-6, atol=1e-9, msg=lambda m: f"step {step}, {name}: {m}")
    assert len((output / "log.jsonl").read_text().splitlines()) == 2  # one host writes the run's files
    assert losses(output) == pytest.approx({step: loss for step, loss in losses(runs / "one").items() if step <= 2}, rel=1e-6)
