"""Low-VRAM execution: weights live in pinned host memory and visit the GPU only while they are used.

The transformer's 60 blocks are streamed by ``StreamedBlockStack``: block i+1 is copied to the GPU
on a side stream while block i computes, so on a fast link the copies hide behind the arithmetic
(a 640-bucket section does ~7 GFLOP of work per byte of bf16 weights). Modules used once per job
(the text encoders, SigLIP, the VAE) are moved to the GPU for their call and back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from fpgen.checkpoint import MappedFiles, TransformerWeights, read_header
from fpgen.errors import InputError
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
        self.used = _aligned(self.used + size)
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


def empty_transformer(config: dict):
    """The transformer's modules with every parameter on the meta device (nothing allocated)."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    with torch.device("meta"):
        return HunyuanVideoFramepackTransformer3DModel.from_config(config)


def fill_parameters(model: torch.nn.Module, weights: TransformerWeights, place: Callable[[str, torch.Tensor], torch.Tensor | None], tensors=None) -> torch.nn.Module:
    """Give ``model``'s meta parameters their tensors, each made by ``place(name, tensor)`` from a view of
    the memory-mapped file (or from ``tensors``, name -> tensor, when given): one copy of each tensor at
    most, never a second one on the way.

    ``place`` returning None leaves that parameter in the file (streamed later).
    """
    files = MappedFiles()
    for key, ref in weights.refs.items():
        module_name, _, name = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise InputError(f"{weights.path} holds {key}, which the FramePack transformer does not have", "pass a FramePack transformer checkpoint") from None
        tensor = place(key, tensors[key] if tensors is not None else files.tensor(ref))
        if tensor is not None:
            module._parameters[name] = tensor if isinstance(tensor, torch.nn.Parameter) else torch.nn.Parameter(tensor, requires_grad=False)
    missing = [name for name, p in model.named_parameters() if p.is_meta and not name.startswith(STREAMED_PREFIXES)]
    missing += [name for name in (n for n, _ in model.named_parameters() if n.startswith(STREAMED_PREFIXES)) if name not in weights.refs]
    if missing:
        raise InputError(f"{weights.path} lacks {len(missing)} transformer weights, e.g. {missing[0]}", "pass a complete FramePack transformer checkpoint")
    return model.eval()


def load_transformer_for_streaming(path: Path, dtype: torch.dtype, device: torch.device, mapped: bool = False):
    """The transformer with everything but its blocks on the GPU, and the blocks' weights either read
    into pinned host memory (``PinnedArena``: one copy of the 25 GB) or, ``mapped``, left in the file
    for ``MappedBlockStack`` to read block by block.
    """
    weights = TransformerWeights.of(path)
    arena = PinnedArena()

    def place(key: str, mapped_tensor: torch.Tensor) -> torch.Tensor | None:
        if not key.startswith(STREAMED_PREFIXES):
            return mapped_tensor.to(device=device, dtype=dtype, copy=True)
        return None if mapped else arena.copy(mapped_tensor.to(dtype))

    return fill_parameters(empty_transformer(weights.config), weights, place)


class StreamedBlockStack(BlockStack):
    """A BlockStack whose weights stay in host memory, two blocks at most on the GPU.

    Here the host copies are pinned and resident (``host``); ``MappedBlockStack`` reads them from
    the file instead. On the CPU (tests) the blocks compute on the host tensors directly.
    """

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

    def _host(self, index: int) -> dict[str, torch.Tensor]:
        """Block ``index``'s weights in host memory, ready to copy."""
        return self.host[index]

    def _resting(self, index: int) -> dict[str, torch.Tensor]:
        """What block ``index``'s parameters point at between its calls."""
        return self.host[index]

    def _fetch(self, index: int):
        host = self._host(index)
        if self.device.type != "cuda":
            return host, None
        with torch.cuda.stream(self.copy_stream):
            tensors = {name: self._to_device(t) for name, t in host.items()}
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return tensors, ready

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    @staticmethod
    def _point(block: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
            tensor.data = tensors[name]

    def _use(self, block: torch.nn.Module, fetched, compute) -> None:
        """Point ``block`` at its fetched weights, once their copy is done on the GPU."""
        tensors, ready = fetched
        if ready is not None:
            compute.wait_event(ready)
            for tensor in tensors.values():
                tensor.record_stream(compute)  # its memory is not reused until this block's kernels finish
        self._point(block, tensors)

    def _compute_stream(self):
        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def lend(self, index: int, use):
        block = self.order[index]
        self._use(block, self._fetch(index), self._compute_stream())
        try:
            return use(block)
        finally:
            self._point(block, self._resting(index))

    def run_span(self, start: int, stop: int | None, hidden, context, temb, attention_mask, rope):
        compute = self._compute_stream()
        indices = range(len(self.order))[start:stop]
        upcoming = self._fetch(indices[0])
        previous_done = None
        for index in indices:
            block = self.order[index]
            self._use(block, upcoming, compute)
            hidden, context = block(hidden, context, temb, attention_mask, rope)  # queued: the GPU works while the next block is fetched
            done = None
            if compute is not None:
                done = torch.cuda.Event()
                done.record(compute)
            if index + 1 < indices.stop:
                # Kernels run behind the Python loop: without this wait the loop would queue copies of
                # many blocks ahead, each needing fresh memory. Once block i-1 is done, its weights'
                # memory serves block i+1, so two blocks at most are on the GPU.
                if previous_done is not None:
                    previous_done.synchronize()
                upcoming = self._fetch(index + 1)
            previous_done = done
            self._point(block, self._resting(index))
        return hidden, context


class MappedBlockStack(StreamedBlockStack):
    """Blocks streamed from the memory-mapped checkpoint: each block is read into one of two pinned
    slots just before it is copied to the GPU, so the process holds two blocks of its own host memory
    instead of all 60; the file's pages are the kernel's page cache, which it can drop and read again.
    Weights cross as stored (an fp8 file's are half the bytes) and are cast to the compute dtype on the
    GPU; on the CPU, in the slot. ``model``'s block parameters are left in the file by
    ``load_transformer_for_streaming(..., mapped=True)``.
    """

    SLOTS = 2

    def __init__(self, model, device: torch.device, weights: TransformerWeights, dtype: torch.dtype):
        BlockStack.__init__(self, model)
        self.device, self.dtype, self.files = torch.device(device), dtype, MappedFiles()
        self.order = [*self.transformer_blocks, *self.single_transformer_blocks]
        prefixes = [f"transformer_blocks.{i}." for i in range(len(self.transformer_blocks))]
        prefixes += [f"single_transformer_blocks.{i}." for i in range(len(self.single_transformer_blocks))]
        self.refs = [{name: weights.refs[prefix + name] for name, _ in block.named_parameters()} for prefix, block in zip(prefixes, self.order)]
        self.empty = torch.empty(0, dtype=dtype)
        for block in self.order:
            for name, _ in block.named_parameters():
                module_name, _, leaf = name.rpartition(".")
                block.get_submodule(module_name)._parameters[leaf] = torch.nn.Parameter(self.empty, requires_grad=False)
        size = max(sum(_aligned(_numel(ref.shape) * self._slot_dtype(ref).itemsize) for ref in refs.values()) for refs in self.refs)
        pinned = self.device.type == "cuda"
        self.slots = [torch.empty(size, dtype=torch.uint8, pin_memory=pinned) for _ in range(self.SLOTS)]
        self.copied: list[torch.cuda.Event | None] = [None] * self.SLOTS  # the GPU copy out of each slot
        self._copy_stream = None

    def _host(self, index: int) -> dict[str, torch.Tensor]:
        slot = index % self.SLOTS
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the slot's last block has reached the GPU: it can be overwritten
        tensors, used = {}, 0
        for name, ref in self.refs[index].items():
            dtype = self._slot_dtype(ref)
            size = _numel(ref.shape) * dtype.itemsize
            tensors[name] = self.slots[slot][used : used + size].view(dtype).view(ref.shape)
            tensors[name].copy_(self.files.tensor(ref))
            used += _aligned(size)
        for ref in self.refs[(index + 1) % len(self.refs)].values():  # the next block's pages read ahead while this one computes
            self.files.prefetch(ref)
        return tensors

    def _slot_dtype(self, ref) -> torch.dtype:
        return getattr(torch, ref.dtype) if self.device.type == "cuda" else self.dtype

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True).to(self.dtype)

    def _fetch(self, index: int):
        tensors, ready = super()._fetch(index)
        self.copied[index % self.SLOTS] = ready
        return tensors, ready

    def _resting(self, index: int) -> dict[str, torch.Tensor]:
        return dict.fromkeys(self.refs[index], self.empty)


def _numel(shape) -> int:
    return int(torch.Size(shape).numel())


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def load_mapped_encoder(cls, path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """A transformers model (the Llama) whose weights are views of its memory-mapped safetensors files
    where they are stored in ``dtype``: the kernel's page cache, not the process's own memory, read as
    ``stream_module_layers`` moves each layer to the GPU. Tensors stored in another dtype are cast copies."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # buffers (the rotary table) computed as usual
        model = cls(cls.config_class.from_pretrained(path))
    files = MappedFiles()
    for file in sorted(Path(path).glob("*.safetensors")):
        for key, ref in read_header(file)[0].items():
            module_name, _, name = key.rpartition(".")
            tensor = files.tensor(ref)
            model.get_submodule(module_name)._parameters[name] = torch.nn.Parameter(tensor if tensor.dtype == dtype else tensor.to(dtype), requires_grad=False)
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise InputError(f"{path} lacks {len(missing)} weights, e.g. {missing[0]}", "download the model again with fpgen download")
    return model.eval()


def stream_module_layers(module: torch.nn.Module, device: torch.device) -> None:
    """Stream a model (Llama, UMT5, Helios' transformer) layer by layer with diffusers' group offloading.

    Its weights stay in ordinary memory (pinned on the fly, layer by layer) instead of a second,
    pinned copy; the next layer is copied on a side stream on CUDA (on the CPU the hooks run as they
    are, which the tests use). The layer list must be the module's own child: diffusers 0.42.1's
    ``block_modules`` (a list one level down) registers its CUDA prefetch hooks twice and fails, so
    UMT5 passes its ``encoder`` stack.
    """
    from diffusers.hooks import apply_group_offloading

    cuda = torch.device(device).type == "cuda"
    apply_group_offloading(
        module, onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type="block_level",
        num_blocks_per_group=1, use_stream=cuda, record_stream=cuda, low_cpu_mem_usage=cuda,
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
