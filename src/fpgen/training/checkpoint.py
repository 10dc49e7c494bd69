"""The run folder and its checkpoints: what a run may start in, what a checkpoint holds, writing and resuming one.

A checkpoint ``checkpoints/step-NNNNNNN/`` holds tensors and JSON only, so resuming one runs no code
from the run folder (accelerate's ``save_state`` pickles the RNG and custom states, and loading a
pickle runs whatever it names):

- ``lora.safetensors`` (a LoRA run: the adapter, loadable with ``fpgen generate --lora``) or
  ``model.safetensors`` (``--full``: every weight);
- ``optimizer.safetensors``: the optimizer's state tensors, its parameter groups as JSON metadata;
- under FSDP instead, ``model/`` and ``optimizer/``: each process writes its own shards (its pieces of
  the weights and of the optimizer's state), never gathering the whole (a 13B full finetune's
  checkpoint is 156 GB), as safetensors files in torch.distributed.checkpoint's Hugging Face layout,
  where every file records where its pieces sit in the whole tensor, so any number of processes,
  one included, reads them back; ``optimizer.json`` holds the parameter groups;
- ``ema.safetensors`` (``--ema``): the weights' moving average;
- ``state.json``: the step, the micro-batches a step takes, the learning-rate schedule;
- ``rng-<process>.json``: each process's Python, NumPy and torch RNG states.

A folder holding anything else is refused before anything is loaded. A checkpoint is written
aside (``.partial``) and renamed, so a crash or Ctrl-C leaves the last one whole.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from fpgen.errors import InputError
from fpgen.lora import read_lora, write_lora
from fpgen.registry import METADATA_FILE
from fpgen.tensorfile import load_tensors, save_tensors
from fpgen.training import adapters
from fpgen.training.config import TrainConfig, load_run
from fpgen.training.events import RUN_FILE

LORA_FILE, CHECKPOINTS = "lora.safetensors", "checkpoints"
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, EMA_FILE = "model.safetensors", "optimizer.safetensors", "state.json", "ema.safetensors"
MODEL_SHARDS, OPTIMIZER_SHARDS, OPTIMIZER_GROUPS = "model", "optimizer", "optimizer.json"
RNG_FILE = re.compile(r"rng-(\d+)\.json")


# ---------------------------------------------------------------------------------------------- the run folder


def check_output(config: TrainConfig, resume: bool) -> None:
    """Refuse to mix runs: a fresh run needs a new or empty folder, --resume needs the same settings and a clean checkpoint."""
    if config.output is None:
        raise InputError("--output is required to train", "e.g. --output runs/my-lora (or pass --cache-only to fill the cache only)")
    output, run = Path(config.output), Path(config.output) / RUN_FILE
    if resume:
        if not run.is_file():
            raise InputError(f"nothing to resume in {output} (no {RUN_FILE})", "start the run without --resume")
        checkpoint = latest_checkpoint(output)
        if checkpoint is None:
            raise InputError(f"{output} has no checkpoint to resume from", "start the run again without --resume")
        differences = config.differences(load_run(run))
        if differences:
            raise InputError(f"--resume with other settings than the run in {output}: {'; '.join(differences)}", "repeat the original command with --resume (only --max-steps and bookkeeping options may change)")
        check_checkpoint(checkpoint)
        return
    if run.is_file() and latest_checkpoint(output) is None and not (output / LORA_FILE).exists():
        return  # a start that failed before its first checkpoint: nothing in it is worth keeping
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if run.is_file():
            raise InputError(f"{output} already holds a training run", "pass --resume to continue it, or choose another --output")
        raise InputError(f"{output} exists and is not an empty folder", "choose a new or empty folder for --output; nothing in it is overwritten")


OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2}  # per trained weight: AdamW's two moments in float32, or in 8 bits


def check_room(output: Path, trainee, config: TrainConfig, precision: str) -> None:
    """Refuse a run whose checkpoint and result cannot fit on --output's disk, before it trains for hours and fails at its first save."""
    weights = sum(p.numel() for p in trainee.parameters)  # every process counts them all (a sharded weight's numel is the whole's)
    checkpoint = weights * (4 + OPTIMIZER_BYTES[config.optimizer] + (4 if config.ema else 0)) if config.save_every else 0
    result = weights * (2 if config.full and precision == "bf16" else 4)
    free = shutil.disk_usage(next(folder for folder in (output, *output.parents) if folder.exists())).free
    if checkpoint + result > free:
        what = f"a checkpoint of this run takes {checkpoint / 1e9:.1f} GB and its result {result / 1e9:.1f} GB" if checkpoint else f"the result takes {result / 1e9:.1f} GB"
        raise InputError(f"{what}, and {output} has {free / 1e9:.1f} GB free", "free space or choose an --output on a larger disk" + (", or pass --save-every 0 to write the result only" if checkpoint else ""))


def latest_checkpoint(output: Path) -> Path | None:
    folders = _checkpoints(Path(output))
    return folders[-1] if folders else None


def _checkpoints(output: Path) -> list[Path]:
    return sorted(p for p in (output / CHECKPOINTS).glob("step-*") if p.is_dir() and not p.name.endswith(".partial"))


def check_checkpoint(folder: Path) -> None:
    """A checkpoint must hold our files only: resuming reads safetensors and JSON, and refuses a folder that offers more."""
    ours = (LORA_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, EMA_FILE, OPTIMIZER_GROUPS)
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours and not RNG_FILE.fullmatch(p.name) and not _only_shards(p))
    if foreign:
        names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(
            f"the checkpoint {folder} holds files fpgen does not write ({names}); resuming loads tensors and JSON only, never pickles",
            "remove those files if you trust where they came from, or start a new run in another --output",
        )
    optimizer = (folder / OPTIMIZER_FILE).is_file() or ((folder / OPTIMIZER_GROUPS).is_file() and (folder / OPTIMIZER_SHARDS).is_dir())
    if not (folder / STATE_FILE).is_file() or not optimizer:
        raise InputError(f"the checkpoint {folder} is incomplete (no {STATE_FILE} or optimizer state)", "remove that folder to resume from the one before it")


def _only_shards(path: Path) -> bool:
    """A ``model/`` or ``optimizer/`` folder of safetensors shards and nothing else."""
    return path.name in (MODEL_SHARDS, OPTIMIZER_SHARDS) and path.is_dir() and all(f.is_file() and f.suffix == ".safetensors" for f in path.iterdir())


# ---------------------------------------------------------------------------------------------- the step counter


class StepCounter:
    """The optimizer steps done and the micro-batches each takes.

    A step takes processes x --grad-accum micro-batches, so a run can resume on another number of
    processes (GPUs) and continue exactly if --grad-accum keeps that product; any other resume is refused.
    """

    def __init__(self, processes: int, grad_accum: int):
        self.step, self.processes, self.grad_accum = 0, processes, grad_accum

    def state_dict(self) -> dict:
        return {"step": self.step, "micro_batches": self.processes * self.grad_accum}

    def load_state_dict(self, state: dict) -> None:
        saved = int(state["micro_batches"])
        if saved != self.processes * self.grad_accum:
            fix = f"pass --grad-accum {saved // self.processes}" if saved % self.processes == 0 else f"use a number of processes that divides {saved}"
            raise InputError(
                f"the checkpoint's steps take {saved} micro-batches (processes x --grad-accum), this run's {self.processes} x {self.grad_accum}",
                f"{fix} to continue the same run",
            )
        self.step = int(state["step"])


# ---------------------------------------------------------------------------------------------- writing and reading


class Checkpoints:
    """The checkpoints of one run: each process writes its part of ``step-N.partial``, the main one renames it."""

    def __init__(self, accelerator, output: Path, keep: int, trainee):
        self.accelerator, self.folder, self.keep, self.trainee = accelerator, Path(output) / CHECKPOINTS, keep, trainee

    def save(self, step: int) -> Path | None:
        """Write the checkpoint of ``step`` (None if it exists: a stop right after a scheduled save)."""
        final = self.folder / f"step-{step:07d}"
        partial = final.with_name(final.name + ".partial")
        if final.exists():
            return None
        main = self.accelerator.is_main_process
        if main:
            shutil.rmtree(partial, ignore_errors=True)  # left by a crash: ours, and never read
            partial.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        _write_json(partial / f"rng-{self.accelerator.process_index}.json", rng_state())
        if is_fsdp(self.accelerator):
            _write_shards(partial, self.trainee, main)  # every process its own pieces
        elif main:
            _write_weights(partial, self.trainee, _full_weights(self.accelerator, self.trainee))
            save_tensors(partial / OPTIMIZER_FILE, *_split_optimizer_state(self.trainee.optimizer.state_dict()))
        if main:
            if self.trainee.ema:
                save_tensors(partial / EMA_FILE, self.trainee.ema.state_dict())
            _write_json(partial / STATE_FILE, {**self.trainee.counter.state_dict(), "scheduler": self.trainee.scheduler.state_dict()})
        self.accelerator.wait_for_everyone()
        if main:
            os.replace(partial, final)
            for old in _checkpoints(self.folder.parent)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self, folder: Path) -> int:
        """Load ``folder`` into the trainee (every process reads it); returns the step it was written at."""
        check_checkpoint(folder)
        try:
            state = _read_json(folder / STATE_FILE)
            self.trainee.counter.load_state_dict(state)
            if (folder / OPTIMIZER_GROUPS).is_file():
                _read_shards(folder, self.trainee)
            else:
                _read_weights(self.accelerator, folder, self.trainee)
                _load_optimizer_state(self.accelerator, self.trainee, folder)
            self.trainee.scheduler.load_state_dict(state["scheduler"])
            if self.trainee.ema:
                if not (folder / EMA_FILE).is_file():
                    raise KeyError(f"no {EMA_FILE} for --ema")
                self.trainee.ema.load_state_dict(load_tensors(folder / EMA_FILE)[0])
            rng = folder / f"rng-{self.accelerator.process_index}.json"
            if rng.is_file():  # a process the saving run did not have starts from its own RNG state
                set_rng_state(_read_json(rng))
        except (KeyError, TypeError, ValueError) as error:  # valid JSON or tensors, but not what fpgen wrote
            raise InputError(f"the checkpoint {folder} is damaged ({type(error).__name__}: {error})", "remove that folder to resume from the one before it") from None
        return self.trainee.counter.step


# ---------------------------------------------------------------------------------------------- weights


def _full_weights(accelerator, trainee) -> dict[str, torch.Tensor] | None:
    """Every weight of a --full run (gathered from the shards under FSDP, so every process calls it); None for a LoRA."""
    return accelerator.get_state_dict(trainee.objective) if trainee.full else None


def _write_weights(folder: Path, trainee, full_weights: dict[str, torch.Tensor] | None) -> None:
    if trainee.full:
        save_tensors(folder / MODEL_FILE, full_weights)
    else:  # the LoRA only, not the frozen base
        write_lora(folder / LORA_FILE, trainee.lora())


def _read_weights(accelerator, folder: Path, trainee) -> None:
    if not trainee.full:
        adapters.set_lora(trainee.transformer, read_lora(folder / LORA_FILE)[0])
        return
    if not is_fsdp(accelerator):
        accelerator.unwrap_model(trainee.objective).load_state_dict(load_tensors(folder / MODEL_FILE)[0])
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    state = load_tensors(folder / MODEL_FILE)[0] if accelerator.is_main_process else {}
    set_model_state_dict(trainee.objective, state, options=_from_main())


def write_result(accelerator, trainee, output: Path, dtype: torch.dtype, base_model: str, order: str) -> Path:
    """The trained weights: ``lora.safetensors``, or a diffusers model folder for --full (in ``dtype``); returns where."""
    weights = _full_weights(accelerator, trainee)
    if accelerator.is_main_process and trainee.full:
        info = {"order": order, "base_model": base_model, "steps": trainee.counter.step}
        write_full_model(weights, accelerator.unwrap_model(trainee.objective).transformer, output, dtype, info)
    elif accelerator.is_main_process:
        write_lora(output / LORA_FILE, trainee.lora())
    return output if trainee.full else output / LORA_FILE


def write_full_model(state: dict[str, torch.Tensor], transformer, output: Path, dtype: torch.dtype, info: dict) -> None:
    """A diffusers model folder (config.json, sharded safetensors) plus fpgen.json, loadable with --model DIR."""
    from huggingface_hub import save_torch_state_dict

    weights = {k.removeprefix("transformer."): v.to(dtype) for k, v in state.items() if k.startswith("transformer.")}
    transformer.save_config(str(output))
    save_torch_state_dict(weights, str(output), filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size="10GB")
    (output / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- optimizer state


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _load_optimizer_state(accelerator, trainee, folder: Path) -> None:
    if not is_fsdp(accelerator):
        trainee.optimizer.load_state_dict(_join_optimizer_state(*load_tensors(folder / OPTIMIZER_FILE), folder / OPTIMIZER_FILE))
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = _join_optimizer_state(*load_tensors(folder / OPTIMIZER_FILE), folder / OPTIMIZER_FILE) if accelerator.is_main_process else {}
    set_optimizer_state_dict(trainee.objective, trainee.optimizer.optimizer, state, options=_from_main())


def _write_shards(folder: Path, trainee, main: bool) -> None:
    """Each process's pieces of the weights and the optimizer's state (a collective: every process calls it)."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter, save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optimizer = get_state_dict(trainee.objective, trainee.optimizer.optimizer)
    tensors, groups = _split_optimizer_state(optimizer)
    save(weights, storage_writer=HuggingFaceStorageWriter(str(folder / MODEL_SHARDS), save_distributed=True))
    save(tensors, storage_writer=HuggingFaceStorageWriter(str(folder / OPTIMIZER_SHARDS), save_distributed=True))
    if main:
        _write_json(folder / OPTIMIZER_GROUPS, groups)


def _read_shards(folder: Path, trainee) -> None:
    """Read ``model/`` and ``optimizer/`` into this run, however many processes wrote them and however many read them."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader, load
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optimizer = get_state_dict(trainee.objective, trainee.optimizer.optimizer)  # this run's pieces (the optimizer's state made)
    tensors, _ = _split_optimizer_state(optimizer)
    load(weights, storage_reader=HuggingFaceStorageReader(str(folder / MODEL_SHARDS)))
    load(tensors, storage_reader=HuggingFaceStorageReader(str(folder / OPTIMIZER_SHARDS)))
    optimizer = _join_optimizer_state(tensors, _read_json(folder / OPTIMIZER_GROUPS), folder / OPTIMIZER_GROUPS)
    set_state_dict(trainee.objective, trainee.optimizer.optimizer, model_state_dict=weights, optim_state_dict=optimizer)


def _from_main():
    """FSDP: the main process reads the full state and sends each process its shards (the others read nothing)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors keyed ``parameter/name``, metadata): the parameter groups and any plain numbers as JSON."""
    tensors, plain = {}, {}
    for parameter, entry in state["state"].items():
        for name, value in entry.items():
            (tensors if torch.is_tensor(value) else plain)[f"{parameter}/{name}"] = value
    return tensors, {"param_groups": json.dumps(state["param_groups"]), "plain": json.dumps(plain)}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str], where: Path) -> dict:
    try:
        groups, plain = json.loads(metadata["param_groups"]), json.loads(metadata["plain"])
    except (KeyError, ValueError):
        raise InputError(f"{where} lacks the optimizer's parameter groups", "remove that checkpoint to resume from the one before it") from None
    state: dict = {}
    for key, value in {**tensors, **plain}.items():
        parameter, name = key.rsplit("/", 1)
        state.setdefault(int(parameter) if parameter.isdigit() else parameter, {})[name] = value
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------- RNG state and JSON


def rng_state() -> dict:
    """Python's, NumPy's and torch's (CPU and CUDA) RNG states as JSON values (torch's bytes in base64)."""
    version, keys, gauss = random.getstate()
    kind, numbers, position, has_gauss, cached = np.random.get_state()
    cuda = [_to_base64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {"python": [version, list(keys), gauss], "numpy": [kind, numbers.tolist(), position, has_gauss, cached], "torch": _to_base64(torch.get_rng_state()), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, numbers, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(numbers, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(_from_base64(state["torch"]))
    if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_from_base64(s) for s in state["cuda"]])


def _to_base64(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _from_base64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path} is damaged or missing", "remove that checkpoint to resume from the one before it") from None
