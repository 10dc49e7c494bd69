"""A small model under FSDP2 on CPU processes (gloo) that writes and reads fpgen's sharded checkpoint.

    torchrun --nproc_per_node 2 fsdp_checkpoint.py save FOLDER     # 2 steps, checkpoint, 2 more steps
    torchrun --nproc_per_node N fsdp_checkpoint.py resume FOLDER   # read the checkpoint, 2 more steps (N = 1: no FSDP, plain python)

Each writes the whole weights and optimizer state (gathered) at the points the test compares, as
``FOLDER/<what>.safetensors``. accelerate runs FSDP on GPUs only, so this drives the checkpoint
functions with torch's ``fully_shard`` directly; ``fpgen finetune`` under FSDP is run on the GPU box.
"""

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.fsdp import fully_shard

from fpgen.parallel import leave_group
from fpgen.training.checkpoint import _read_shards, _split_optimizer_state, _write_shards

mode, folder = sys.argv[1], Path(sys.argv[2])
distributed = "WORLD_SIZE" in os.environ
if distributed:
    dist.init_process_group("gloo")
rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))  # odd sizes: uneven shards
if distributed:
    for module in (model[0], model[2], model):  # each linear its own unit, then the rest
        fully_shard(module)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
trainee = SimpleNamespace(objective=model, optimizer=SimpleNamespace(optimizer=optimizer))


def train(first: int, count: int) -> None:
    """Steps on a batch of 8 drawn from the step number, shared out over the processes (FSDP averages their gradients)."""
    for step in range(first, first + count):
        batch = torch.randn(8, 7, generator=torch.Generator().manual_seed(step)).tensor_split(world)[rank]
        model(batch).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def write_whole(name: str) -> None:
    weights, state = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))  # gathered on every process
    if rank == 0:
        tensors = {f"weight/{k}": v for k, v in weights.items()} | {f"optimizer/{k}": v for k, v in _split_optimizer_state(state)[0].items()}
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(folder / f"{name}.safetensors"))


if mode == "save":
    train(0, 2)
    (folder / "checkpoint").mkdir(parents=True, exist_ok=True)
    _write_shards(folder / "checkpoint", trainee, rank == 0)
    write_whole("saved")
    train(2, 2)
    write_whole("straight")
else:
    _read_shards(folder / "checkpoint", trainee)
    write_whole(f"loaded-{world}")
    train(2, 2)
    write_whole(f"resumed-{world}")
if distributed:
    leave_group()
