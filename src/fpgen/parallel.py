"""One video over several GPUs: every transformer pass split by sequence (Ulysses context parallelism).

Each process holds the whole model and runs the whole job on the same numbers (encoders, sampler,
VAE); only the 60 blocks and the VAE decoder's tiles (``fpgen.vae_split``) are shared out. The
blocks' tokens, [history, window] and the text, are each cut into N contiguous pieces; each process
runs the blocks on its pieces, and inside every attention diffusers' Ulysses all-to-all
(``ContextParallelConfig(ulysses_anything=True)``, which allows uneven pieces) trades the
sequence split for a head split, so each process attends over the whole sequence for 1/N of the
heads. The image tokens are all-gathered after the last block, so every process leaves the blocks
with the same output and the processes stay in step with no other messages but the decode's
all_gather. Only the first process writes files.

Why not the model's ``_cp_plan`` (diffusers' ``enable_parallelism``): fpgen calls the blocks itself
(``transformer.packed_forward``) and the plan's hooks split the model's own ``forward`` inputs.
So the split wraps ``BlockStack.run_blocks`` (innermost: step caches such as TeaCache above it see
the whole sequence and decide alike in every process), and only the blocks' attention processors
get diffusers' parallel config (the text refiner attends over the whole text in every process).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.distributed as dist

from fpgen.errors import InputError
from fpgen.terminal import library_bars_off
from fpgen.workers import ignoring, plan_workers

TIMEOUT = timedelta(minutes=10)  # a process that died leaves the others waiting this long at most


def my_piece(x: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """This process's contiguous piece of ``x`` along ``dim`` (``tensor_split``: the first pieces one longer)."""
    return x.tensor_split(world, dim)[rank]


def gather_pieces(piece: torch.Tensor, length: int, dim: int, world: int, group=None) -> torch.Tensor:
    """Every process's ``my_piece`` of a ``length``-long tensor joined again (pieces padded to one size: gloo and NCCL gather equal sizes)."""
    sizes = [len(part) for part in torch.arange(length).tensor_split(world)]
    padded = torch.cat([piece, piece.new_zeros(*piece.shape[:dim], sizes[0] - piece.shape[dim], *piece.shape[dim + 1 :])], dim)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous(), group=group)
    return torch.cat([part.narrow(dim, 0, size) for part, size in zip(gathered, sizes)], dim)


class SequenceSplit:
    """Runs the blocks on this process's share of the tokens and all-gathers the image tokens after them.

    Attach with ``split_sequence(blocks, device)``; it wraps ``blocks.run_blocks``.
    """

    def __init__(self, mesh):
        self.group, self.rank, self.world = mesh.get_group(), mesh.get_local_rank(), mesh.size()

    def __call__(self, run, hidden, context, temb, attention_mask, rope):
        if min(hidden.shape[1], context.shape[1]) < self.world:
            raise InputError(f"a transformer pass of {hidden.shape[1]} image and {context.shape[1]} text tokens cannot be split over {self.world} processes", "use fewer GPUs")
        piece = partial(my_piece, rank=self.rank, world=self.world)
        mask = None
        if attention_mask is not None:  # (B, 1, 1, image + text): the same pieces, in the order the all-to-all joins them
            mask = torch.cat([piece(attention_mask[..., : hidden.shape[1]], -1), piece(attention_mask[..., hidden.shape[1] :], -1)], dim=-1)
        out = run(piece(hidden, 1), piece(context, 1), temb, mask, (piece(rope[0], 0), piece(rope[1], 0)))
        return gather_pieces(out, hidden.shape[1], 1, self.world, self.group)


def split_sequence(blocks, device: torch.device) -> None:
    """Split ``blocks``' passes (computed on ``device``) over the processes of the default group (``torch.distributed`` initialised)."""
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = dist.device_mesh.init_device_mesh(device.type, (1, world), mesh_dim_names=("ring", "ulysses"))
    config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=world, ulysses_anything=True))
    config.setup(rank, world, device, mesh=mesh)
    for block in (*blocks.transformer_blocks, *blocks.single_transformer_blocks):
        block.attn.processor._parallel_config = config
    blocks.run_blocks = partial(SequenceSplit(mesh["ulysses"]), blocks.run_blocks)


def process_count(gpus: str, device: str) -> int:
    """``--gpus`` for one video: the processes to split it over (GPUs, or with ``--device cpu`` gloo processes)."""
    return len(plan_workers(gpus, device))


def shares_heads(heads: int, processes: int) -> bool:
    """Whether diffusers' Ulysses all-to-all can share ``heads`` attention heads over ``processes``: it gives each
    process ceil(heads / processes) of them, padding the last process's, and needs that process to keep a real one."""
    per_process = -(-heads // processes)
    return per_process * (processes - 1) < heads


def check_head_split(processes: int, transformer: Path) -> None:
    """Refuse, before any model loads, a process count the transformer's attention heads cannot be shared over."""
    heads = json.loads((transformer / "config.json").read_text()).get("num_attention_heads")
    if heads is not None and not shares_heads(heads, processes):
        counts = [str(n) for n in range(2, heads + 1) if shares_heads(heads, n)]
        hint = f"use --gpus {' or '.join([', '.join(counts[:-1]), counts[-1]] if len(counts) > 1 else counts)}" if counts else "make it on one GPU"
        raise InputError(f"one video cannot be split over {processes} processes: its transformer's {heads} attention heads do not share out that way", hint)


def on_rank(job, rank: int):
    """The job as process ``rank`` runs it: on GPU ``rank`` (CUDA), else the same device."""
    device = job.runtime.device
    if device.type == "cuda":
        device = torch.device("cuda", rank)
    return replace(job, runtime=replace(job.runtime, device=device))


def join_group(rank: int, world: int, port: int, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"  # diffusers gathers the pieces' lengths on the CPU then: no GPU sync per attention
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=TIMEOUT)


def leave_group() -> None:
    """Leave the group and end this helper process without Python's shutdown (it has written all it writes).

    A gloo worker thread frees a finished collective's tensors only after the caller has moved on, and
    that takes the GIL. A process that ends right after its last collective can be shutting Python down
    by then; the thread's wait for the GIL then ends it inside a C++ destructor, and the process aborts
    ("terminate called without an active exception", torch 2.13). A barrier first does not help: gloo's
    barrier holds the earlier collectives until it is freed the same way.
    """
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextmanager
def leaving_group() -> Iterator[None]:
    """The body's work in the joined group, then ``leave_group``; an error destroys the group and is raised."""
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_group()


def load_split(job):
    """The job's models with their block passes and decodes split over the group."""
    from diffusers import AutoencoderKLHunyuanVideo

    from fpgen.loading import Components
    from fpgen.vae_split import share_vae_decode

    components = Components(job.model, job.runtime, job.loras).load()
    split_sequence(components.blocks, job.runtime.device)
    if isinstance(components.vae, AutoencoderKLHunyuanVideo):  # decodes in tiles (Helios' Wan VAE decodes frame by frame)
        share_vae_decode(components.vae)
    return components


def follow(job) -> None:
    """A helper process's share of the job: the same engine calls as the first process, writing nothing."""
    from fpgen.engine import generate_frames

    components = load_split(job)
    if job.saved is None:
        negative = job.settings.negative_prompt if job.settings.cfg != 1.0 else None
        inputs, finished = components.family.parts.encode(components, job.pictures, job.plan.prompts, negative, job.settings), ()
    else:
        inputs, finished = job.saved.inputs, job.saved.finished
    generate_frames(components, inputs, job.plan, job.settings, lambda frames, first: None, None, finished, job.step_cache)


def _helper(rank: int, world: int, port: int, job) -> None:
    library_bars_off()  # the first process reports
    job = on_rank(job, rank)
    join_group(rank, world, port, job.runtime.device)
    with leaving_group():
        follow(job)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_split(job, world: int, run: Callable):
    """Run ``run(components, job)`` with the job's transformer passes split over ``world`` processes.

    This process is the first; ``world - 1`` helpers start fresh (spawn) and load the models too.
    The environment, NCCL settings included, reaches them unchanged.
    """
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    port, spawn = free_port(), get_context("spawn")
    helpers = [spawn.Process(target=_helper, args=(rank, world, port, job), name=f"fpgen rank {rank}") for rank in range(1, world)]
    with ignoring(signal.SIGINT):  # Ctrl-C reaches the first process alone, which ends the helpers
        for helper in helpers:
            helper.start()
    job = on_rank(job, 0)
    try:
        join_group(0, world, port, job.runtime.device)
        return run(load_split(job), job)
    except BaseException:
        for helper in helpers:  # they would wait on this process in the next collective
            helper.terminate()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for helper in helpers:
            helper.join()
