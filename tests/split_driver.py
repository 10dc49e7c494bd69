"""One tiny framepack job through the engine, in one process or under torchrun with its transformer passes split (fpgen.parallel).

    python tests/split_driver.py OUT
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/split_driver.py OUT

Each process writes OUT/rank-R.safetensors: the job's latents and the number of image tokens
block 0 saw in each pass (the models come from $HF_HUB_CACHE, offline).
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from enginejob import make_frames

import fpgen
from fpgen.config import Settings
from fpgen.parallel import leave_group, split_sequence
from fpgen.tensorfile import save_tensors

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
# real CFG: the negative prompt's passes are split too; at 32x32 the two pieces differ by one token
SETTINGS = Settings(prompt="a man walks to the door", negative_prompt="blurry", cfg=2.0, seconds=1.2, steps=2, size=(32, 32), seed=5)


def main(out: Path) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    models = fpgen.load_models("framepack", device="cpu", dtype="float32")
    if world > 1:
        dist.init_process_group("gloo")
        split_sequence(models.blocks, models.runtime.device)
    seen = []
    models.transformer.transformer_blocks[0].register_forward_pre_hook(lambda block, args: seen.append(args[0].shape[1]))
    result = make_frames(models, GOLDEN / "input.png", SETTINGS)
    save_tensors(out / f"rank-{rank}.safetensors", {"latents": result.latents, "tokens": torch.tensor(seen)})
    if world > 1:
        leave_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
