"""The demo hub's text side (demo/build.py): a word-level tokenizer that keeps the template prefix, a Llama whose hidden_states[-3] are the word vectors."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fpgen.conditioning import PROMPT_CROP, PROMPT_TEMPLATE, encode_prompt
from fpgen.loading import load_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where demo/ lives
from demo import build  # noqa: E402

WORDS = ["camera", "pans", "slowly", "to", "the", "left", "zooms", "in"]


def test_identity_llama_hands_back_the_word_vectors(tmp_path):
    vectors = torch.randn((len(WORDS), build.TEXT_DIM), generator=torch.Generator().manual_seed(0))
    build.build_text(tmp_path, WORDS, vectors)
    repo = tmp_path / build.HUNYUAN
    tokenizer, tokenizer_2 = load_tokenizers({"tokenizer": repo / "tokenizer", "tokenizer_2": repo / "tokenizer_2"})  # checks the 95-token prefix
    assert len(tokenizer(PROMPT_TEMPLATE.split("{}")[0])["input_ids"]) == PROMPT_CROP == 95
    assert tokenizer(" wobbling")["input_ids"] == [build.BOS, build.UNK]
    from transformers import CLIPTextModel, LlamaModel

    llama, clip = LlamaModel.from_pretrained(repo / "text_encoder"), CLIPTextModel.from_pretrained(repo / "text_encoder_2")
    prompt = "The camera pans slowly to the LEFT, wobbling"
    embedding = encode_prompt(prompt, tokenizer, llama, tokenizer_2, clip)
    ids = tokenizer(prompt)["input_ids"][1:]  # without BOS: 7 known words, the template's ",", and one unknown word
    assert len(ids) == 9 and ids.count(build.UNK) == 1 and ids[-1] == build.UNK
    assert embedding.tokens == len(ids) + 1  # and the template's closing <|eot_id|>
    rows = llama.embed_tokens.weight
    assert torch.equal(embedding.embeds[0, : embedding.tokens], rows[ids + [tokenizer.convert_tokens_to_ids("<|eot_id|>")]])  # hidden_states[-3] are the rows, exactly
    assert tokenizer("the Camera")["input_ids"] == tokenizer("THE camera")["input_ids"]  # lower-cased
    for word, vector in zip(WORDS, vectors):
        assert torch.equal(rows[tokenizer(" " + word)["input_ids"][1]], vector)  # each word's row is its vector
    assert embedding.pooled.shape == (1, build.CLIP_DIM)


def test_the_shipped_demo_unpacks_and_a_stopped_runs_ema_weights_export_into_the_hub(tmp_path):
    """Round 2 of the demo continued from the package (``--part unpack``) and exported runs the time limit had
    stopped from their newest checkpoint's EMA weights (``export_transformer`` without a result folder)."""
    import pytest
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from fpgen.registry import DEMO_FOLDER
    from fpgen.tensorfile import load_tensors, save_tensors

    hub = tmp_path / "hub"
    build.unpack(DEMO_FOLDER, hub)
    shipped = load_tensors(next((DEMO_FOLDER / "transformer").glob("*00001-of-*.safetensors")))[0]
    for order in ("inverted", "forward"):  # both orders start from the shipped transformer
        copied = load_tensors(next((hub / build.TRANSFORMER_REPOS[order]).glob("*00001-of-*.safetensors")))[0]
        assert all(torch.equal(copied[name], tensor) for name, tensor in shipped.items())

    model = HunyuanVideoFramepackTransformer3DModel.from_config(build.transformer_config(hub / build.TRANSFORMER_REPOS["forward"]))  # the shipped shape
    averaged = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    run = tmp_path / "run"
    for step in (250, 500):
        (run / "checkpoints" / f"step-{step:07d}").mkdir(parents=True)
        save_tensors(run / "checkpoints" / f"step-{step:07d}" / "ema.safetensors", {k: v * step for k, v in averaged.items()})
    assert build.export_transformer(run, hub, "forward")["steps"] == 500
    exported = HunyuanVideoFramepackTransformer3DModel.from_pretrained(str(hub / build.TRANSFORMER_REPOS["forward"]), torch_dtype=torch.float32)
    assert all(torch.equal(p, (averaged[name] * 500).bfloat16().float()) for name, p in exported.named_parameters())

    del averaged["proj_out.weight"]
    save_tensors(run / "checkpoints" / "step-0000500" / "ema.safetensors", averaged)
    with pytest.raises(SystemExit, match="proj_out.weight"):
        build.export_transformer(run, hub, "forward")


def test_growing_the_transformer_keeps_what_it_computes_and_export_reads_the_grown_shape(tmp_path):
    """``--part grow`` (the demo's round 9: more blocks, what rounds 1-8 learnt kept): the grown transformer's output
    equals the original's exactly, its new blocks are copies with zero modulation, and a run on it exports."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from fpgen.tensorfile import save_tensors

    assert build.spread(6, 12) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and build.spread(3, 4) == [0, 1, 2, 2] and build.spread(2, 2) == [0, 1]
    folder = tmp_path / build.TRANSFORMER_REPOS["inverted"]
    torch.manual_seed(0)
    small = {**build.TRANSFORMER, "num_layers": 2, "num_single_layers": 2}
    original = HunyuanVideoFramepackTransformer3DModel(**small)
    with torch.no_grad():
        for p in original.parameters():  # trained-looking weights: no zero projections, so every block acts
            p.copy_(torch.randn_like(p) * 0.05)
    build.save_transformer(original.to(torch.bfloat16), folder)
    before = HunyuanVideoFramepackTransformer3DModel.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    build.grow_transformer(folder, 3, 5)
    after = HunyuanVideoFramepackTransformer3DModel.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    assert (len(after.transformer_blocks), len(after.single_transformer_blocks)) == (3, 5)
    assert not after.single_transformer_blocks[1].norm.linear.weight.any() and after.single_transformer_blocks[0].norm.linear.weight.any()

    inputs = {
        "hidden_states": torch.randn(1, 16, 2, 8, 8), "timestep": torch.tensor([500.0]), "encoder_hidden_states": torch.randn(1, 7, build.TEXT_DIM),
        "encoder_attention_mask": torch.ones(1, 7, dtype=torch.bool), "pooled_projections": torch.randn(1, build.CLIP_DIM),
        "image_embeds": torch.randn(1, 4, build.IMAGE_DIM), "indices_latents": torch.arange(2), "guidance": torch.tensor([1000.0]),
        "latents_clean": torch.randn(1, 16, 2, 8, 8), "indices_latents_clean": torch.tensor([2, 3]),
        "latents_history_2x": torch.randn(1, 16, 2, 8, 8), "indices_latents_history_2x": torch.tensor([4, 5]),
        "latents_history_4x": torch.randn(1, 16, 4, 8, 8), "indices_latents_history_4x": torch.tensor([6, 7, 8, 9]),
    }  # fmt: skip
    with torch.no_grad():
        expected, grown = before(**inputs, return_dict=False)[0], after(**inputs, return_dict=False)[0]
    assert expected.abs().mean() > 0.01 and torch.equal(grown, expected)

    run = tmp_path / "run" / "checkpoints" / "step-0000100"
    run.mkdir(parents=True)
    save_tensors(run / "ema.safetensors", {name: p.detach() + 1 for name, p in after.named_parameters()})
    assert build.export_transformer(tmp_path / "run", tmp_path, "inverted")["steps"] == 100
    exported = HunyuanVideoFramepackTransformer3DModel.from_pretrained(str(folder), torch_dtype=torch.float32)
    assert len(exported.single_transformer_blocks) == 5 and torch.equal(exported.single_transformer_blocks[1].norm.linear.weight, (after.single_transformer_blocks[1].norm.linear.weight + 1).bfloat16().float())
