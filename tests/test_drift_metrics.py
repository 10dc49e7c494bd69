"""The drift study's metrics (benchmarks/drift.py) on inputs whose answers are known in closed form."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import drift  # noqa: E402


def textured(frames: int = 1, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(40, 215, (frames, size, size, 3))


def test_psnr_of_a_known_noise_level():
    truth = textured(4, 128)
    noisy = truth + np.random.default_rng(1).normal(0, 10, truth.shape)  # MSE 100: 10 log10(255^2 / 100) = 28.13 dB
    assert drift.psnr(noisy, truth) == pytest.approx(np.full(4, 10 * math.log10(255**2 / 100)), abs=0.1)
    assert drift.psnr(truth + 1.0, truth) == pytest.approx(np.full(4, 48.13), abs=0.01)


def test_ssim_is_one_for_the_truth_and_falls_with_noise():
    truth = drift.gaussian_blur(textured(2, 48), 2.0)
    assert drift.ssim(truth, truth) == pytest.approx([1.0, 1.0], abs=1e-9)
    light, heavy = (truth + np.random.default_rng(2).normal(0, s, truth.shape) for s in (3, 30))
    assert (drift.ssim(heavy, truth) < drift.ssim(light, truth) - 0.2).all() and (drift.ssim(light, truth) < 1).all()


def test_blur_keeps_a_flat_frame_and_the_mean():
    flat = np.full((1, 16, 16, 3), 77.0)
    assert np.allclose(drift.gaussian_blur(flat), 77.0)
    frame = textured(1, 40)
    assert drift.gaussian_blur(frame).mean() == pytest.approx(frame.mean(), rel=2e-3)
    assert drift.gaussian_blur(frame).std() < 0.5 * frame.std()


def test_lab_of_known_colours_and_the_colour_drift():
    lab = drift.srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]]))
    assert lab[0] == pytest.approx([100, 0, 0], abs=0.01) and lab[1] == pytest.approx([0, 0, 0], abs=1e-9)
    assert lab[2] == pytest.approx([53.24, 80.09, 67.20], abs=0.05)  # sRGB red, D65
    frames = np.zeros((3, 8, 8, 3))
    frames[0], frames[1], frames[2, :4] = 255, [255, 0, 0], 255  # white; red; half white, half black
    drift_ = drift.colour_drift(frames)
    assert drift_[0] == 0 and drift_[1] == pytest.approx(math.dist([100, 0, 0], [53.24, 80.09, 67.20]), abs=0.05)
    assert drift_[2] == pytest.approx(50.0, abs=1e-4)  # mean Lab of half L=100, half L=0


def test_sharpness_ratio_falls_with_blur():
    frame = textured(1, 48)
    assert drift.sharpness(drift.gaussian_blur(frame, 1.0))[0] < 0.2 * drift.sharpness(frame)[0]
    assert drift.sharpness(np.full((1, 8, 8, 3), 9.0))[0] == 0


def test_bootstrap_interval_covers_a_known_mean_difference():
    rng = np.random.default_rng(3)
    b = rng.normal(20, 3, 40)
    a = b + 0.5 + rng.normal(0, 0.2, 40)  # paired: the shared spread of b cancels
    result = drift.paired_bootstrap(a, b)
    assert result["low"] < 0.5 < result["high"] and result["low"] > 0.35 and result["high"] < 0.65
    assert result["pairs"] == 40 and result["mean"] == pytest.approx(float(np.mean(a - b)))
    same = drift.paired_bootstrap(b + rng.normal(0, 0.2, 40), b)
    assert same["low"] < 0 < same["high"]


def test_motion_guard_ranks_a_frozen_video_below_a_moving_one():
    stripes = np.tile(np.sin(np.arange(256) / 4)[None, :, None] * 80 + 128, (32, 1, 3))
    truth = np.stack([stripes[:, t : t + 32] for t in range(0, 40, 2)])  # a pan, 2 px per frame
    frozen = np.repeat(truth[:1], len(truth), 0)
    moving = np.stack([stripes[:, t : t + 32] for t in range(0, 60, 3)]) + np.random.default_rng(4).normal(0, 2, truth.shape)
    assert drift.frame_motion(frozen).max() == 0
    assert drift.motion_error(truth, truth) == 0
    assert drift.motion_error(frozen, truth) > 3 > 0.6 > drift.motion_error(moving, truth)
    brighter = np.stack([np.full((4, 4, 3), 2.0 * t) for t in range(5)])
    assert drift.frame_motion(brighter) == pytest.approx([2.0] * 4)


def test_edge_contrast_and_theil_sen_slope():
    values = np.concatenate([np.full(20, 30.0), np.linspace(30, 20, 60), np.full(20, 20.0)])
    assert drift.edge_contrast(values) == pytest.approx(-10.0)  # the first and last 15 of 100 frames
    line = 2.0 * np.arange(8) + 1
    line[3] = 1000  # one outlier does not move the median slope
    assert drift.theil_sen(line) == pytest.approx(2.0)
    assert drift.section_means(np.arange(7.0), 3) == pytest.approx([2.0, 5.0])  # frame 0 left out


@pytest.mark.parametrize("kind", ["pan", "wobble", "zoom"])
def test_periodic_paths_come_back_to_the_start_view(kind):
    path = drift.periodic_path(kind, 2 * drift.data.SWAY_PERIOD + 1)
    start, back = path[0], path[drift.data.SWAY_PERIOD]
    assert back == pytest.approx(start, abs=1e-9) and start == pytest.approx([0, 0, 1, 0])
    assert np.abs(path - start).max() > 0.5 if kind != "zoom" else np.abs(np.log(path[:, 2])).max() > 0.02


def test_video_metrics_flag_a_frozen_copy_of_the_first_frame():
    stripes = np.tile(np.sin(np.arange(256) / 4)[None, :, None] * 80 + 128, (32, 1, 3))
    truth = np.stack([stripes[:, t : t + 32] for t in range(0, 34, 2)])  # 17 frames: the start and 2 sections of 8
    frozen = drift.video_metrics(np.repeat(truth[:1], len(truth), 0), truth, 8)
    exact = drift.video_metrics(truth, truth, 8)
    assert len(exact["sections"]["psnr"]) == 2 and exact["summary"]["ssim_mean"] == pytest.approx(1.0)
    assert exact["summary"]["motion_ratio_last_section"] == pytest.approx(1.0) and exact["summary"]["motion_error"] == 0
    assert frozen["summary"]["motion_ratio_last_section"] < drift.FROZEN_BELOW
    assert frozen["summary"]["psnr_contrast"] < 0 and frozen["summary"]["colour_drift_last_section"] == pytest.approx(0, abs=1e-9)


def test_the_shipped_demo_runs_its_trained_order_and_reports_the_other_as_not_trained():
    from types import SimpleNamespace

    demo = SimpleNamespace(models=Path("demo"), short_models=None)
    assert drift.cell_models(demo, "inverted", "packed") == ("demo", None, None)
    model, folder, note = drift.cell_models(demo, "inverted", "short")
    assert (model, folder) == ("demo", None) and note.startswith("inference-only ablation")
    model, folder, note = drift.cell_models(demo, "forward", "packed")
    assert model is None and note.startswith("not trained")
    hub = SimpleNamespace(models=Path("hub"), short_models=Path("hub-short"))
    assert drift.cell_models(hub, "forward", "short") == ("framepack-f1", Path("hub-short"), None)
    cells = {"inverted/packed": {"videos": [{"summary": {"psnr_mean": 20.0}}]}, "forward/packed": {"videos": []}}
    assert drift.compare(cells) == {}  # a cell without videos is in no comparison


def test_demo_compare_pairs_clips_by_name_and_reports_the_gain_and_the_bar():
    """``benchmarks/demo_compare.py``: new - old per clip, clips better, each model over the bar, geometric ratios."""
    import demo_compare

    def result(psnrs, sharpness, bar=(20.0, 25.0, 30.0)):
        return {"videos": [{"clip": f"clip-{k}", "group": "pan", "scores": {"repeat-first": {"psnr": b}, "model": {"psnr": p, "sharpness_ratio": s, "motion_ratio": 1.0}}}
                           for k, (p, s, b) in enumerate(zip(psnrs, sharpness, bar))]}  # fmt: skip

    old, new = result([21.0, 24.0, 29.0], [0.5, 0.5, 0.5]), result([22.0, 26.0, 28.0], [1.0, 0.25, 0.5])
    new["videos"].reverse()  # matched by name, not by order
    summary = demo_compare.compare(demo_compare.common_clips(old, new))
    assert summary["clips"] == 3 and summary["clips better"] == 2
    assert summary["new - old"]["mean"] == pytest.approx(2 / 3)
    assert summary["old - repeat-first"]["clips over"] == 1 and summary["new - repeat-first"]["clips over"] == 2
    assert summary["new - repeat-first"]["mean"] == pytest.approx(1 / 3)
    assert summary["sharpness new / old"] == pytest.approx(1.0) and summary["motion new / old"] == pytest.approx(1.0)  # x2, x0.5, x1
    other_truth = result([21.0, 24.0, 29.0], [0.5] * 3, bar=(20.0, 25.0, 31.0))
    with pytest.raises(SystemExit, match="clip-2 has different truth"):
        demo_compare.common_clips(old, other_truth)
