"""LoRA files: our layout is diffusers', musubi-tuner's converts both ways unchanged, foreign files are refused."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from conftest import GOLDEN
from helpers import TRANSFORMER, assert_one_line_error, tiny_transformer_with_lora
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fpgen.errors import ExitCode, InputError
from fpgen.loading import load_transformer
from fpgen.lora import LoraChoice, apply_loras, merge_lora, module_from_musubi, musubi_name, read_lora, write_lora, write_musubi
from fpgen.packing import pack_section
from fpgen.plan import plan_sections
from fpgen.training.adapters import lora_of
from fpgen.transformer import BlockStack, Conditioning, packed_forward


@functools.cache
def loaded():
    return load_transformer(TRANSFORMER, torch.float32)


def tiny():
    """A fresh copy of the tiny transformer (copying is far cheaper than loading)."""
    return copy.deepcopy(loaded())


def trained_lora(rank: int = 4, alpha: float = 2.0):
    """A LoRA as the trainer saves it, with random (non-zero) weights standing in for training."""
    return lora_of(tiny_transformer_with_lora(rank, alpha), alpha, info=json.dumps({"base_model": "framepack"}))


def forward(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    video = torch.randn((1, 16, 7, 4, 6), generator=generator)
    context = pack_section("inverted", video, plan_sections(2, 3, "inverted").sections[1], 3)
    cond = Conditioning(torch.randn((1, 5, 32), generator=generator), torch.ones((1, 5), dtype=torch.bool), torch.randn((1, 16), generator=generator), torch.randn((1, 3, 24), generator=generator))
    with torch.no_grad():
        return packed_forward(model, video[:, :, 1:4], torch.tensor([700.0]), torch.tensor([1000.0]), cond, context, BlockStack(model))


def assert_same_file(a, b) -> None:
    """Same tensors bit for bit and same header metadata (safetensors orders the header differently run to run)."""
    with safe_open(str(a), "pt") as left, safe_open(str(b), "pt") as right:
        assert left.metadata() == right.metadata()
        assert sorted(left.keys()) == sorted(right.keys())
        for key in left.keys():
            x, y = left.get_tensor(key), right.get_tensor(key)
            assert x.dtype == y.dtype and torch.equal(x, y), key


def test_every_block_linear_has_a_musubi_name_and_back():
    names = [n for n, m in tiny().named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[0] in ("transformer_blocks", "single_transformer_blocks")]
    assert len(names) == 2 * 14 + 2 * 6
    for name in names:
        assert module_from_musubi(musubi_name(name)) == name
    assert musubi_name("transformer_blocks.0.attn.to_q") == "lora_unet_transformer_blocks_0_attn_to_q"
    assert module_from_musubi("lora_unet_single_transformer_blocks_3_proj_mlp") == "single_transformer_blocks.3.proj_mlp"
    assert module_from_musubi("lora_unet_double_blocks_0_img_attn_qkv") == "double_blocks.0.img_attn_qkv"  # HunyuanVideo's, mapped on reading
    assert module_from_musubi("lora_unet_single_blocks_7_modulation_linear") == "single_blocks.7.modulation.linear"
    assert module_from_musubi("lora_unet_double_blocks_0_img_mlp_0") is None  # Flux's MLP: no such module in HunyuanVideo


def test_round_trip_through_musubi_is_identical(cli, tmp_path):
    ours = write_lora(tmp_path / "lora.safetensors", trained_lora())
    musubi, back = tmp_path / "musubi.safetensors", tmp_path / "back.safetensors"
    assert cli("lora", "convert", ours, musubi, "--to", "musubi").returncode == 0
    proc = cli("lora", "convert", musubi, back, "--to", "diffusers", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source_layout"] == "musubi"
    assert_same_file(back, ours)  # tensors (with their dtypes), alphas and metadata

    keys = load_file(musubi)
    assert set(keys) >= {"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight", "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight",
                         "lora_unet_transformer_blocks_0_attn_to_q.alpha", "lora_unet_single_transformer_blocks_1_proj_out.lora_up.weight"}  # fmt: skip
    assert keys["lora_unet_transformer_blocks_0_attn_to_q.alpha"].item() == 2.0
    assert not any("norm" in k for k in keys)  # the default targets leave the modulation layers alone, as musubi does
    original, layout = read_lora(ours)
    assert layout == "diffusers" and len(original.modules) == 2 * 12 + 2 * 5
    assert_one_line_error(cli("lora", "convert", ours, musubi, "--to", "musubi"), ExitCode.USAGE, "already exists", "--overwrite")


def test_convert_to_bf16_halves_the_file(cli, tmp_path):
    """--dtype bf16 stores every matrix rounded to bfloat16 and keeps the metadata (alphas, provenance)."""
    ours = write_lora(tmp_path / "lora.safetensors", trained_lora())
    half = tmp_path / "half.safetensors"
    proc = cli("lora", "convert", ours, half, "--to", "diffusers", "--dtype", "bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    full, small = load_file(ours), load_file(half)
    data = sum(value.numel() * value.element_size() for value in full.values())
    assert json.loads(proc.stdout)["bytes"] == half.stat().st_size < ours.stat().st_size - 0.45 * data  # half the weights' bytes (the header stays)
    assert sorted(full) == sorted(small)
    for key, value in full.items():
        assert value.dtype == torch.float32 and small[key].dtype == torch.bfloat16 and torch.equal(small[key], value.to(torch.bfloat16)), key
    with safe_open(str(ours), "pt") as left, safe_open(str(half), "pt") as right:
        assert left.metadata() == right.metadata()
    (exact, _), (rounded, _) = read_lora(ours), read_lora(half)
    for name, module in exact.modules.items():
        delta = module.delta("cpu")
        assert 0 < (rounded.modules[name].delta("cpu") - delta).norm() < 0.01 * delta.norm(), name
    assert_one_line_error(cli("lora", "convert", ours, tmp_path / "x.safetensors", "--to", "diffusers", "--dtype", "int8"), ExitCode.USAGE, "unknown --dtype", "bf16")


def test_lora_info(cli, tmp_path):
    shown = json.loads(cli("lora", "info", write_musubi(tmp_path / "m.safetensors", trained_lora(rank=4, alpha=2.0)), "--json").stdout)
    assert (shown["layout"], shown["modules"], shown["rank"], shown["alpha"], shown["trained"]) == ("musubi", 34, 4, 2.0, {"base_model": "framepack"})


def test_our_file_is_what_diffusers_loads(tmp_path):
    """diffusers' own loader reads our file (keys and alpha) and computes what our merge computes."""
    lora = trained_lora(rank=4, alpha=2.0)
    write_lora(tmp_path / "lora.safetensors", lora)
    with_diffusers = tiny()
    with_diffusers.load_lora_adapter(str(tmp_path), weight_name="lora.safetensors", prefix="transformer", adapter_name="mine")
    merged = tiny()
    merge_lora(merged, lora)
    base = forward(tiny())
    expected = forward(with_diffusers)
    assert (expected - base).abs().max() > 1e-2  # the LoRA does something
    assert torch.allclose(forward(merged), expected, atol=1e-5, rtol=1e-4)


def test_musubi_file_merges_exactly_like_ours(tmp_path):
    lora = trained_lora()
    ours, musubi = tiny(), tiny()
    apply_loras(ours, [(read_lora(write_lora(tmp_path / "a.safetensors", lora))[0], LoraChoice(tmp_path / "a.safetensors", 0.7))])
    apply_loras(musubi, [(read_lora(write_musubi(tmp_path / "b.safetensors", lora))[0], LoraChoice(tmp_path / "b.safetensors", 0.7))])
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), musubi.state_dict().values()))
    zero = tiny()
    merge_lora(zero, lora, scale=0.0)
    assert all(torch.equal(a, b) for a, b in zip(zero.state_dict().values(), tiny().state_dict().values()))


def _foreign(tmp_path, name: str, tensors: dict) -> str:
    path = tmp_path / name
    save_file({k: v.clone() for k, v in tensors.items()}, str(path))
    return path


def test_foreign_keys_are_errors_that_name_them(tmp_path):
    weight = torch.zeros(4, 32)
    full_model = _foreign(tmp_path, "model.safetensors", {"x_embedder.proj.weight": weight, "transformer_blocks.0.attn.to_q.weight": weight})
    with pytest.raises(InputError, match="not LoRA weights: transformer_blocks.0.attn.to_q.weight, x_embedder.proj.weight"):
        read_lora(full_model)
    flux = _foreign(tmp_path, "flux.safetensors", {"lora_unet_double_blocks_0_img_mlp_0.lora_down.weight": weight, "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight": torch.zeros(128, 4)})
    with pytest.raises(InputError, match="not musubi-tuner FramePack or HunyuanVideo LoRA modules: lora_unet_double_blocks_0_img_mlp_0"):
        read_lora(flux)
    half = _foreign(tmp_path, "half.safetensors", {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": weight})
    with pytest.raises(InputError, match="miss their down or up matrix: transformer.transformer_blocks.0.attn.to_q"):
        read_lora(half)

    elsewhere = _foreign(tmp_path, "other.safetensors", {"transformer.transformer_blocks.9.attn.to_q.lora_A.weight": weight, "transformer.transformer_blocks.9.attn.to_q.lora_B.weight": torch.zeros(32, 4),
                                                         "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": weight, "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(32, 4)})  # fmt: skip
    model = tiny()
    with pytest.raises(InputError, match="modules this transformer does not have: transformer_blocks.9.attn.to_q"):
        apply_loras(model, [(read_lora(elsewhere)[0], LoraChoice(elsewhere))])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny().state_dict().values()))  # nothing half-applied

    wide = _foreign(tmp_path, "wide.safetensors", {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64), "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4)})
    with pytest.raises(InputError, match="64 in the LoRA but 32x32 in the model"):
        apply_loras(tiny(), [(read_lora(wide)[0], LoraChoice(wide))])


def test_generate_refuses_a_foreign_lora_in_one_line(cli, tmp_path):
    flux = _foreign(tmp_path, "flux.safetensors", {"lora_unet_double_blocks_0_img_mlp_0.lora_down.weight": torch.zeros(4, 32), "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight": torch.zeros(128, 4)})
    proc = cli("generate", GOLDEN / "input.png", "--lora", f"{flux}:0.8", "-o", "out.mp4")
    assert_one_line_error(proc, ExitCode.USAGE, "flux.safetensors", "lora_unet_double_blocks_0_img_mlp_0", "musubi-tuner")
    assert not (tmp_path / "out.mp4").exists()
    missing = cli("generate", GOLDEN / "input.png", "--lora", "nope.safetensors", "-o", "out.mp4")
    assert_one_line_error(missing, ExitCode.USAGE, "LoRA not found", "nope.safetensors")


def test_generate_refuses_a_helios_lora_on_framepack(cli, tmp_path):
    """LoRAs are told apart by the block list they name (``blocks.`` is Helios'), before any model loads."""
    helios = _foreign(tmp_path, "wan.safetensors", {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32), "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4)})
    proc = cli("generate", GOLDEN / "input.png", "--lora", helios, "-o", "out.mp4")
    assert_one_line_error(proc, ExitCode.USAGE, "wan.safetensors is a Helios LoRA", "FramePack model")


def test_lora_option_parsing():
    assert LoraChoice.parse("a.safetensors") == LoraChoice(GOLDEN.__class__("a.safetensors"), 1.0)
    assert LoraChoice.parse("runs/x/lora.safetensors:0.5").scale == 0.5
    assert LoraChoice.parse("C:/loras/x.safetensors") == LoraChoice(GOLDEN.__class__("C:/loras/x.safetensors"), 1.0)
    assert LoraChoice.parse("C:/loras/x.safetensors:-1").scale == -1.0


def test_peft_adapter_folders_are_read_with_their_alpha(tmp_path):
    """peft's own save (adapter_model.safetensors + adapter_config.json) keeps alpha out of the weights file."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "proj_mlp"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    lora, layout = read_lora(tmp_path / "adapter")
    assert layout == "diffusers" and len(lora.modules) == 2 + 2 + 1 + 2  # to_q of both block kinds and of the refiner, proj_mlp
    assert {m.alpha for m in lora.modules.values()} == {8.0} and {m.rank for m in lora.modules.values()} == {4}
    merged = tiny()
    merge_lora(merged, lora)
    assert torch.allclose(forward(merged), forward(model.base_model.model), atol=1e-5, rtol=1e-4)
