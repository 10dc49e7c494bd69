"""Full-size FramePack models with random weights, for measuring speed and memory without downloads.

Every model is built with the real configuration directly on the target device in its inference
dtype (meta-free: the default initialisers run on the GPU, seeded, so two builds are identical).
``--tiny`` shrinks every model so the benchmarks can be debugged on a CPU.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

TRANSFORMER = dict(
    in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20, num_single_layers=40,
    num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
    text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56), has_image_proj=True,
    image_proj_dim=1152, has_clean_x_embedder=True,
)  # fmt: skip
TINY_TRANSFORMER = dict(TRANSFORMER, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2, num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6), image_proj_dim=24)
LLAMA = dict(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192)
TINY_LLAMA = dict(LLAMA, vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2)
CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768, max_position_embeddings=77, hidden_act="quick_gelu")
TINY_CLIP = dict(CLIP, vocab_size=160, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384, patch_size=14)
TINY_SIGLIP = dict(SIGLIP, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
TINY_VAE = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)


@contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(factory, device, dtype, seed: int):
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        return factory().eval().requires_grad_(False)


def transformer(device, dtype=torch.bfloat16, tiny=False, seed=0):
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    return build(lambda: HunyuanVideoFramepackTransformer3DModel(**(TINY_TRANSFORMER if tiny else TRANSFORMER)), device, dtype, seed)


def vae(device, dtype=torch.float16, tiny=False, seed=1):
    from diffusers import AutoencoderKLHunyuanVideo

    return build(lambda: AutoencoderKLHunyuanVideo(**(TINY_VAE if tiny else {})), device, dtype, seed)


def encoders(device, dtype=torch.float16, tiny=False, seed=2):
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

    return {
        "text_encoder": build(lambda: LlamaModel(LlamaConfig(**(TINY_LLAMA if tiny else LLAMA))), device, dtype, seed),
        "text_encoder_2": build(lambda: CLIPTextModel(CLIPTextConfig(**(TINY_CLIP if tiny else CLIP))), device, dtype, seed + 1),
        "image_encoder": build(lambda: SiglipVisionModel(SiglipVisionConfig(**(TINY_SIGLIP if tiny else SIGLIP))), device, dtype, seed + 2),
    }


def write_model_dir(root: Path, assets: Path, device, tiny=False) -> Path:
    """A ``--model-dir`` folder (DIR/owner/name/subfolder) holding full-size random models and real-layout tokenizers.

    The tokenizers are the tiny golden ones (their template prefix is 95 tokens, like the real
    Llama 3 tokenizer, and their ids fit the full-size vocabularies); the SigLIP processor is
    configured for 384x384 like the real one.
    """
    hunyuan, redux = root / "hunyuanvideo-community/HunyuanVideo", root / "lllyasviel/flux_redux_bfl"
    model = transformer(device, tiny=tiny)
    model.save_pretrained(root / "lllyasviel/FramePackI2V_HY", max_shard_size="10GB")
    del model
    vae(device, tiny=tiny).save_pretrained(hunyuan / "vae")
    for name, module in encoders(device, tiny=tiny).items():
        module.save_pretrained(hunyuan / name if name != "image_encoder" else redux / name, max_shard_size="10GB")
        del module
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(assets / name, hunyuan / name, dirs_exist_ok=True)
    processor = json.loads((assets / "feature_extractor" / "preprocessor_config.json").read_text())
    if not tiny:
        processor["size"] = {"height": 384, "width": 384}
    (redux / "feature_extractor").mkdir(parents=True, exist_ok=True)
    (redux / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(processor))
    return root
