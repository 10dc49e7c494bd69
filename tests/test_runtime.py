"""The one runtime decision: device, mode and why; and the low-vram phases it leads to."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from helpers import TRANSFORMER_BYTES

import fpgen.loading as loading
from fpgen.errors import InputError
from fpgen.hub import find_model
from fpgen.runtime import RuntimePlan, RuntimeRequest, choose_mode, choose_streaming, plan_runtime
from fpgen.spec import Settings



def test_cpu_refuses_gpu_only_options():
    plan = plan_runtime(RuntimeRequest(device="cpu"))
    assert (plan.mode, plan.attention, plan.offload_encoders) == ("exact", "sdpa", False)
    for kwargs in ({"fast": True}, {"low_vram": True}, {"vram_budget": 8}):
        with pytest.raises(InputError, match="need a CUDA GPU"):
            plan_runtime(RuntimeRequest(device="cpu", **kwargs))


@pytest.mark.parametrize(
    ("budget", "fast", "low_vram", "expected"),
    [
        (80, False, False, "exact"),
        (80, True, False, "fast"),
        (80, False, True, "low-vram"),
        (24, False, False, "low-vram"),  # a 4090 cannot hold the bf16 transformer
        (24, True, False, "fast"),  # but holds it in FP8
        (8, True, False, "low-vram"),
        (6, False, False, "low-vram"),
    ],
)
def test_mode_follows_the_budget(budget, fast, low_vram, expected):
    mode, reason = choose_mode(budget, TRANSFORMER_BYTES, RuntimeRequest(fast=fast, low_vram=low_vram))
    assert mode == expected and reason


def test_bad_device_and_dtype_are_usage_errors():
    for request, text in ((RuntimeRequest(device="tpu"), "--device"), (RuntimeRequest(device="cpu", dtype="int8"), "unknown --dtype")):
        with pytest.raises(InputError, match=text):
            plan_runtime(request)


def test_low_vram_frees_the_llama_before_the_transformer_loads(offline_cache, monkeypatch):
    """The two largest models never share host memory: the Llama (tied into reference cycles by its
    streaming hooks, here by a stand-in) must be gone when the transformer starts loading."""
    from enginejob import prepare

    llama, alive_at_transformer_load = [], []
    monkeypatch.setattr(loading, "stream_module_layers", lambda model, device: (model.__dict__.setdefault("_hooks", [model]), llama.append(weakref.ref(model))))
    load_transformer = loading.Components.load_transformer
    monkeypatch.setattr(loading.Components, "load_transformer", lambda self: (alive_at_transformer_load.append(llama[0]() is not None), load_transformer(self))[1])
    runtime = RuntimePlan(torch.device("cpu"), torch.float32, torch.float32, mode="low-vram", reason="test")
    components = loading.Components(find_model("framepack"), runtime).load()
    assert components.transformer is None  # low-vram: the transformer waits for the denoising phase
    gc.disable()  # only the release's own collection may free the cycle, as when no automatic one happens to run
    try:
        prepare(components, np.full((64, 64, 3), 128, np.uint8), Settings(prompt="a cat", seconds=1, steps=1, size=(64, 64)))
        with components.denoising():
            pass
    finally:
        gc.enable()
    assert len(llama) == 1 and alive_at_transformer_load == [False]


@pytest.mark.parametrize(
    ("ram", "loras", "expected"),
    [
        (64, False, "pinned"),  # room for the 24 GiB of pinned blocks and the rest of the job
        (33, False, "pinned"),
        (31, False, "mapped"),  # a 32 GB machine: today's 30 GiB peak is too close

        (16, False, "mapped"),  # the 16 GB machine
        (16, True, "pinned"),  # merged LoRAs exist only in memory
    ],
)
def test_low_vram_streaming_follows_the_ram_budget(ram, loras, expected):
    streaming, reason = choose_streaming(ram, TRANSFORMER_BYTES, loras)
    assert streaming == expected and f"{ram} GiB" in reason


def test_ram_budget_is_checked_and_cuda_only():
    with pytest.raises(InputError, match="--ram-budget need"):
        plan_runtime(RuntimeRequest(device="cpu", ram_budget=16))
