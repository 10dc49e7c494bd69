"""Flow-matching sampling as FramePack does it: the shifted sigma schedule, guidance, and UniPC (bh1).

Pure functions over tensors. A *denoiser* is any ``f(x, sigma) -> x0`` (the model's clean-latent
prediction); the sampler never sees the transformer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]


def flux_mu(seq_len: int, exp_max: float = 7.0) -> float:
    """Flux's resolution-dependent shift exponent: the line through (256, 0.5) and (4096, 1.15), capped at ln(exp_max)."""
    k = (1.15 - 0.5) / (4096 - 256)
    b = 0.5 - k * 256
    return min(k * seq_len + b, math.log(exp_max))


def get_schedule(steps: int, seq_len: int, shift: float | None = None) -> torch.Tensor:
    """``steps + 1`` sigmas from 1 to 0 (float32), time-shifted by e^mu / (e^mu + 1/t - 1).

    ``seq_len`` is the number of noisy patch tokens of one section (latent T*H*W/4); at FramePack's
    usual sizes the cap binds and the shift is 7. ``shift`` fixes e^mu instead.
    """
    mu = math.log(shift) if shift is not None else flux_mu(seq_len)
    t = torch.linspace(1, 0, steps + 1)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def _unipc_coefficients(rks: list[torch.Tensor], hh: torch.Tensor, order: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Predictor and corrector weights of UniPC-bh1 for ``order`` points at log-SNR ratios ``rks`` (last one 1)."""
    r = torch.stack(rks)
    h_phi_k = torch.expm1(hh) / hh - 1
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial / hh)  # B(h) = hh for the bh1 variant
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    big_r, b = torch.stack(rows), torch.stack(b)
    if order == 1:
        return None, torch.tensor([0.5], device=hh.device)
    rhos_p = torch.tensor([0.5], device=hh.device) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1])
    return rhos_p, torch.linalg.solve(big_r, b)


def sample_unipc(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None = None,
    max_order: int = 3,
) -> torch.Tensor:
    """Flow-matching UniPC (variant bh1), FramePack's sampler.

    Runs ``len(sigmas) - 1`` denoiser calls and returns the clean-latent prediction at the last
    non-zero sigma (the final corrected x is never used, as in the official sampler).
    """
    sigmas = sigmas.to(device=x.device, dtype=torch.float32)
    order = min(max_order, len(sigmas) - 2)
    batch = x.shape[0]
    predictions: list[torch.Tensor] = []
    times: list[torch.Tensor] = []

    for i in range(len(sigmas) - 1):
        t = sigmas[i].expand(batch)
        if i == 0:
            predictions, times = [denoise(x, t)], [t]
        else:
            x, prediction = _unipc_step(denoise, x, predictions, times, t, min(i, order))
            predictions, times = (predictions + [prediction])[-order:], (times + [t])[-order:]
        if callback is not None:
            callback(i, predictions[-1])
    return predictions[-1]


def _unipc_step(denoise: Denoiser, x, predictions, times, t, order):
    """One predictor-corrector step from ``times[-1]`` to ``t`` using the last ``order`` predictions."""
    m0, s0 = predictions[-1], times[-1]
    lambda_0 = -torch.log(s0)
    h = -torch.log(t) - lambda_0
    rks, differences = [], []
    for j in range(1, order):
        rk = ((-torch.log(times[-(j + 1)]) - lambda_0) / h)[0]
        rks.append(rk)
        differences.append((predictions[-(j + 1)] - m0) / rk)
    rks.append(torch.ones((), device=x.device))
    hh = -h[0]
    rhos_p, rhos_c = _unipc_coefficients(rks, hh, order)

    expand = (-1,) + (1,) * (x.ndim - 1)
    base = (t / s0).view(expand) * x - torch.expm1(hh) * m0
    predictor = sum((rho * d for rho, d in zip(rhos_p, differences)), torch.zeros_like(x)) if rhos_p is not None else 0
    x_pred = base - hh * predictor
    prediction = denoise(x_pred, t)
    corrector = sum((rho * d for rho, d in zip(rhos_c[:-1], differences)), torch.zeros_like(x)) if differences else 0
    x_next = base - hh * (corrector + rhos_c[-1] * (prediction - m0))
    return x_next, prediction
