"""fpgen edit (one-frame inference) on the tiny models: the PNG equals a frame sampled from a context packed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import GOLDEN
from helpers import assert_one_line_error

from fpgen.buckets import load_image, resize_and_center_crop
from fpgen.conditioning import encode_image, encode_latents, encode_prompt
from fpgen.decode import decode_latents
from fpgen.denoiser import Guidance, make_denoiser
from fpgen.edit import EditSpec, resolve_edit, run_edit
from fpgen.errors import ExitCode
from fpgen.packing import IndexLayout, PackedContext
from fpgen.pixels import picture_to_pixels, to_uint8
from fpgen.sampling import get_schedule, sample_unipc
from fpgen.spec import Settings
from fpgen.transformer import Conditioning

IMAGE = GOLDEN / "input.png"
SIZE = (32, 32)


def by_hand(models, prompt: str, steps: int, seed: int, clean: torch.Tensor, indices: IndexLayout, x2: torch.Tensor, x4: torch.Tensor) -> np.ndarray:
    """The edited picture from the primitives: encoders, a hand-made PackedContext, the denoiser, UniPC, the VAE."""
    start = resize_and_center_crop(load_image(IMAGE), *SIZE)
    with models.encoding() as m:
        text = encode_prompt(prompt, m.tokenizer, m.text_encoder, m.tokenizer_2, m.text_encoder_2)
        siglip = encode_image(start, m.feature_extractor, m.image_encoder)
    condition = Conditioning(text.embeds, text.mask, text.pooled, siglip)
    noise = torch.randn((1, 16, 1, 4, 4), generator=torch.Generator("cpu").manual_seed(seed))
    with models.denoising() as (transformer, blocks):
        denoise = make_denoiser(transformer, blocks, condition, None, PackedContext(indices, clean, x2, x4), Guidance(10.0, 1.0, 0.0))
        latent = sample_unipc(denoise, noise, get_schedule(steps, 4 * 4 // 4))
    return to_uint8(decode_latents(models.vae, latent))[0]


def latent_of(models, picture):
    return encode_latents(models.vae, picture_to_pixels(resize_and_center_crop(picture, *SIZE)))


def test_edit_cli_equals_hand_packed(cli, tiny_models, tmp_path):
    ran = cli("edit", IMAGE, "-p", "she smiles", "--size", "32x32", "--steps", "2", "--seed", "5", "--device", "cpu", "-o", "smile.png", "--json")
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert (result["target_index"], result["history"], result["width"]) == (9, ["2x", "4x", "post"], 32)
    made = np.asarray(Image.open(tmp_path / "smile.png"))
    assert json.loads(Image.open(tmp_path / "smile.png").text["fpgen"])["prompt"] == "she smiles"

    models = tiny_models("framepack")
    start, zeros = latent_of(models, load_image(IMAGE)), torch.zeros(1, 16, 19, 4, 4)
    layout = IndexLayout(torch.tensor([9]), torch.tensor([0, 10]), torch.tensor([11, 12]), torch.arange(13, 29))  # musubi's default one-frame layout
    expected = by_hand(models, "she smiles", 2, 5, torch.cat([start, zeros[:, :, :1]], dim=2), layout, zeros[:, :, 1:3], zeros[:, :, 3:])
    assert np.array_equal(made, expected)
    assert np.abs(made.astype(int) - resize_and_center_crop(load_image(IMAGE), *SIZE)).mean() > 1  # a new picture, not the input

    assert_one_line_error(cli("edit", IMAGE, "-p", "x", "-o", "smile.png"), ExitCode.USAGE, "smile.png already exists", "--overwrite")


def test_kisekaeichi_reference_and_masks(tiny_models, tmp_path):
    models = tiny_models("framepack")
    reference = np.ascontiguousarray(np.flip(load_image(IMAGE), axis=1))
    mask = np.zeros((32, 32, 3), np.uint8)  # at the output size: cropped as is
    mask[:, 16:] = 255  # the reference's right half
    for name, picture in (("ref.png", reference), ("mask.png", mask), ("keep.png", 255 - mask)):
        Image.fromarray(picture).save(tmp_path / name)
    spec = EditSpec(IMAGE, tmp_path / "dressed.png", Settings(prompt="she wears it", steps=2, seed=3, size=SIZE), reference=tmp_path / "ref.png", mask=tmp_path / "mask.png", image_mask=tmp_path / "keep.png")
    made = run_edit(models, resolve_edit(spec, loaded=models))

    right = torch.zeros(1, 1, 1, 4, 4)
    right[..., 2:] = 1  # the mask at latent resolution
    start, ref = latent_of(models, load_image(IMAGE)) * (1 - right), latent_of(models, reference) * right
    empty = torch.zeros(1, 16, 0, 4, 4)
    layout = IndexLayout(torch.tensor([1]), torch.tensor([0, 10]), torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    assert np.array_equal(made, by_hand(models, "she wears it", 2, 3, torch.cat([start, ref], dim=2), layout, empty, empty))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dressed.png")), made)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "framepack-f1"], ["fpgen edit needs the original FramePack model"]),
        (["--mask", IMAGE], ["--mask masks the --reference picture"]),
        (["--history", "post,8x"], ["--history 8x is not a history slot"]),
        (["--target-index", "-2"], ["--target-index must be between 0 and 1000"]),
        (["-o", "out.jpg"], ["must end in .png"]),
    ],
)
def test_bad_edit(args, needles, cli):
    assert_one_line_error(cli("edit", IMAGE, "-p", "x", *args), ExitCode.USAGE, *needles)
