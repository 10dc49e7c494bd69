"""`fpgen finetune --one-frame` on the tiny models: a pair's sample is fpgen edit's context, training fits the pair, edit uses the LoRA."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import GOLDEN
from helpers import assert_one_line_error

from fpgen.buckets import load_image, resize_and_center_crop
from fpgen.conditioning import encode_latents
from fpgen.edit import SLOTS, EditSpec
from fpgen.errors import ExitCode
from fpgen.lora import merge_lora, read_lora
from fpgen.packing import pack_one_frame
from fpgen.pixels import picture_to_pixels
from fpgen.training.cache import CachedClip
from fpgen.training.data import discover_clips
from fpgen.training.objective import FlowMatchingLoss, evaluation_loss
from fpgen.training.samples import build_batch, sample_refs

SIZE = (32, 32)
TINY = ("--size", "32x32", "--device", "cpu")


def write_pair(folder, name="face", target_size=None):
    """``name``.png (the golden input), ``name``.target.png (its colours inverted) and ``name``.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Image.open(GOLDEN / "input.png").convert("RGB")
    source.save(folder / f"{name}.png")
    target = Image.fromarray(255 - np.asarray(source))
    (target.resize(target_size) if target_size else target).save(folder / f"{name}.target.png")
    (folder / f"{name}.txt").write_text("inverted colours")
    return folder


def latent_of(models, path):
    return encode_latents(models.vae, picture_to_pixels(resize_and_center_crop(load_image(path), *SIZE)))


def pair_batch(data):
    """The one training sample of the pair in ``data`` (its cache entry made by --cache-only)."""
    (entry,) = (data / ".fpgen-cache" / "pair").glob("*.safetensors")
    (pair,) = discover_clips(data, one_frame=True)
    (text,) = (data / ".fpgen-cache" / "text").glob("*.safetensors")
    clips = [CachedClip(pair, entry, text, SIZE, 1)]
    return build_batch(sample_refs(clips, 9, "inverted"), clips, 9, "inverted")


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pairs") / "data")


def test_pair_sample_is_edits_context(cli, tiny_models, pair_data):
    """The sample: target latent = the target picture encoded alone; context = pack_one_frame as fpgen edit packs it (index 9, all slots)."""
    ran = cli("finetune", pair_data, "--one-frame", "--cache-only", *TINY, "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["clips"] == 1
    edit_defaults = EditSpec(pair_data / "face.png", pair_data / "unused.png")
    assert (edit_defaults.target(9), edit_defaults.slots) == (9, frozenset(SLOTS))  # what one_frame_context packs
    models = tiny_models("framepack")
    start = latent_of(models, pair_data / "face.png")
    batch = pair_batch(pair_data)
    expected = pack_one_frame(start, 9, 9, frozenset(SLOTS))
    assert torch.allclose(batch.latents, latent_of(models, pair_data / "face.target.png"), atol=1e-5)
    for name in ("latents", "clean", "clean_2x", "clean_4x"):
        assert torch.equal(getattr(batch.context.indices, name), getattr(expected.indices, name)), name
    assert batch.context.indices.clean.tolist() == [0, 10] and batch.context.indices.latents.tolist() == [9]
    for name in ("clean", "clean_2x", "clean_4x"):
        assert torch.allclose(getattr(batch.context, name), getattr(expected, name), atol=1e-5), name


def test_training_fits_the_pair_and_edit_uses_the_lora(cli, tiny_models, pair_data, tmp_path):
    """20 steps lower the pair's fixed-noise loss; the written LoRA loads in `fpgen edit --lora` and changes its picture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is overhead-bound: threads only contend (as in test_finetune)
    try:
        ran = cli("finetune", pair_data, "--one-frame", "-o", tmp_path / "run", *TINY, "--rank", "4", "--lr", "5e-3", "--max-steps", "20", "--save-every", "1000", "--json")
    finally:
        torch.set_num_threads(threads)
    assert ran.returncode == 0, ran.stderr
    weights = json.loads(ran.stdout)["weights"]
    lora, _ = read_lora(weights)

    batch = pair_batch(pair_data)
    base = tiny_models("framepack").transformer
    trained = copy.deepcopy(base)
    merge_lora(trained, lora)
    before = evaluation_loss(FlowMatchingLoss(base, 1.0), [batch], 3.0, 0)
    after = evaluation_loss(FlowMatchingLoss(trained, 1.0), [batch], 3.0, 0)
    assert after < 0.8 * before, (before, after)  # 0.70 measured

    edit = ("edit", pair_data / "face.png", "-p", "inverted colours", *TINY, "--steps", "2", "--seed", "3")
    assert cli(*edit, "-o", "plain.png").returncode == 0
    ran = cli(*edit, "--lora", weights, "-o", "lora.png")
    assert ran.returncode == 0, ran.stderr
    plain, edited = (np.asarray(Image.open(tmp_path / name), dtype=np.float32) for name in ("plain.png", "lora.png"))
    assert np.abs(plain - edited).mean() > 5.0  # 20.5 of 255 measured


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda d: (write_pair(d), (d / "face.target.png").unlink()), ["face.png has no target picture", "face.target.png"]),
        (lambda d: write_pair(d, target_size=(40, 32)), ["face.png is", "40x32", "same size"]),
        (lambda d: (write_pair(d), (d / "face.txt").unlink()), ["face.png has no caption", "face.txt"]),
        (lambda d: (write_pair(d), (d / "face.png").unlink()), ["face.target.png has no source picture"]),
    ],
)
def test_bad_pairs_are_one_line_errors(cli, tmp_path, make, needles):
    make(tmp_path / "data")
    assert_one_line_error(cli("finetune", tmp_path / "data", "--one-frame", "-o", "run", *TINY), ExitCode.USAGE, *needles)
    assert not (tmp_path / "run").exists()


def test_one_frame_needs_the_inverted_model(cli, tmp_path):
    write_pair(tmp_path / "data")
    assert_one_line_error(cli("finetune", tmp_path / "data", "--one-frame", "--model", "framepack-f1", "-o", "run", *TINY), ExitCode.USAGE, "--one-frame", "--model framepack")
