"""Every LoRA layout users have: each file is written here, with the exact key conversions, from one random
diffusers-keyed LoRA (or peft adapter), and must merge to the same weights as that diffusers equivalent."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_lora import loaded, tiny

from fpgen.errors import InputError
from fpgen.lora import Lora, LoraChoice, LoraModule, apply_loras, lora_notes, merge_lora, read_lora, write_lora

RANK, ALPHA = 2, 3.0




def original_modules() -> dict[str, tuple[str, ...]]:
    """HunyuanVideo's original modules (the tiny model's 2 double, 2 single, 1 refiner block) -> the diffusers
    modules whose output rows they hold, in row order; as Tencent's code and diffusers' converter name them."""
    names = {}
    for i in range(2):
        d = f"transformer_blocks.{i}."
        names |= {
            f"double_blocks.{i}.img_attn_qkv": (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"),
            f"double_blocks.{i}.txt_attn_qkv": (d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"),
            f"double_blocks.{i}.img_attn_proj": (d + "attn.to_out.0",), f"double_blocks.{i}.txt_attn_proj": (d + "attn.to_add_out",),
            f"double_blocks.{i}.img_mlp.fc1": (d + "ff.net.0.proj",), f"double_blocks.{i}.img_mlp.fc2": (d + "ff.net.2",),
            f"double_blocks.{i}.txt_mlp.fc1": (d + "ff_context.net.0.proj",), f"double_blocks.{i}.txt_mlp.fc2": (d + "ff_context.net.2",),
            f"double_blocks.{i}.img_mod.linear": (d + "norm1.linear",), f"double_blocks.{i}.txt_mod.linear": (d + "norm1_context.linear",),
        }  # fmt: skip
        s = f"single_transformer_blocks.{i}."
        names |= {
            f"single_blocks.{i}.linear1": (s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"),
            f"single_blocks.{i}.linear2": (s + "proj_out",), f"single_blocks.{i}.modulation.linear": (s + "norm.linear",),
        }  # fmt: skip
    r, o = "context_embedder.token_refiner.refiner_blocks.0.", "txt_in.individual_token_refiner.blocks.0."
    names |= {
        o + "self_attn_qkv": (r + "attn.to_q", r + "attn.to_k", r + "attn.to_v"), o + "self_attn_proj": (r + "attn.to_out.0",),
        o + "mlp.fc1": (r + "ff.net.0.proj",), o + "mlp.fc2": (r + "ff.net.2",), o + "adaLN_modulation.1": (r + "norm_out.linear",),
        "txt_in.input_embedder": ("context_embedder.proj_in",),
        "txt_in.t_embedder.mlp.0": ("context_embedder.time_text_embed.timestep_embedder.linear_1",), "txt_in.t_embedder.mlp.2": ("context_embedder.time_text_embed.timestep_embedder.linear_2",),
        "txt_in.c_embedder.linear_1": ("context_embedder.time_text_embed.text_embedder.linear_1",), "txt_in.c_embedder.linear_2": ("context_embedder.time_text_embed.text_embedder.linear_2",),
        "time_in.mlp.0": ("time_text_embed.timestep_embedder.linear_1",), "time_in.mlp.2": ("time_text_embed.timestep_embedder.linear_2",),
        "guidance_in.mlp.0": ("time_text_embed.guidance_embedder.linear_1",), "guidance_in.mlp.2": ("time_text_embed.guidance_embedder.linear_2",),
        "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",), "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
        "final_layer.linear": ("proj_out",), "final_layer.adaLN_modulation.1": ("norm_out.linear",),
    }  # fmt: skip
    return names


def shift_scale_swapped(up: torch.Tensor) -> torch.Tensor:
    """diffusers' final norm gives scale then shift, HunyuanVideo's shift then scale."""
    half = up.shape[0] // 2
    return torch.cat([up[half:], up[:half]])


def random_diffusers_lora(model) -> tuple[Lora, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A random diffusers-keyed LoRA on every module HunyuanVideo has (the layers fused there share a down
    matrix), and the same LoRA as HunyuanVideo's original modules: {original name: (down, fused up)}."""
    layers, generator = dict(model.named_modules()), torch.Generator().manual_seed(0)
    modules, original = {}, {}
    for name, targets in original_modules().items():
        down = torch.randn((RANK, layers[targets[0]].in_features), generator=generator)
        ups = [torch.randn((layers[t].out_features, RANK), generator=generator) for t in targets]
        modules |= {target: LoraModule(down, up, ALPHA) for target, up in zip(targets, ups)}
        original[name] = (down, shift_scale_swapped(ups[0]) if name == "final_layer.adaLN_modulation.1" else torch.cat(ups))
    return Lora(modules), original


def merged(lora: Lora, scale: float = 0.7):
    model = tiny()
    merge_lora(model, lora, scale)
    return model.state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, different[:4]


def kohya(name: str) -> str:
    return "lora_unet_" + name.replace(".", "_")


def test_hunyuanvideo_layouts_merge_like_their_diffusers_equivalent(cli, tmp_path):
    reference, original = random_diffusers_lora(loaded())
    expected, base = merged(reference), loaded().state_dict()
    assert sum(not torch.equal(w, base[k]) for k, w in expected.items()) == len(reference.modules) == 2 * 14 + 2 * 6 + 7 + 13

    diffusers = write_lora(tmp_path / "diffusers.safetensors", reference)  # diffusers' HunyuanVideo keys are FramePack's
    (tmp_path / "pipe").mkdir()  # diffusion-pipe: peft keys on the original names, alpha in adapter_config.json
    save_file({f"diffusion_model.{n}.lora_{ab}.weight": t.contiguous() for n, (down, up) in original.items() for ab, t in (("A", down), ("B", up))}, str(tmp_path / "pipe" / "adapter_model.safetensors"))
    (tmp_path / "pipe" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA}))
    comfy = {f"diffusion_model.{n}.{key}": t.contiguous() for n, (down, up) in original.items() for key, t in (("lora_down.weight", down), ("lora_up.weight", up), ("alpha", torch.tensor(ALPHA)))}
    comfy |= {"diffusion_model.img_in.proj.lora_down.weight": torch.zeros(RANK, 16, 1, 2, 2), "diffusion_model.img_in.proj.lora_up.weight": torch.zeros(32, RANK, 1, 1, 1)}  # a conv in FramePack
    save_file(comfy, str(tmp_path / "comfy.safetensors"))
    blocks = {n: pair for n, pair in original.items() if n.startswith(("double_blocks.", "single_blocks."))}  # musubi-tuner/kohya adapt the blocks
    musubi = {f"{kohya(n)}.{key}": t.contiguous() for n, (down, up) in blocks.items() for key, t in (("lora_down.weight", down), ("lora_up.weight", up), ("alpha", torch.tensor(ALPHA)))}
    save_file(musubi, str(tmp_path / "musubi.safetensors"))

    for path, layout in ((diffusers, "diffusers"), (tmp_path / "pipe", "hunyuanvideo"), (tmp_path / "comfy.safetensors", "hunyuanvideo")):
        lora, found = read_lora(path)
        assert found == layout and lora.modules.keys() == reference.modules.keys(), path
        assert_same_weights(merged(lora), expected)
    lora, found = read_lora(tmp_path / "musubi.safetensors")
    assert found == "hunyuanvideo-kohya"
    assert_same_weights(merged(lora), merged(Lora({n: m for n, m in reference.modules.items() if "_blocks." in n and "refiner" not in n})))

    shown = json.loads(cli("lora", "info", tmp_path / "comfy.safetensors", "--json").stdout)
    assert (shown["keys"], shown["skipped"]) == (3 * len(original) + 2, ["diffusion_model.img_in.proj.lora_down.weight", "diffusion_model.img_in.proj.lora_up.weight"])
    line = cli("lora", "info", tmp_path / "comfy.safetensors").stdout
    assert f"{3 * len(original)} keys applied to {len(reference.modules)} FramePack modules, 2 skipped because FramePack has no such module: diffusion_model.img_in.proj" in line
    comfy_lora = read_lora(tmp_path / "comfy.safetensors")[0]
    assert lora_notes([(comfy_lora, LoraChoice(tmp_path / "c.safetensors")), (reference, LoraChoice(diffusers))]) == (comfy_lora.summary(str(tmp_path / "c.safetensors")),)  # what generate prints
    proc = cli("lora", "convert", tmp_path / "musubi.safetensors", tmp_path / "as_diffusers.safetensors", "--to", "diffusers")
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(merged(read_lora(tmp_path / "as_diffusers.safetensors")[0]), merged(lora))


def test_the_mapping_is_diffusers_converters(tmp_path):
    """diffusers' ``_convert_hunyuan_video_lora_to_diffusers`` gives the same keys and tensors, except where it cannot be
    compared: it splits ``linear1`` at a hidden size of 3072 (the tiny model's is 32), and for the refiner's qkv and the
    final modulation it also splits or swaps the down matrix, which changes the product (ours keeps it whole)."""
    from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers

    _, original = random_diffusers_lora(loaded())
    kept = {n: pair for n, pair in original.items() if not n.endswith("linear1") and not n.startswith("txt_in.individual_token_refiner")}
    file = {f"diffusion_model.{n}.lora_{ab}.weight": t for n, (down, up) in kept.items() for ab, t in (("A", down), ("B", up))}
    save_file({k: t.contiguous() for k, t in file.items()}, str(tmp_path / "hv.safetensors"))
    theirs = _convert_hunyuan_video_lora_to_diffusers(dict(file))
    ours = {f"transformer.{n}.lora_{ab}.weight": t for n, m in read_lora(tmp_path / "hv.safetensors")[0].modules.items() for ab, t in (("A", m.down), ("B", m.up))}
    assert ours.keys() == theirs.keys() and len(ours) == 2 * (len(kept) + 2 * 2 * 2)  # each qkv is three modules
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == ["transformer.norm_out.linear.lora_A.weight"]


def test_a_lora_of_another_model_is_refused_by_name(tmp_path):
    """Flux names its blocks as HunyuanVideo does but its layers otherwise: no such module, nothing applied."""
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(RANK, 32), "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(96, RANK)}, str(tmp_path / "flux.safetensors"))
    model = tiny()
    with pytest.raises(InputError, match="modules this transformer does not have: double_blocks.0.img_attn.qkv"):
        apply_loras(model, [(read_lora(tmp_path / "flux.safetensors")[0], LoraChoice(tmp_path / "flux.safetensors"))])
    attention_only = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(RANK, 32), "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(96, RANK)}
    save_file(attention_only, str(tmp_path / "flux_kohya.safetensors"), metadata={"modelspec.architecture": "flux-1-dev/lora"})
    with pytest.raises(InputError, match=r"flux_kohya.safetensors is a LoRA for flux-1-dev/lora \(its modelspec.architecture\), not for FramePack or HunyuanVideo"):
        read_lora(tmp_path / "flux_kohya.safetensors")
    save_file(attention_only, str(tmp_path / "hv_kohya.safetensors"), metadata={"modelspec.architecture": "hunyuan_video/lora"})
    assert read_lora(tmp_path / "hv_kohya.safetensors")[1] == "hunyuanvideo-kohya"
    save_file({"lora_unet_single_blocks_0_linear1.lora_down.weight": torch.zeros(RANK, 32), "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.zeros(64, RANK)}, str(tmp_path / "small.safetensors"))
    with pytest.raises(InputError, match="single_blocks.0.linear1's update has 64 output rows, which do not split into FramePack's layers"):
        read_lora(tmp_path / "small.safetensors")
    save_file({"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight": torch.zeros(RANK, 32), "lora_unet_transformer_blocks_0_attn_to_q.dora_scale": torch.zeros(1, 32),
               "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight": torch.zeros(32, RANK)}, str(tmp_path / "dora.safetensors"))  # fmt: skip
    with pytest.raises(InputError, match="not LoRA weights: lora_unet_transformer_blocks_0_attn_to_q.dora_scale"):
        read_lora(tmp_path / "dora.safetensors")


def test_loha_and_lokr_merge_as_peft_merges_them(tmp_path):
    """peft's LoHa (saved by peft, alpha in adapter_config.json) and LoKr (written as LyCORIS/kohya keys) adapters."""
    from peft import LoHaConfig, LoKrConfig, get_peft_model, get_peft_model_state_dict

    torch.manual_seed(0)
    loha = get_peft_model(tiny(), LoHaConfig(r=RANK, alpha=ALPHA, target_modules=["to_q", "proj_mlp"], init_weights=False))
    loha.save_pretrained(tmp_path / "loha")
    lora, layout = read_lora(tmp_path / "loha")
    assert layout == "diffusers LoHa" and len(lora.modules) == 2 + 2 + 1 + 2
    with_peft = {k: v.clone() for k, v in loha.merge_and_unload().state_dict().items()}
    ours = merged(lora, 1.0)
    assert max((ours[k] - with_peft[k]).abs().max().item() for k in ours) < 1e-6
    base = loaded().state_dict()
    assert max((ours[k] - base[k]).abs().max().item() for k in ours) > 1e-2  # it does something

    lokr = get_peft_model(tiny(), LoKrConfig(r=RANK, alpha=ALPHA, target_modules=r"(single_)?transformer_blocks\.\d+\.attn\.to_(q|v)", init_weights=False))
    state = {key.removeprefix("base_model.model."): t for key, t in get_peft_model_state_dict(lokr).items()}
    names = {key.rsplit(".", 1)[0] for key in state}
    assert {key.rsplit(".", 1)[1] for key in state} == {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}  # w2 factored with inner size r
    lycoris = {kohya(key.rsplit(".", 1)[0]) + "." + key.rsplit(".", 1)[1]: t.contiguous() for key, t in state.items()} | {f"{kohya(n)}.alpha": torch.tensor(ALPHA) for n in names}
    save_file(lycoris, str(tmp_path / "lokr.safetensors"))
    lora, layout = read_lora(tmp_path / "lokr.safetensors")
    assert layout == "musubi LoKr" and len(lora.modules) == 8
    with_peft = lokr.merge_and_unload().state_dict()
    ours = merged(lora, 1.0)
    assert max((ours[k] - with_peft[k]).abs().max().item() for k in ours) < 1e-6


def test_fused_hunyuanvideo_loha_and_lokr_split_by_rows(tmp_path):
    generator = torch.Generator().manual_seed(3)

    def randn(*shape):
        return torch.randn(shape, generator=generator)

    loha = {"hada_w1_a": randn(96, RANK), "hada_w1_b": randn(RANK, 32), "hada_w2_a": randn(96, RANK), "hada_w2_b": randn(RANK, 32)}
    lokr = {"lokr_w1": randn(8, 4), "lokr_w2_a": randn(28, RANK), "lokr_w2_b": randn(RANK, 8)}  # kron: (224, 32), linear1's 3x32 + 128 rows
    save_file({f"lora_unet_double_blocks_1_img_attn_qkv.{k}": t for k, t in loha.items()} | {f"lora_unet_single_blocks_0_linear1.{k}": t for k, t in lokr.items()}
              | {"lora_unet_double_blocks_1_img_attn_qkv.alpha": torch.tensor(ALPHA), "lora_unet_single_blocks_0_linear1.alpha": torch.tensor(ALPHA)}, str(tmp_path / "lyco.safetensors"))  # fmt: skip
    lora, layout = read_lora(tmp_path / "lyco.safetensors")
    assert layout == "hunyuanvideo-kohya LoHa LoKr"
    with pytest.raises(InputError, match="LoHa and LoKr modules, which the diffusers layout cannot hold"):
        write_lora(tmp_path / "out.safetensors", lora)
    model, base = tiny(), tiny().state_dict()
    apply_loras(model, [(lora, LoraChoice(tmp_path / "lyco.safetensors", 0.5))])
    fused_loha = (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"]) * (ALPHA / RANK)
    fused_lokr = torch.kron(lokr["lokr_w1"], lokr["lokr_w2_a"] @ lokr["lokr_w2_b"]) * (ALPHA / RANK)
    parts = {f"transformer_blocks.1.attn.to_{x}": rows for x, rows in zip("qkv", fused_loha.split(32))}
    parts |= {f"single_transformer_blocks.0.{m}": rows for m, rows in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), fused_lokr.split([32, 32, 32, 128]))}
    weights = model.state_dict()
    for name, delta in parts.items():
        assert torch.allclose(weights[name + ".weight"] - base[name + ".weight"], 0.5 * delta, atol=1e-5), name
    assert sum(not torch.equal(weights[k], base[k]) for k in base) == len(parts)


def test_a_float8_base_is_merged_in_float32_and_requantized():
    """fp8 checkpoints keep their dtype: the update is added to the dequantized weight and rounded once."""
    generator = torch.Generator().manual_seed(5)
    model = tiny()
    layer = model.transformer_blocks[0].attn.to_q
    layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
    base = layer.weight.float()
    down, up = torch.randn((RANK, 32), generator=generator), torch.randn((32, RANK), generator=generator) * 0.05
    up[0] = 1e4  # row 0 is pushed past float8's largest value
    merge_lora(model, Lora({"transformer_blocks.0.attn.to_q": LoraModule(down, up, ALPHA)}))
    exact = base + up @ down * (ALPHA / RANK)
    result, big = layer.weight.float(), exact.abs() > 448
    assert layer.weight.dtype == torch.float8_e4m3fn and big.sum() > 16 and big[1:].sum() == 0
    assert torch.equal(result[big], 448.0 * exact[big].sign())  # saturated, no NaN or inf
    error = (result[~big] - exact[~big]).abs()
    assert (error <= exact[~big].abs() / 16 + 2**-9).all()  # one float8 rounding (3 mantissa bits) of the exact sum
    assert (result[1:] != base[1:]).float().mean() > 0.5  # the update survived the rounding
