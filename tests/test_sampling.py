"""The sigma schedule, the shift rule, guidance and the UniPC sampler."""

from __future__ import annotations

import math

import pytest
import torch

from fpgen.denoiser import guided_velocity
from fpgen.sampling import flux_mu, get_schedule, sample_unipc

OFFICIAL_25 = [
    1.0, .99408, .98773, .98089, .97351, .96552, .95683, .94737, .93701, .92562, .91304, .89908, .88350, .86598,
    .84615, .82353, .79747, .76712, .73134, .68852, .63636, .57143, .48837, .37838, .22581, 0.0,
]  # fmt: skip
OFFICIAL_TIMESTEPS = [1000, 996, 988, 980, 972, 964, 956, 948, 936, 924, 912, 900, 884, 864, 848, 824, 796, 768, 732, 688, 636, 572, 488, 378, 226]


def test_schedule_at_the_640_bucket_is_shift_7():
    sigmas = get_schedule(25, 9 * 80 * 76 // 4)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 26
    assert sigmas.tolist() == pytest.approx(OFFICIAL_25, abs=6e-6)
    assert ((sigmas[:-1] * 1000).to(torch.bfloat16).float().tolist()) == OFFICIAL_TIMESTEPS
    assert torch.allclose(sigmas, 7 * torch.linspace(1, 0, 26) / (1 + 6 * torch.linspace(1, 0, 26)), atol=1e-6)


@pytest.mark.parametrize(("window", "low", "high"), [(1, 1.9, 2.1), (2, 2.5, 2.7), (3, 3.3, 3.6), (4, 4.2, 4.6), (5, 5.5, 6.0), (6, 7.0, 7.0), (9, 7.0, 7.0)])
def test_shift_grows_with_tokens_and_caps_at_7(window, low, high):
    for h, w in [(80, 76), (60, 104), (52, 120)]:  # latent sizes of 640-class buckets
        shift = math.exp(flux_mu(window * h * w // 4))
        assert low - 1e-6 <= shift <= high + 1e-6


def test_fixed_shift_overrides_the_rule():
    sigmas = get_schedule(4, 10**6, shift=3.0)
    t = torch.linspace(1, 0, 5)
    assert torch.allclose(sigmas, 3 * t / (1 + 2 * t), atol=1e-6)


def test_guidance_rescale_matches_the_positive_std():
    torch.manual_seed(0)
    pos, neg = torch.randn(1, 4, 3, 5, 5), torch.randn(1, 4, 3, 5, 5)
    assert guided_velocity(pos, None, 1.0, 0.0) is pos
    plain = guided_velocity(pos, neg, 3.0, 0.0)
    assert torch.allclose(plain, neg + 3 * (pos - neg))
    full = guided_velocity(pos, neg, 3.0, 1.0)
    assert full.std().item() == pytest.approx(pos.std().item(), rel=1e-5)


def gaussian_denoiser(mean: float, std: float):
    """The exact x0 = E[x0 | x_t] for data ~ N(mean, std^2) under x_t = (1-t) x0 + t eps."""

    def denoise(x, sigma):
        s = sigma.view(-1, 1).double()
        a = 1 - s
        var = a**2 * std**2 + s**2
        return (mean + a * std**2 / var * (x.double() - a * mean)).float()

    return denoise


def exact_trajectory(x1: torch.Tensor, sigma: float, mean: float, std: float) -> torch.Tensor:
    """For Gaussian data the probability-flow ODE keeps (x - (1-t) mean) / sd_t fixed: x_t in closed form."""
    return (1 - sigma) * mean + math.sqrt((1 - sigma) ** 2 * std**2 + sigma**2) * x1.double()


def test_unipc_tracks_the_ode_better_than_euler():
    torch.manual_seed(0)
    noise = torch.randn(1, 64)
    denoise = gaussian_denoiser(0.7, 0.3)
    sigmas = get_schedule(25, 10**5)
    last = sigmas[-2]
    exact = denoise(exact_trajectory(noise, last.item(), 0.7, 0.3), last.view(1)).double()

    def error(order):
        return ((sample_unipc(denoise, noise, sigmas, max_order=order).double() - exact).norm() / exact.norm()).item()

    assert error(3) < 5e-3
    assert error(3) < error(1) / 4


def test_the_predictor_base_is_ddim_and_calls_are_one_per_step():
    torch.manual_seed(1)
    noise = torch.randn(1, 16)
    denoise = gaussian_denoiser(0.2, 0.5)
    sigmas = get_schedule(2, 10**5)  # one step: evaluate at sigma0, then at the DDIM point of sigma1
    s, t = sigmas[0], sigmas[1]
    ddim = (t / s) * noise + (1 - t / s) * denoise(noise, s.view(1))
    assert torch.allclose(sample_unipc(denoise, noise, sigmas), denoise(ddim, t.view(1)), atol=1e-6)
    calls = []
    sample_unipc(lambda x, s: calls.append(s) or denoise(x, s), noise, get_schedule(10, 10**5))
    assert len(calls) == 10


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_unipc_short_schedules_run(steps):
    noise = torch.randn(1, 8)
    out = sample_unipc(gaussian_denoiser(0.0, 1.0), noise, get_schedule(steps, 10**5))
    assert out.shape == noise.shape and torch.isfinite(out).all()
