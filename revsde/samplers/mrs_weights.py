"""The weights of one MR Sampler step: ``y_t = L y_s + Σ_j W_j q_j (+ S z)``.

``y = x − μ``; ``q_0, q_1, q_2`` are the network's outputs at the last ``order`` evaluations (newest
first), converted to what the integral below integrates: ŷ₀ (data), ε̂ (noise) or v̂/c (velocity);
``z ~ N(0, I)``. The linear part is integrated exactly; the outputs enter through
``∫_{λ_s}^{λ_t} e^{a u} P(λ) dλ`` (``u = λ − λ_t``, ``h = λ_t − λ_s``), with P the Newton
polynomial through the q_j at their nodes λ_j (multistep: one evaluation per step):

=============  ============================================================================  =====
prediction     step (λ the half log-SNR, h = λ_t − λ_s)                                       a
=============  ============================================================================  =====
data, ODE      y_t = (σ_t/σ_s) y_s + α_t ∫ e^{u} ŷ₀ dλ                                           1
data, SDE      y_t = (σ_t/σ_s) e^{−h} y_s + 2α_t ∫ e^{2u} ŷ₀ dλ + σ_t sqrt(1 − e^{−2h}) z          2
noise, ODE     y_t = (α_t/α_s) y_s − σ_t ∫ e^{−u} ε̂ dλ                                          −1
noise, SDE     y_t = (α_t/α_s) y_s − 2σ_t ∫ e^{−u} ε̂ dλ + σ_t sqrt(e^{2h} − 1) z                 −1
velocity, ODE  y_t = (r_t/r_s) y_s + c r_t ∫ v̂/c dφ,  φ = atan(σ/(c α)), r = sqrt(α² + (σ/c)²)    0
=============  ============================================================================  =====

(the MR Sampler's semi-analytic solutions, Li et al., ICLR 2025, arXiv 2502.07856, written for
``y = x − μ`` as in docs' reference mr_sampler.md §4; on μ = 0 they are DPM-Solver's (Lu et al.,
NeurIPS 2022) and DPM-Solver++'s (Lu et al. 2022, arXiv 2211.01095). Velocity integrates
``dŷ/dφ = v̂`` exactly in the angle φ of ``ŷ = y/(c r)``, with c = ``sde.velocity_scale``.)
With the moments ``m_n = ∫_{−h}^{0} e^{a u} uⁿ du`` and ``d_0 = λ_t − λ_0``, ``d_1 = λ_t − λ_1``,
``d_jk = λ_j − λ_k``, the integral is ``Σ_j c_j q_j`` with

- order 1: ``c = [m_0]`` (the ODE's is DDIM, the same step in the noise and the data form);
- order 2: ``c = [m_0 + g/d_01, −g/d_01]``; ``second_order="exact"``: ``g = m_0 d_0 + m_1`` (the
  line through q_0, q_1 integrated exactly: the MR Sampler's Taylor form, ``−α_t[φ_1 q_0 − φ_2 D_1]``
  with ``D_1 = (q_0 − q_1)/r``; diffusers' ``solver_type="heun"``); ``"midpoint"``:
  ``g = m_0 (λ_mid − λ_0)``, the line's value at the step's λ-midpoint (DPM-Solver++(2M),
  Algorithm 2: ``x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D`` with
  ``D = (1 + 1/(2r)) x̂₀_s − 1/(2r) x̂₀_{s'}``, ``r = h_prev/h``);
- order 3: ``c = [m_0 + (g + k)/d_01, −(g + k)/d_01 − k/d_12, k/d_12]``; ``third_order="exact"``:
  ``k = (m_0 d_0 d_1 + m_1 (d_0 + d_1) + m_2)/d_02`` (the quadratic integrated exactly);
  ``"dpm-solver"``: ``k = (m_0 (d_0 d_1 − d_0²/2) + m_1 d_1 + m_2/2)/d_02``, DPM-Solver(++)'s 3M
  update, whose second difference carries half the exact weight (second-order consistent).

The weights are ``W_j = p c_j`` with the prefactor p of the table (α_t, 2α_t, −σ_t, −2σ_t, c r_t).
Every function takes tensors of any common shape: one step, or a whole grid at once.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class StepWeights(NamedTuple):
    """``y_t = linear · y_s + Σ_j outputs[j] · q_j + noise · z`` (``noise`` is None for the ODE)."""

    linear: torch.Tensor
    outputs: tuple[torch.Tensor, ...]
    noise: torch.Tensor | None


def exponential(prediction: str, order: int, lam: Sequence[torch.Tensor], lam_s, lam_t, alpha_s, alpha_t,
                sigma_s, sigma_t, *, stochastic: bool = False, second_order: str = "exact",
                third_order: str = "exact", eta: float = 1.0) -> StepWeights:
    """The data- or noise-prediction step from λ_s to λ_t (module docstring); ``lam``: the outputs'
    nodes λ_j, newest first (``order`` of them are used). ``eta`` (data prediction, ``stochastic``): the
    share of the SDE's noise, ``y_t = (σ_t/σ_s) e^{−ηh} y_s + (1 + η) α_t ∫ e^{(1+η)u} ŷ₀ dλ
    + σ_t sqrt(1 − e^{−2ηh}) z`` (the reverse SDE with noise √η·g: η = 1 the table's SDE, η → 0 the ODE;
    k-diffusion's ``eta`` of ``sample_dpmpp_2m_sde``)."""
    h = lam_t - lam_s
    if prediction == "data":
        a, prefactor = (1.0 + eta, (1.0 + eta) * alpha_t) if stochastic else (1.0, alpha_t)
        linear = sigma_t / sigma_s * (torch.exp(-eta * h) if stochastic else 1)
        noise = sigma_t * torch.sqrt(-torch.expm1(-2 * eta * h)) if stochastic else None
    else:
        a, prefactor = -1.0, -(2 if stochastic else 1) * sigma_t
        linear = alpha_t / alpha_s
        noise = sigma_t * torch.sqrt(torch.expm1(2 * h)) if stochastic else None
    if order == 1 and prediction == "noise":
        # To σ_t = 0 (h = ∞) σ_t (e^h − 1) reads 0 · ∞: there it is σ_t e^h − σ_t = α_t σ_s/α_s − σ_t.
        to_data = torch.isposinf(h)
        lifted = alpha_t * sigma_s / alpha_s
        k = 2 if stochastic else 1
        w = torch.where(to_data, -k * (lifted - sigma_t), prefactor * moments(a, h, 1)[0])
        if stochastic:
            noise = torch.where(to_data, torch.sqrt(torch.clamp(lifted**2 - sigma_t**2, min=0)), noise)
        return StepWeights(linear, (w,), noise)
    c = newton_weights(a, order, lam, lam_s, lam_t, second_order=second_order, third_order=third_order)
    return StepWeights(linear, tuple(prefactor * cj for cj in c), noise)


def velocity(order: int, phi: Sequence[torch.Tensor], phi_s, phi_t, alpha_s, alpha_t, sigma_s, sigma_t,
             scale: float) -> StepWeights:
    """The velocity-prediction step from φ_s to φ_t: Adams–Bashforth on ``dŷ/dφ = v̂/c`` integrated
    exactly in φ (module docstring); ``phi``: the outputs' angles (``angle``), newest first."""
    r_s, r_t = torch.sqrt(alpha_s**2 + (sigma_s / scale) ** 2), torch.sqrt(alpha_t**2 + (sigma_t / scale) ** 2)
    c = newton_weights(0.0, order, phi, phi_s, phi_t)
    return StepWeights(r_t / r_s, tuple(scale * r_t * cj for cj in c), None)


def angle(alpha, sigma, scale: float) -> torch.Tensor:
    """``φ = atan(σ/(c α))``: velocity's integration variable (π/2 at α = 0, finite where λ is not)."""
    return torch.atan2(sigma / scale, alpha)


def newton_weights(a: float, order: int, lam: Sequence[torch.Tensor], lam_s, lam_t, *,
                   second_order: str = "exact", third_order: str = "exact") -> list[torch.Tensor]:
    """``c_j`` with ``∫_{λ_s}^{λ_t} e^{a (λ − λ_t)} P(λ) dλ = Σ_j c_j q_j`` (module docstring)."""
    h = lam_t - lam_s
    midpoint = order == 2 and second_order == "midpoint"
    m = moments(a, h, 1 if order == 1 or midpoint else order)
    if order == 1:
        return [m[0]]
    lam0, lam1 = lam[0], lam[1]
    d01, d0 = lam0 - lam1, lam_t - lam0
    # g multiplies the first divided difference (q0 − q1)/d01
    g = m[0] * (0.5 * (lam_s + lam_t) - lam0) if midpoint else m[0] * d0 + m[1]
    if order == 2:
        return [m[0] + g / d01, -g / d01]
    lam2 = lam[2]
    d12, d02, d1 = lam1 - lam2, lam0 - lam2, lam_t - lam1
    if third_order == "dpm-solver":
        k = m[0] * (d0 * d1 - 0.5 * d0**2) + m[1] * d1 + 0.5 * m[2]
    else:
        k = m[0] * d0 * d1 + m[1] * (d0 + d1) + m[2]
    k = k / d02  # multiplies (q0 − q1)/d01 − (q1 − q2)/d12
    return [m[0] + g / d01 + k / d01, -g / d01 - k / d01 - k / d12, k / d12]


def moments(a: float, h: torch.Tensor, count: int = 3) -> list[torch.Tensor]:
    """``∫_{−h}^{0} e^{a u} uⁿ du`` for n = 0 .. count − 1 (h > 0); a = 0: ``h, −h²/2, h³/3``."""
    if a == 0:
        return [h, -(h**2) / 2, h**3 / 3][:count]
    out = [-torch.expm1(-a * h) / a]
    if count > 1:
        e = torch.exp(-a * h)
        out.append(-1 / a**2 - e * (-h / a - 1 / a**2))
        if count > 2:
            out.append(2 / a**3 - e * (h**2 / a + 2 * h / a**2 + 2 / a**3))
    return out
