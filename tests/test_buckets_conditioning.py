"""Size buckets, the crop, and the prompt template's 95-token check."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HUB

from fpgen.buckets import BUCKETS_640, buckets_for, parse_size, pick_bucket, resize_and_center_crop
from fpgen.conditioning import PROMPT_CROP, check_prompt_template
from fpgen.errors import InputError, ModelMissingError


@pytest.mark.parametrize(
    ("h", "w", "expected"),
    [(512, 512, (640, 608)), (1080, 1920, (480, 832)), (768, 1024, (544, 704)), (1920, 1080, (832, 480)), (150, 200, (544, 704))],
)
def test_bucket_choice(h, w, expected):
    assert pick_bucket(h, w) == expected


def test_ties_go_to_the_later_bucket():
    # a square is equally far from 608x640 and 640x608; the official loop keeps the later one
    assert abs(100 * 640 - 100 * 608) == abs(100 * 608 - 100 * 640)
    assert pick_bucket(100, 100) == (640, 608)


def test_other_resolution_classes_are_multiples_of_16():
    for h, w in buckets_for(480):
        assert h % 16 == 0 and w % 16 == 0 and abs(h * w - 480 * 480) / (480 * 480) < 0.1
    assert buckets_for(640) == BUCKETS_640


def test_resize_and_center_crop_keeps_the_centre():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 140:160] = 255  # a bright bar in the middle
    out = resize_and_center_crop(image, 64, 64)
    assert out.shape == (64, 64, 3)
    assert out[:, 28:36].mean() > 200 and out[:, :8].mean() < 10


@pytest.mark.parametrize("text", ["640", "100x100", "0x64", "axb", "64x-16"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InputError):
        parse_size(text)


def test_golden_tokenizer_passes_the_template_check():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(HUB / "hunyuanvideo-community/HunyuanVideo/tokenizer")
    check_prompt_template(tokenizer)


def test_a_tokenizer_that_splits_differently_is_refused():
    from transformers import LlamaTokenizerFast

    # transformers 5 rebuilds a sentencepiece-style pipeline here and drops this tokenizer's words
    wrong = LlamaTokenizerFast.from_pretrained(HUB / "hunyuanvideo-community/HunyuanVideo/tokenizer")
    with pytest.raises(ModelMissingError, match=f"instead of {PROMPT_CROP}"):
        check_prompt_template(wrong)
