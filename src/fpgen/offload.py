"""Low-VRAM execution: weights live in pinned host memory and visit the GPU only while they are used.

The transformer's 60 blocks are streamed by ``StreamedBlockStack``: block i+1 is copied to the GPU
on a side stream while block i computes, so on a fast link the copies hide behind the arithmetic
(a 640-bucket section does ~7 GFLOP of work per byte of bf16 weights). Modules used once per job
(the text encoders, SigLIP, the VAE) are moved to the GPU for their call and back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from fpgen.transformer import BlockStack


STREAMED_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.")
PINNED_CHUNK_BYTES = 2**30  # a power of two: PyTorch's pinned allocator rounds every allocation up to one
ALIGNMENT = 512


def pinned_bytes(count: int) -> torch.Tensor:
    return torch.empty(count, dtype=torch.uint8, pin_memory=True)


class PinnedArena:
    """Pinned host tensors carved out of 1 GiB chunks.

    PyTorch's pinned allocator rounds each allocation up to a power of two, so pinning the
    blocks' weights one by one (19 MB takes 32 MB, 75 MB takes 128 MB) held far more host memory
    than the 24 GiB of weights; chunks waste at most the tail of the last one.
    """

    def __init__(self):
        self.chunk_bytes, self.chunk, self.used = PINNED_CHUNK_BYTES, None, 0

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.numel() * tensor.element_size()
        if size > self.chunk_bytes:
            return pin(tensor)
        if self.chunk is None or self.used + size > self.chunk_bytes:
            self.chunk, self.used = pinned_bytes(self.chunk_bytes), 0
        pinned = self.chunk[self.used : self.used + size].view(tensor.dtype).view(tensor.shape)
        pinned.copy_(tensor)
        self.used = -(-(self.used + size) // ALIGNMENT) * ALIGNMENT
        return pinned


def pin(tensor: torch.Tensor) -> torch.Tensor:
    """A pinned host tensor with ``tensor``'s values: its storage when already pinned, else a copy.

    Always a plain tensor, never the Parameter passed in: the streamer repoints its parameters'
    ``.data`` at GPU copies and must keep the host tensors apart from them.
    """
    if tensor.device.type == "cpu" and tensor.is_pinned():
        return tensor.detach()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
    host.copy_(tensor.detach())
    return host


def load_transformer_for_streaming(path: Path, dtype: torch.dtype, device: torch.device):
    """The transformer with its blocks' weights read from safetensors straight into pinned host
    memory (``PinnedArena``) and everything else onto the GPU: one copy of the 25 GB, never a
    second one on the way.

    Each block's tensors are read with the file opened for that block alone, so no more than a
    block's worth of the file is mapped at a time.
    """
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    from safetensors import safe_open

    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel.from_config(HunyuanVideoFramepackTransformer3DModel.load_config(path))
    groups: dict[tuple[Path, str], list[str]] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                parts = key.split(".")
                group = ".".join(parts[:2]) if key.startswith(STREAMED_PREFIXES) else parts[0]
                groups.setdefault((file, group), []).append(key)
    arena = PinnedArena()
    for (file, group), keys in groups.items():
        with safe_open(str(file), framework="pt") as f:
            for key in keys:
                tensor = f.get_tensor(key).to(dtype)
                tensor = arena.copy(tensor) if key.startswith(STREAMED_PREFIXES) else tensor.to(device)
                module_name, _, name = key.rpartition(".")
                model.get_submodule(module_name)._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} transformer weights, e.g. {missing[0]}")
    return model.eval()


class StreamedBlockStack(BlockStack):
    """A BlockStack whose weights stay in pinned host memory, two blocks at most on the GPU."""

    def __init__(self, model, device: torch.device):
        super().__init__(model)
        self.device = torch.device(device)
        self.order = [*self.transformer_blocks, *self.single_transformer_blocks]
        self.host: list[dict[str, torch.Tensor]] = []
        for block in self.order:
            tensors = {}
            for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
                tensors[name] = pin(tensor)  # no copy when the weights were loaded pinned
                tensor.data = tensors[name]  # the block points at the pinned copy; any old storage is freed
            self.host.append(tensors)
        self._copy_stream = None

    @property
    def copy_stream(self) -> torch.cuda.Stream:
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        return self._copy_stream

    def _fetch(self, index: int):
        with torch.cuda.stream(self.copy_stream):
            tensors = {name: t.to(self.device, non_blocking=True) for name, t in self.host[index].items()}
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return tensors, ready

    @staticmethod
    def _point(block: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
            tensor.data = tensors[name]

    def lend(self, index: int, use):
        block, (tensors, ready) = self.order[index], self._fetch(index)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(ready)
        for tensor in tensors.values():
            tensor.record_stream(compute)
        self._point(block, tensors)
        try:
            return use(block)
        finally:
            self._point(block, self.host[index])

    def run_span(self, start: int, stop: int | None, hidden, context, temb, attention_mask, rope):
        compute = torch.cuda.current_stream(self.device)
        indices = range(len(self.order))[start:stop]
        upcoming = self._fetch(indices[0])
        previous_done = None
        for index in indices:
            block = self.order[index]
            tensors, ready = upcoming
            compute.wait_event(ready)
            for tensor in tensors.values():
                tensor.record_stream(compute)  # its memory is not reused until this block's kernels finish
            self._point(block, tensors)
            if index + 1 < indices.stop:
                # Kernels run behind the Python loop: without this wait the loop would queue copies of
                # many blocks ahead, each needing fresh memory. Once block i-1 is done, its weights'
                # memory serves block i+1, so two blocks at most are on the GPU.
                if previous_done is not None:
                    previous_done.synchronize()
                upcoming = self._fetch(index + 1)
            hidden, context = block(hidden, context, temb, attention_mask, rope)
            previous_done = torch.cuda.Event()
            previous_done.record(compute)
            self._point(block, self.host[index])
        return hidden, context


def stream_module_layers(module: torch.nn.Module, device: torch.device, containers: tuple[str, ...] = ()) -> None:
    """Stream a model (Llama, UMT5, Helios' transformer) layer by layer with diffusers' group offloading.

    Its weights stay in ordinary memory (pinned on the fly, layer by layer) instead of a second,
    pinned copy; the next layer is copied on a side stream on CUDA (on the CPU the hooks run as they
    are, which the tests use). ``containers`` name children that hold the layer list deeper down
    (UMT5's ``encoder``); a model's own layer lists are found by themselves.
    """
    from diffusers.hooks import apply_group_offloading

    cuda = torch.device(device).type == "cuda"
    apply_group_offloading(
        module, onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type="block_level",
        num_blocks_per_group=1, use_stream=cuda, record_stream=cuda, low_cpu_mem_usage=cuda, block_modules=list(containers) or None,
    )  # fmt: skip


def release_cached_memory(device: torch.device) -> None:
    """Give the CUDA caching allocators' unused blocks back: device memory, and pinned host memory,
    which PyTorch otherwise keeps for reuse (15 GB after the Llama has been streamed)."""
    if torch.device(device).type != "cuda":
        return
    torch.cuda.empty_cache()
    for name in ("_accelerator_emptyHostCache", "_host_emptyCache"):
        empty_host_cache = getattr(torch._C, name, None)
        if empty_host_cache is not None:
            empty_host_cache()
            break


def use_expandable_segments() -> None:
    """Let the CUDA allocator grow segments in place, which keeps a tight memory budget from fragmenting."""
    settings = getattr(torch.cuda.memory, "_set_allocator_settings", None)
    if settings is not None:
        settings("expandable_segments:True")


@contextmanager
def on_device(module: torch.nn.Module, device: torch.device, enabled: bool = True):
    """Move a module to ``device`` for the duration of a call, then back to the CPU (when ``enabled``)."""
    if not enabled:
        yield module
        return
    torch.cuda.empty_cache()  # room for the visitor without the allocator thrashing against a memory cap
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
        torch.cuda.empty_cache()
