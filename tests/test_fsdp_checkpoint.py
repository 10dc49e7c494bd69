"""FSDP's sharded checkpoint: each process writes its pieces, and any number of processes reads them back exactly."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fpgen_env
from safetensors import safe_open
from safetensors.torch import load_file

from fpgen.training.checkpoint import MODEL_SHARDS, OPTIMIZER_GROUPS, OPTIMIZER_SHARDS, check_checkpoint

DRIVER = Path(__file__).with_name("fsdp_checkpoint.py")


def run(mode: str, folder: Path, processes: int) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    proc = subprocess.run([sys.executable, *launcher, str(DRIVER), mode, str(folder)], capture_output=True, text=True, timeout=300, env=fpgen_env(None, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two processes train 2 steps, checkpoint and train 2 more; then two processes, and one, resume from the checkpoint."""
    folder = tmp_path_factory.mktemp("fsdp")
    run("save", folder, 2)
    run("resume", folder, 2)
    run("resume", folder, 1)
    return folder


def whole(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / f"{name}.safetensors"))


def test_each_process_writes_its_own_pieces(runs):
    checkpoint = runs / "checkpoint"
    for shards, whole_count in ((MODEL_SHARDS, 7 * 5 + 5 + 5 * 3 + 3), (OPTIMIZER_SHARDS, 2 * (7 * 5 + 5 + 5 * 3 + 3) + 4)):
        files = sorted((checkpoint / shards).iterdir())
        assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files)
        counts = []
        for file in files:
            with safe_open(str(file), "pt") as f:
                counts.append(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))
        assert sum(counts) == whole_count and max(counts) < whole_count  # nothing written twice, nothing gathered
    assert (checkpoint / OPTIMIZER_GROUPS).is_file()
    (checkpoint / "state.json").write_text("{}")
    check_checkpoint(checkpoint)  # tensors and JSON only: accepted as fpgen's


@pytest.mark.parametrize("processes", [2, 1])
def test_any_process_count_reads_the_checkpoint_exactly(runs, processes):
    saved, loaded = whole(runs, "saved"), whole(runs, f"loaded-{processes}")
    assert saved.keys() == loaded.keys() and len(saved) == 4 + 4 * 3  # 4 weights; per weight two moments and a step
    for name in saved:
        assert torch.equal(loaded[name], saved[name]), name


def test_a_resumed_run_continues_as_if_never_stopped(runs):
    straight, resumed, alone = whole(runs, "straight"), whole(runs, "resumed-2"), whole(runs, "resumed-1")
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name  # the same processes: bit for bit
        torch.testing.assert_close(alone[name], straight[name], rtol=1e-5, atol=1e-7)  # one process: the same steps, summed in another order
    assert not torch.equal(straight["weight/0.weight"], whole(runs, "saved")["weight/0.weight"])  # the steps after the checkpoint changed the weights
