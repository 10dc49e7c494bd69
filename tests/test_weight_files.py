"""Transformer weights from the files people have: single safetensors files (bf16, fp8, ComfyUI prefix),
and low-vram blocks streamed from the memory-mapped file instead of pinned in host memory."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import TRANSFORMER, assert_one_line_error, block_inputs
from safetensors.torch import save_file

from fpgen.checkpoint import TransformerWeights
from fpgen.errors import InputError
from fpgen.loading import load_transformer
from fpgen.offload import MappedBlockStack, load_transformer_for_streaming
from fpgen.registry import resolve_model
from fpgen.runtime import plan_runtime
from fpgen.spec import RuntimeRequest
from fpgen.transformer import BlockStack


@pytest.fixture(scope="module")
def folder_model():
    return load_transformer(TRANSFORMER, torch.float32)


def write_single_file(folder_model, path, dtype=torch.float32, prefix="", metadata=None, keep=("norm", "bias")):
    """The tiny transformer as one file, the way kijai's single files are made: weights cast to ``dtype``
    (norms and biases kept in float32, as the fp8 files keep them in bf16), and the config beside it
    (the tiny model's 16-wide heads need it; FramePack's 128-wide ones do not)."""
    tensors = {}
    for name, tensor in folder_model.state_dict().items():
        cast = tensor if any(word in name for word in keep) else tensor.to(dtype)
        tensors[prefix + name] = cast.contiguous()
    save_file(tensors, str(path), metadata=metadata)
    shutil.copy(TRANSFORMER / "config.json", path.with_name("config.json"))
    return path


def test_single_file_loads_the_same_transformer_as_the_folder(folder_model, tmp_path):
    """A float32 single file under ComfyUI's prefix: every weight and a block pass equal the folder's bit for bit."""
    path = write_single_file(folder_model, tmp_path / "FramePackI2V_HY_tiny.safetensors", prefix="model.diffusion_model.")
    weights = TransformerWeights.of(path)
    assert {k: weights.config[k] for k in ("num_layers", "num_single_layers", "num_attention_heads", "rope_axes_dim")} == {
        "num_layers": 2, "num_single_layers": 2, "num_attention_heads": 2, "rope_axes_dim": [4, 6, 6],
    }  # fmt: skip
    model = load_transformer(path, torch.float32)
    reference = folder_model.state_dict()
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference) and model.state_dict().keys() == reference.keys()
    inputs = block_inputs(model)
    assert torch.equal(BlockStack(model)(*inputs), BlockStack(folder_model)(*inputs))


def test_fp8_single_file_is_the_folder_rounded_to_fp8(folder_model, tmp_path):
    """kijai's fp8_e4m3fn layout: matrices in FP8, norms and biases wider; loading casts to the compute dtype."""
    path = write_single_file(folder_model, tmp_path / "FramePackI2V_HY_fp8_e4m3fn.safetensors", dtype=torch.float8_e4m3fn)
    assert TransformerWeights.of(path).stored_dtypes() == {"float8_e4m3fn", "float32"}
    model = load_transformer(path, torch.float32)
    weight = "transformer_blocks.0.attn.to_q.weight"
    expected = folder_model.state_dict()[weight].to(torch.float8_e4m3fn).float()
    assert torch.equal(model.state_dict()[weight], expected)
    assert not torch.equal(expected, folder_model.state_dict()[weight])  # the rounding is real
    assert torch.equal(model.state_dict()["transformer_blocks.0.attn.to_q.bias"], folder_model.state_dict()["transformer_blocks.0.attn.to_q.bias"])


def test_single_file_family_comes_from_metadata_or_name(folder_model, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    named = write_single_file(folder_model, tmp_path / "a" / "FramePack_F1_I2V_HY_bf16.safetensors")
    plain = write_single_file(folder_model, tmp_path / "b" / "framepack.safetensors")
    recorded = write_single_file(folder_model, tmp_path / "c" / "mine.safetensors", metadata={"order": "forward"})
    assert [resolve_model(str(p)).order for p in (named, plain, recorded)] == ["forward", "inverted", "forward"]


def test_not_a_framepack_file_is_refused_by_name(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(InputError, match="not a FramePack transformer checkpoint.*decoder.conv_in.weight"):
        resolve_model(str(path))


def test_a_job_with_a_single_file_takes_the_encoders_from_the_cache(folder_model, offline_cache, tmp_path):
    """``--model FILE`` resolves to the file for the transformer and the cached repos for the rest, recorded absolute."""
    from fpgen.config import resolve
    from fpgen.spec import JobSpec

    (tmp_path / "w").mkdir()
    path = write_single_file(folder_model, tmp_path / "w" / "FramePack_F1_I2V_HY_fp8.safetensors", dtype=torch.float8_e4m3fn)
    picture = tmp_path / "in.png"
    __import__("PIL.Image").Image.new("RGB", (64, 64)).save(picture)
    job = resolve(JobSpec.from_options({"output": tmp_path / "o.mp4", "image": picture, "model": str(path), "device": "cpu"}))
    assert job.model.paths["transformer"] == path and job.model.paths["vae"].is_dir()
    assert (job.plan.order, job.spec.model) == ("forward", str(path.absolute()))


def test_a_bad_single_file_is_a_one_line_usage_error(cli, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert_one_line_error(cli("generate", "--model", path, "-p", "x", "--device", "cpu"), 2, "broken.safetensors")


@pytest.mark.parametrize("stored", [torch.float32, torch.float8_e4m3fn])
def test_blocks_streamed_from_the_mapped_file_compute_bit_exactly(folder_model, tmp_path, stored):
    """Low-vram's file streaming: blocks read into two reused slots, block by block, give the loaded blocks' output
    bit for bit, call after call (slots overwritten in turn); the blocks hold no weights between calls."""
    path = write_single_file(folder_model, tmp_path / "FramePackI2V_HY.safetensors", dtype=stored)
    model = load_transformer_for_streaming(path, torch.float32, torch.device("cpu"), mapped=True)
    streamed = MappedBlockStack(model, torch.device("cpu"), TransformerWeights.of(path), torch.float32)
    assert len(streamed.slots) == 2 and all(p.numel() == 0 for p in streamed.parameters())
    loaded = load_transformer(path, torch.float32)
    for seed in (0, 1):
        inputs = block_inputs(model, seed=seed)
        assert torch.equal(streamed(*inputs), BlockStack(loaded)(*inputs))
    assert all(p.numel() == 0 for p in streamed.parameters())
    slot_bytes = streamed.slots[0].numel()
    block_bytes = [sum(p.numel() * 4 for p in block.parameters()) for block in (*folder_model.transformer_blocks, *folder_model.single_transformer_blocks)]
    assert max(block_bytes) <= slot_bytes < max(block_bytes) + 512 * 64  # one block (aligned), not the whole stack


def write_gguf(folder_model, path, quantized: bool):
    """The tiny transformer as a GGUF file, as conversion tools write one: the blocks' linear weights
    Q8_0 (``quantized``) or F32, everything else F32; the config beside it (16-wide heads)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "framepack")
    for name, tensor in folder_model.state_dict().items():
        array = tensor.float().numpy()
        if quantized and name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and array.ndim == 2 and array.shape[1] % 32 == 0:
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    shutil.copy(TRANSFORMER / "config.json", path.with_name("config.json"))
    return path


def test_gguf_loads_the_same_transformer_as_the_folder(folder_model, tmp_path):
    """F32 GGUF: the folder's output bit for bit. Q8_0 GGUF: the blocks' linears stay quantized (diffusers'
    GGUFLinear) and compute exactly what the folder computes with its weights rounded through Q8_0 (and fp16, as diffusers dequantizes)."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter, dequantize_gguf_tensor

    (tmp_path / "f32").mkdir(), (tmp_path / "q8").mkdir()
    plain = load_transformer(write_gguf(folder_model, tmp_path / "f32" / "framepack-F32.gguf", quantized=False), torch.float32)
    inputs = block_inputs(folder_model)
    assert torch.equal(BlockStack(plain)(*inputs), BlockStack(folder_model)(*inputs))

    path = write_gguf(folder_model, tmp_path / "q8" / "framepack-Q8_0.gguf", quantized=True)
    assert resolve_model(str(path)).order == "inverted"
    model = load_transformer(path, torch.float32)
    linear = model.transformer_blocks[0].attn.to_q
    assert isinstance(linear, GGUFLinear) and linear.weight.quant_type == gguf.GGMLQuantizationType.Q8_0
    rounded = load_transformer(TRANSFORMER, torch.float32)
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            if isinstance(model.get_submodule(name.rpartition(".")[0]), GGUFLinear) and name.endswith(".weight"):
                packed = torch.from_numpy(gguf.quants.quantize(parameter.numpy(), gguf.GGMLQuantizationType.Q8_0))  # diffusers dequantizes Q8_0 in fp16
                parameter.copy_(dequantize_gguf_tensor(GGUFParameter(packed, quant_type=gguf.GGMLQuantizationType.Q8_0)).float())
    expected = BlockStack(rounded)(*inputs)
    assert torch.equal(BlockStack(model)(*inputs), expected) and not torch.equal(expected, BlockStack(folder_model)(*inputs))
    with pytest.raises(InputError, match="GGUF transformer is quantized already"):
        plan_runtime(RuntimeRequest(device="cpu"), path, loras=True)  # a LoRA cannot merge into quantized blocks


def test_the_mapped_llama_is_the_loaded_one_without_its_own_copy():
    """Low-vram's streamed Llama: its weights are views of the file's pages (no copy in the process), and it
    encodes bit for bit what the loaded one does."""
    from transformers import LlamaModel

    from fpgen.loading import load_encoder
    from fpgen.offload import load_mapped_encoder

    path = TRANSFORMER.parents[1] / "hunyuanvideo-community/HunyuanVideo/text_encoder"
    mapped, loaded = load_mapped_encoder(LlamaModel, path, torch.float32), load_encoder("text_encoder", path, torch.float32)
    ids = torch.tensor([[1, 5, 9, 33, 7, 2]])
    assert torch.equal(mapped(ids).last_hidden_state, loaded(ids).last_hidden_state)
    weight = mapped.layers[0].mlp.down_proj.weight
    assert not weight.untyped_storage().resizable() and all(not p.is_meta for p in mapped.parameters())  # frombuffer storage: the mapping itself
