"""`fpgen finetune ARGS` that also writes the gradients of every optimizer step to $FPGEN_GRADIENTS/step-N.safetensors.

The loop runs unchanged: only ``accumulate_gradients`` is wrapped, and the main process saves
the gradient of every trainable parameter after the step's last backward pass, so after DDP's
all-reduce, before clipping. Run it as ``python`` or under ``torchrun --nproc_per_node N``.
"""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from fpgen.cli import main
from fpgen.training import loop

accumulate = loop.accumulate_gradients


def recording(accelerator, objective, step, *args):
    result = accumulate(accelerator, objective, step, *args)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(objective)
        gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        save_file(gradients, str(Path(os.environ["FPGEN_GRADIENTS"]) / f"step-{step}.safetensors"))
    return result


loop.accumulate_gradients = recording
sys.argv = ["fpgen", *sys.argv[1:]]
main()
