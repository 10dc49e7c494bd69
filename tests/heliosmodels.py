"""Tiny random Helios repos in the real ones' layout (HeliosPipeline's model_index.json folders), built offline.

The configs are the real classes' with every width shrunk (2 layers, 2 heads of 16, a 32-wide UMT5);
the tokenizer is a real UMT5 (T5TokenizerFast) tokenizer over a small Unigram vocabulary built with
``tokenizers``; the VAE is ``AutoencoderKLWan`` at base width 8 with Wan's latent statistics shape.
Weights are random from a fixed seed, written with ``save_pretrained`` (safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hubcache import build_hf_cache

HELIOS_REPOS = {"helios": "BestWishYsh/Helios-Base", "helios-mid": "BestWishYsh/Helios-Mid", "helios-distilled": "BestWishYsh/Helios-Distilled"}
WORDS = "a the cat dog walks runs on in beach city night day red blue slowly camera moves sun rain".split()
TEXT_DIM = 32


def tiny_tokenizer():
    """A UMT5-style tokenizer (SentencePiece Unigram, metaspace, </s> appended) over a few words."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0 - i / 10) for i, w in enumerate(WORDS)]
    vocab += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz\u2581.,"]
    core = Tokenizer(models.Unigram(vocab, unk_id=2))
    core.normalizer = normalizers.Sequence([normalizers.Replace("  ", " ")])
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=core, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def tiny_text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    return UMT5EncoderModel(config)


def tiny_transformer():
    from diffusers import HeliosTransformer3DModel

    return HeliosTransformer3DModel(num_attention_heads=2, attention_head_dim=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2, rope_dim=(8, 4, 4))


def tiny_vae():
    from diffusers import AutoencoderKLWan

    stats = torch.Generator().manual_seed(7)
    mean = (torch.randn(16, generator=stats) * 0.5).tolist()
    std = (torch.rand(16, generator=stats) * 2 + 0.5).tolist()
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=mean, latents_std=std)


def tiny_scheduler(name: str):
    """Base: one-stage UniPC; Mid: three pyramid stages; Distilled: three stages with the DMD scheduler."""
    from diffusers import HeliosDMDScheduler, HeliosScheduler

    if name == "helios-distilled":
        return HeliosDMDScheduler(stages=3, use_dynamic_shifting=True)
    return HeliosScheduler(stages=1 if name == "helios" else 3, use_dynamic_shifting=True)


def write_repo(root: Path, name: str, seed: int = 0) -> None:
    """One tiny repo under ``root/<owner>/<name>`` with HeliosPipeline's folders."""
    torch.manual_seed(seed)
    repo = root / HELIOS_REPOS[name]
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(repo / "tokenizer")
    tiny_text_encoder(len(tokenizer)).save_pretrained(repo / "text_encoder", safe_serialization=True)
    tiny_transformer().save_pretrained(repo / "transformer", safe_serialization=True)
    tiny_vae().save_pretrained(repo / "vae", safe_serialization=True)
    tiny_scheduler(name).save_pretrained(repo / "scheduler")
    pipeline = "HeliosPipeline" if name == "helios" else "HeliosPyramidPipeline"
    scheduler = "HeliosDMDScheduler" if name == "helios-distilled" else "HeliosScheduler"
    index = {"_class_name": pipeline, "is_cfg_zero_star": name == "helios-mid", "is_distilled": name == "helios-distilled", "tokenizer": ["transformers", "T5TokenizerFast"], "text_encoder": ["transformers", "UMT5EncoderModel"],
             "transformer": ["diffusers", "HeliosTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"], "scheduler": ["diffusers", scheduler]}  # fmt: skip
    (repo / "model_index.json").write_text(json.dumps(index))


def build_helios_cache(root: Path, cache: Path, names=tuple(HELIOS_REPOS)) -> Path:
    for name in names:
        write_repo(root, name)
    return build_hf_cache(root, cache, [HELIOS_REPOS[name] for name in names])
