"""Timed prompts: parsing, snapping to section boundaries, and which embedding reaches which section."""

from __future__ import annotations

import pytest
import torch
from conftest import GOLDEN

from enginejob import make_frames

from fpgen import framepack
from fpgen.buckets import load_image
from fpgen.conditioning import encode_prompt
from fpgen.errors import InputError
from fpgen.spec import Settings
from fpgen.events import SectionStarted
from fpgen.families import HELIOS
from fpgen.geometry import section_seconds
from fpgen.prompts import TimedPrompt, parse_prompts, section_prompts

IMAGE = GOLDEN / "input.png"


def test_parse_plain_and_timed():
    assert parse_prompts("a cat | a dog") == [TimedPrompt(0.0, "a cat | a dog")]  # no time tag: one ordinary prompt
    assert parse_prompts("0s: a man walks in | 3s: he sits down") == [TimedPrompt(0.0, "a man walks in"), TimedPrompt(3.0, "he sits down")]
    text = "# a prompts file\n0s: walks in\n\n2.5s: sits | 4S : waves\n"
    assert [(p.start, p.text) for p in parse_prompts(text)] == [(0, "walks in"), (2.5, "sits"), (4, "waves")]
    with pytest.raises(InputError, match="has no time"):
        parse_prompts("0s: walks | sits")
    with pytest.raises(InputError, match="time order"):
        parse_prompts("3s: sits | 1s: walks")


def test_snapping_to_section_boundaries():
    # window 9: sections of 36 frames = 1.2 s; a prompt takes over at the nearest boundary (ties go later)
    prompts = parse_prompts("1s: a | 2.3s: b | 3s: c | 9s: d")
    chosen, warnings = section_prompts(prompts, 5, section_seconds(9))
    assert chosen == ["a", "a", "b", "c", "c"]  # 2.3 s -> boundary 2 (2.4 s); 3 s is 2.5 sections -> boundary 3 (3.6 s)
    assert len(warnings) == 1 and "'d'" in warnings[0] and "after" in warnings[0]  # 9 s is past the 5 sections (6 s)
    chosen, warnings = section_prompts(parse_prompts("0s: a | 1.3s: b | 1.4s: c"), 3, section_seconds(9))
    assert chosen == ["a", "c", "c"] and any("'b'" in w and "replaced" in w for w in warnings)
    # Helios: chunks of 33 frames at 24 fps = 1.375 s, so 2.3 s is 1.67 chunks -> boundary 2 (2.75 s), 3 s -> 2
    chosen, _ = section_prompts(prompts, 5, HELIOS.section_seconds(9))
    assert HELIOS.section_seconds(9) == 33 / 24 and chosen == ["a", "a", "c", "c", "c"]


@pytest.mark.parametrize("model", ["framepack", "framepack-f1"])
def test_each_section_gets_its_prompt_embedding(model, tiny_models, monkeypatch):
    models = tiny_models(model)
    settings = Settings(prompt="0s: a man walks in | 1.2s: he sits down", seconds=3.6, steps=1, size=(32, 32))
    encoded = []
    real_encode = framepack.encode_prompt
    monkeypatch.setattr(framepack, "encode_prompt", lambda text, *a: encoded.append(text) or real_encode(text, *a))
    started = []
    make_frames(models, load_image(IMAGE), settings, lambda f, s: None, lambda e: started.append(e) if isinstance(e, SectionStarted) else None)

    assert encoded == ["a man walks in", "he sits down"]  # each distinct prompt encoded once
    expected = {t: encode_prompt(t, models.tokenizer, models.text_encoder, models.tokenizer_2, models.text_encoder_2) for t in encoded}
    assert not torch.equal(expected["a man walks in"].embeds, expected["he sits down"].embeds)
    by_slot = {e.section.slot: e for e in started}
    # time decides the prompt, not generation order: the original model makes slot 2 first, F1 slot 0
    assert [e.section.slot for e in started] == ([2, 1, 0] if model == "framepack" else [0, 1, 2])
    for slot, text in [(0, "a man walks in"), (1, "he sits down"), (2, "he sits down")]:
        event = by_slot[slot]
        assert event.prompt == text
        assert torch.equal(event.conditioning.prompt_embeds, expected[text].embeds)
        assert torch.equal(event.conditioning.pooled, expected[text].pooled)
