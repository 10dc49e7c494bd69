"""Mode choice and the FP8 linear (the GPU runs themselves are in benchmarks/)."""

from __future__ import annotations

import torch

from fpgen import acceleration
from fpgen.acceleration import Float8Linear, compile_blocks, compile_cache_key, float8_linears, inductor_options, to_float8_rows

def test_float8_rows_round_trip():
    x = torch.randn(32, 64) * torch.logspace(-2, 2, 32).unsqueeze(1)  # rows of very different scales
    q, scale = to_float8_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (32, 1)
    back = q.float() * scale
    assert ((back - x).norm(dim=1) / x.norm(dim=1)).max() < 0.05  # e4m3 keeps ~2 significant digits per row


def test_float8_linear_matches_the_bf16_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96).to(torch.bfloat16)
    x = torch.randn(4, 10, 128, dtype=torch.bfloat16)
    expected = linear(x).float()
    out = Float8Linear(linear)(x)
    assert out.shape == expected.shape and out.dtype == torch.bfloat16
    assert ((out.float() - expected).norm() / expected.norm()).item() < 0.05


def test_only_the_blocks_big_linears_become_fp8():
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    model = HunyuanVideoFramepackTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1, num_refiner_layers=1,
        text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6), has_image_proj=True, image_proj_dim=24,
        has_clean_x_embedder=True,
    ).to(torch.bfloat16)  # fmt: skip
    swapped = float8_linears(model)
    fp8 = {name for name, module in model.named_modules() if isinstance(module, Float8Linear)}
    assert swapped == len(fp8) > 0
    assert all(name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and "norm" not in name for name in fp8)
    assert isinstance(model.transformer_blocks[0].norm1.linear, torch.nn.Linear)  # per-token modulation stays bf16
    assert isinstance(model.context_embedder.proj_in, torch.nn.Linear)


def test_inductor_options_only_name_known_settings():
    import torch._inductor.config as config

    options = inductor_options(True)
    assert options and all(key in config._config for key in options)
    assert inductor_options(False) == {}


def test_compile_cache_key_changes_with_what_changes_the_kernels():
    base = ("2.11.0+cu130", "NVIDIA H200", torch.bfloat16, "eager-rounding")
    key = compile_cache_key(*base)
    assert key == compile_cache_key(*base) and key == "2.11.0_cu130-NVIDIA_H200-bfloat16-eager_rounding"
    others = [("2.13.0+cu130", *base[1:]), (base[0], "NVIDIA H100 80GB HBM3", *base[2:]), (*base[:2], torch.float16, base[3]), (*base[:3], "fused")]
    assert len({key, *(compile_cache_key(*other) for other in others)}) == 5
    assert "/" not in compile_cache_key("2.11", "GPU/with slash", torch.float32, "fused")


def test_compile_cache_folder_follows_the_model_and_keeps_the_users(tmp_path, monkeypatch):
    from conftest import HUB

    from fpgen.loading import load_transformer

    monkeypatch.setattr(acceleration, "COMPILE_CACHE", tmp_path / "inductor")
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what inductor leaves there once it has looked
    model = load_transformer(HUB / "lllyasviel/FramePackI2V_HY", torch.float32)
    compile_blocks(model)  # compiling itself waits for the first call
    exact = acceleration.os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert exact == str(tmp_path / "inductor" / compile_cache_key(torch.__version__, "cpu", torch.float32, "eager-rounding"))
    compile_blocks(model, match_eager_rounding=False)
    assert acceleration.os.environ["TORCHINDUCTOR_CACHE_DIR"] == exact.replace("eager_rounding", "fused")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_blocks(model)
    assert acceleration.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compile_blocks_finds_every_family_s_blocks(tmp_path, monkeypatch):
    """FramePack's two block lists and Helios' one are compiled, each block in place; the rest stays eager."""
    from conftest import HUB
    from heliosmodels import tiny_transformer

    from fpgen.loading import load_transformer

    monkeypatch.setattr(acceleration, "COMPILE_CACHE", tmp_path / "inductor")
    framepack, helios = load_transformer(HUB / "lllyasviel/FramePackI2V_HY", torch.float32), tiny_transformer()
    for model, lists in ((framepack, ("transformer_blocks", "single_transformer_blocks")), (helios, ("blocks",))):
        compile_blocks(model)
        blocks = [block for name in lists for block in getattr(model, name)]
        assert len(blocks) >= 2 and all(block._compiled_call_impl is not None for block in blocks)
        assert sum(module._compiled_call_impl is not None for module in model.modules()) == len(blocks)


def test_streaming_loader_reads_every_weight_once(monkeypatch):
    """The low-vram loader assembles the same transformer as from_pretrained (pinning replaced: no GPU here)."""
    import fpgen.offload as offload
    from conftest import HUB

    from fpgen.loading import load_transformer

    chunks = []
    monkeypatch.setattr(offload, "pinned_bytes", lambda count: chunks.append(torch.empty(count, dtype=torch.uint8)) or chunks[-1])
    monkeypatch.setattr(offload, "PINNED_CHUNK_BYTES", 2**16)  # several chunks even for the tiny model
    path = HUB / "lllyasviel/FramePackI2V_HY"
    streamed = offload.load_transformer_for_streaming(path, torch.float32, torch.device("cpu")).state_dict()
    reference = load_transformer(path, torch.float32).state_dict()
    assert streamed.keys() == reference.keys()
    assert all(torch.equal(streamed[k], reference[k]) for k in reference)
    block_weights = [k for k in reference if k.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    in_chunks = {k for k in reference if any(streamed[k].untyped_storage().data_ptr() == c.untyped_storage().data_ptr() for c in chunks)}
    assert in_chunks == set(block_weights)  # exactly the blocks' weights go to pinned memory, each once
    weight_bytes = sum(reference[k].numel() * reference[k].element_size() for k in block_weights)
    assert len(chunks) > 1 and len(chunks) * 2**16 < weight_bytes + 2**16 + len(block_weights) * offload.ALIGNMENT  # no power-of-two waste


def test_streamed_blocks_keep_host_weights_apart_from_the_parameters(monkeypatch):
    """The streamer repoints parameters at GPU copies; its host tensors must not follow (they did once,
    when the loader had pinned the weights already, and every block then stayed on the GPU)."""
    import fpgen.offload as offload

    from fpgen.loading import load_transformer

    model = load_transformer(__import__("conftest").HUB / "lllyasviel/FramePackI2V_HY", torch.float32)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)  # as if the loader had pinned them (no GPU here)
    streamed = offload.StreamedBlockStack(model, torch.device("cpu"))
    block, host = streamed.order[0], streamed.host[0]
    params = dict(block.named_parameters())
    assert all(host[name] is not params[name] for name in host)
    before = {name: tensor.clone() for name, tensor in host.items()}
    stand_in = {name: torch.zeros_like(tensor) for name, tensor in host.items()}  # what a GPU copy would be
    streamed._point(block, stand_in)
    assert all(torch.equal(host[name], before[name]) for name in host)  # the host weights did not move
    streamed._point(block, host)
    assert all(torch.equal(params[name], before[name]) for name in host)
