"""What from-scratch training adds (issue 16): --ema, --caption-dropout, --history (training and generation), --cache-in-ram."""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, GOLDEN
from safetensors.torch import load_file
from test_training_samples import golden_video

from fpgen.errors import InputError
from fpgen.packing import limit_history, pack_forward, pack_inverted
from fpgen.spec import parse_history
from fpgen.training.cache import CachedClip
from fpgen.training.config import TrainConfig
from fpgen.training.data import Clip
from fpgen.training.ema import Ema
from fpgen.training.samples import SampleOptions, TrainingSamples, build_batch, caption_dropped, sample_refs, seeded


def test_ema_update_arithmetic_on_a_known_model():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    ema = Ema(dict(model.named_parameters()), decay=0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 2.0]]))
    ema.update(step=100)  # decay 0.9: 0.9 * [1, -2] + 0.1 * [3, 2]
    assert torch.allclose(ema.average["weight"], torch.tensor([[1.2, -1.6]]), atol=1e-6)
    ema.update(step=0)  # warm-up: min(0.9, 1/10) = 0.1: 0.1 * [1.2, -1.6] + 0.9 * [3, 2]
    assert torch.allclose(ema.average["weight"], torch.tensor([[2.82, 1.64]]), atol=1e-6)
    with ema.applied():
        assert torch.allclose(model(torch.tensor([[1.0, 1.0]])), torch.tensor([[4.46]]), atol=1e-5)  # the average is what runs
    assert torch.equal(model.weight, torch.tensor([[3.0, 2.0]]))  # and the trained weights come back
    again = Ema(dict(model.named_parameters()), decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert torch.equal(again.average["weight"], ema.average["weight"])


def test_caption_dropout_rate_over_a_seeded_batch():
    drops = caption_dropped(20_000, 0.1, seeded(42, 4, 7))
    assert abs(sum(drops) / len(drops) - 0.1) < 0.006
    assert drops == caption_dropped(20_000, 0.1, seeded(42, 4, 7)) and drops != caption_dropped(20_000, 0.1, seeded(42, 4, 8))
    assert not any(caption_dropped(1000, 0.0, seeded(42, 4, 7)))


def golden_samples(name: str):
    case, golden = CASES[name], load_file(GOLDEN / f"{name}.safetensors")
    video = golden_video(case, golden)
    stored = {"video": {"latents": video, "start_latent": video[:, :, :1], "image_embeds": golden["image_embeddings"]},
              "text": {"prompt_embeds": golden["prompt_embeds"][:, :5], "pooled": golden["prompt_poolers"]},
              "empty": {"prompt_embeds": torch.zeros((1, 1, golden["prompt_embeds"].shape[2])), "pooled": torch.zeros_like(golden["prompt_poolers"])}}  # fmt: skip
    clips = [CachedClip(Clip(GOLDEN / "x.mp4", case["prompt"], "x"), "video", "text", tuple(case["bucket"]), case["sections"])]
    return case, clips, stored


def test_dropped_captions_train_with_the_empty_caption():
    case, clips, stored = golden_samples("i2v_six_sections")
    samples = TrainingSamples(clips, 6, case["latent_window_size"], "inverted", 3, SampleOptions(caption_dropout=0.5, empty_caption="empty"))
    samples.load = stored.__getitem__
    batches = [samples(n)[1] for n in range(8)]
    pooled = torch.cat([b.cond.pooled for b in batches])
    dropped = (pooled.abs().sum(1) == 0).float().mean().item()
    assert 0.2 < dropped < 0.8  # about half of 8 x (one batch per padding layout) samples
    n = 5
    expected = caption_dropped(len(batches[n].latents), 0.5, seeded(3, 4, n))
    assert (batches[n].cond.pooled.abs().sum(1) == 0).tolist() == expected


@pytest.mark.parametrize("order", ["inverted", "forward"])
def test_short_history_blanks_the_far_slots_and_keeps_the_nearest(order):
    start, history = torch.full((1, 1, 1, 2, 2), -1.0), torch.arange(1.0, 20.0).view(1, 1, 19, 1, 1).expand(1, 1, 19, 2, 2)
    if order == "inverted":  # the future, nearest first: 1 | 2 3 | 4..19
        full = pack_inverted(start, history, window=3, padding=0)
    else:  # the past, nearest last: 1..16 | 17 18 | 19
        full = pack_forward(start, history, window=3)
    short = limit_history(full, (1, 0, 0), order)
    assert torch.equal(short.clean, full.clean) and short.clean_2x.abs().sum() == 0 and short.clean_4x.abs().sum() == 0
    assert short.indices is full.indices
    some = limit_history(full, (0, 1, 4), order)
    kept_2x, kept_4x = some.clean_2x[0, 0, :, 0, 0].tolist(), some.clean_4x[0, 0, :, 0, 0].tolist()
    assert some.clean[0, 0, :, 0, 0].tolist() == [-1.0, 0.0]  # the start latent stays
    if order == "inverted":
        assert kept_2x == [2.0, 0.0] and kept_4x == [4.0, 5.0, 6.0, 7.0] + [0.0] * 12
    else:
        assert kept_2x == [0.0, 18.0] and kept_4x == [0.0] * 12 + [13.0, 14.0, 15.0, 16.0]
    assert limit_history(full, (1, 2, 16), order) is full


def test_training_samples_use_the_short_history():
    case, clips, stored = golden_samples("f1_three_sections")
    ref = sample_refs(clips, case["latent_window_size"], "forward")[2]  # the last section: its history is full
    full = build_batch([ref], clips, case["latent_window_size"], "forward", load=stored.__getitem__)
    short = build_batch([ref], clips, case["latent_window_size"], "forward", load=stored.__getitem__, history=(1, 0, 0))
    assert full.context.clean_4x.abs().sum() > 0 and short.context.clean_4x.abs().sum() == 0 == short.context.clean_2x.abs().sum()
    assert torch.equal(short.context.clean, full.context.clean) and torch.equal(short.latents, full.latents)


def test_history_option_is_checked_before_any_work():
    assert parse_history("1,0,0") == (1, 0, 0) and parse_history([1, 2, 16]) == (1, 2, 16)
    for bad in ("1,3,16", "2,2,16", "1,2", "a,b,c", "1,2,-1"):
        with pytest.raises(InputError, match="--history"):
            parse_history(bad)
    with pytest.raises(InputError, match="--ema"):
        TrainConfig(data=GOLDEN, ema=1.0).validate()
    with pytest.raises(InputError, match="--caption-dropout"):
        TrainConfig(data=GOLDEN, caption_dropout=1.0).validate()
    config = TrainConfig(data=GOLDEN, history=(1, 0, 0), ema=0.99)
    assert TrainConfig.from_json(config.to_json()) == config and config.differences(TrainConfig(data=GOLDEN)) == ["--history (1, 2, 16) -> (1, 0, 0)", "--ema 0.0 -> 0.99"]


def test_ema_weights_are_the_result_and_a_resume_continues_them_exactly(offline_cache, tmp_path):
    """A --full run with every from-scratch option: the written model is the checkpoint's average (not its raw weights),
    and 1 step then --resume to 2 write the same average as 2 steps at once."""
    from synthetic import make_dataset

    from fpgen.training.loop import train

    def run(config, resume=False):  # on one thread, both runs alike (CPU sums may depend on the thread count)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train(config, resume=resume)
        finally:
            torch.set_num_threads(threads)

    make_dataset(tmp_path / "clips", 2, 25)
    options = dict(data=tmp_path / "clips", size=(64, 64), window=3, device="cpu", full=True, learning_rate=1e-2, save_every=1,
                   ema=0.9, caption_dropout=0.5, history=(1, 0, 0), cache_in_ram=True)  # fmt: skip
    run(TrainConfig(output=tmp_path / "straight", max_steps=2, **options))
    run(TrainConfig(output=tmp_path / "resumed", max_steps=1, **options))
    run(TrainConfig(output=tmp_path / "resumed", max_steps=2, **options), resume=True)

    last = tmp_path / "straight" / "checkpoints" / "step-0000002"
    average, raw = load_file(last / "ema.safetensors"), load_file(last / "model.safetensors")
    written = {k: v for shard in (tmp_path / "straight").glob("diffusion_pytorch_model*.safetensors") for k, v in load_file(shard).items()}
    name = "transformer_blocks.0.attn.to_q.weight"
    assert torch.equal(written[name], average[name]) and not torch.equal(written[name], raw["transformer." + name])
    resumed = {k: v for shard in (tmp_path / "resumed").glob("diffusion_pytorch_model*.safetensors") for k, v in load_file(shard).items()}
    assert resumed.keys() == written.keys() and all(torch.equal(resumed[k], written[k]) for k in written)


def test_generate_packs_the_short_history(offline_cache, tmp_path):
    """--history 1,0,0 in a generation: the second section made sees its nearest future frame only, its 2x and 4x slots blank."""
    import fpgen
    from fpgen.events import SectionStarted

    contexts = []
    models = fpgen.load_models("framepack", device="cpu")
    settings = fpgen.Settings(seconds=0.8, window=3, steps=1, size=(16, 16), history=(1, 0, 0))  # two sections
    listener = lambda event: contexts.append(event.context) if isinstance(event, SectionStarted) else None  # noqa: E731
    fpgen.generate_video(models, GOLDEN / "input.png", tmp_path / "short.mp4", settings, on_event=listener)
    first, second = contexts
    assert first.clean_2x.abs().sum() == 0 == first.clean_4x.abs().sum()  # the first section made has no future yet
    assert second.clean[:, :, 1].abs().sum() > 0 and second.clean_2x.abs().sum() == 0 == second.clean_4x.abs().sum()  # packed, it would hold 2 + 1 frames


def test_generate_records_and_checks_the_history_option(cli, tmp_path):
    from fpgen.spec import JobSpec

    assert JobSpec.from_options({"output": "a.mp4", "history": "1,0,0"}).options()["history"] == "1,0,0"  # what metadata and job folders keep
    assert JobSpec.from_options(JobSpec.from_options({"output": "a.mp4", "history": [0, 1, 8]}).options()).settings.history == (0, 1, 8)
    bad = cli("generate", GOLDEN / "input.png", "-o", "bad.mp4", "--history", "1,2,17")
    assert bad.returncode == 2 and "--history must be three counts" in bad.stderr and not (tmp_path / "bad.mp4").exists()
