"""``revsde.samplers.mrs_weights`` against the published closed forms, in float64 on random non-uniform
λ grids: DDIM (order 1), DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2), DPM-Solver's
noise-prediction 2M and SDE-DPM-Solver++(2M) in their midpoint forms, and the exact second order's
Taylor form ``−α_t[φ_1 q_0 − φ_2 D_1]`` of the MR Sampler."""
from __future__ import annotations

import pytest
import torch

from revsde.samplers import mrs_weights as W

G = torch.Generator().manual_seed(0)
B = 16
#: per sample: λ of the older node s', of s, and of t, increasing with random non-uniform spacing
LAM = torch.cumsum(torch.rand(3, B, generator=G, dtype=torch.float64) * 1.5 + 0.05, 0) - 3.0
Q0, Q1 = torch.randn(2, B, generator=G, dtype=torch.float64)  # the outputs at s (newest) and s'
Y, Z = torch.randn(2, B, generator=G, dtype=torch.float64)


def alpha_sigma(lam):
    """VP: α = sqrt(sigmoid(2λ)), σ = sqrt(sigmoid(−2λ)), so λ = log(α/σ)."""
    return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()


def step(prediction: str, order: int, **options) -> torch.Tensor:
    lam_p, lam_s, lam_t = LAM
    (a_s, s_s), (a_t, s_t) = alpha_sigma(lam_s), alpha_sigma(lam_t)
    w = W.exponential(prediction, order, [lam_s, lam_p], lam_s, lam_t, a_s, a_t, s_s, s_t, **options)
    y = w.linear * Y + sum(wj * q for wj, q in zip(w.outputs, (Q0, Q1)))
    return y + w.noise * Z if w.noise is not None else y


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_order_one_is_ddim_in_both_forms():
    lam_p, lam_s, lam_t = LAM
    (a_s, s_s), (a_t, s_t) = alpha_sigma(lam_s), alpha_sigma(lam_t)
    h = lam_t - lam_s
    close(step("data", 1), s_t / s_s * Y + a_t * (1 - torch.exp(-h)) * Q0)
    close(step("noise", 1), a_t / a_s * Y - s_t * torch.expm1(h) * Q0)


def test_data_2m_midpoint_is_dpm_solver_pp_2m():
    """Algorithm 2: x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D, D = (1 + 1/(2r)) x̂₀_s − 1/(2r) x̂₀_{s'},
    r = h_{prev}/h."""
    lam_p, lam_s, lam_t = LAM
    (a_s, s_s), (a_t, s_t) = alpha_sigma(lam_s), alpha_sigma(lam_t)
    h, r = lam_t - lam_s, (lam_s - lam_p) / (lam_t - lam_s)
    d = (1 + 1 / (2 * r)) * Q0 - 1 / (2 * r) * Q1
    close(step("data", 2, second_order="midpoint"), s_t / s_s * Y - a_t * torch.expm1(-h) * d)


def test_noise_2m_midpoint_is_dpm_solver_2m():
    """DPM-Solver (noise prediction) 2M: x_t = (α_t/α_s) x_s − σ_t (e^h − 1) ε̂_s − ½ σ_t (e^h − 1) D_1,
    D_1 = (ε̂_s − ε̂_{s'})/r."""
    lam_p, lam_s, lam_t = LAM
    (a_s, s_s), (a_t, s_t) = alpha_sigma(lam_s), alpha_sigma(lam_t)
    h, r = lam_t - lam_s, (lam_s - lam_p) / (lam_t - lam_s)
    d1 = (Q0 - Q1) / r
    close(step("noise", 2, second_order="midpoint"), a_t / a_s * Y - s_t * torch.expm1(h) * (Q0 + 0.5 * d1))


def test_sde_data_2m_midpoint_is_sde_dpm_solver_pp_2m():
    """SDE-DPM-Solver++(2M): x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) (x̂₀_s + ½ D_1) + σ_t sqrt(1 − e^{−2h}) z."""
    lam_p, lam_s, lam_t = LAM
    (a_s, s_s), (a_t, s_t) = alpha_sigma(lam_s), alpha_sigma(lam_t)
    h, r = lam_t - lam_s, (lam_s - lam_p) / (lam_t - lam_s)
    d1 = (Q0 - Q1) / r
    expected = s_t / s_s * torch.exp(-h) * Y - a_t * torch.expm1(-2 * h) * (Q0 + 0.5 * d1) \
        + s_t * torch.sqrt(-torch.expm1(-2 * h)) * Z
    close(step("data", 2, second_order="midpoint", stochastic=True), expected)


def test_data_2m_exact_is_the_taylor_form():
    """The line through q_0, q_1 integrated exactly: −α_t[φ_1 q_0 − φ_2 D_1] with φ_1 = e^{−h} − 1 and
    φ_2 = φ_1/h + 1 (the MR Sampler's data-ODE second-order update, diffusers' solver_type="heun")."""
    lam_p, lam_s, lam_t = LAM
    (a_s, s_s), (a_t, s_t) = alpha_sigma(lam_s), alpha_sigma(lam_t)
    h, r = lam_t - lam_s, (lam_s - lam_p) / (lam_t - lam_s)
    phi_1 = torch.expm1(-h)
    phi_2 = phi_1 / h + 1
    d1 = (Q0 - Q1) / r
    close(step("data", 2), s_t / s_s * Y - a_t * (phi_1 * Q0 - phi_2 * d1))


def test_the_closed_forms_tell_the_two_second_orders_apart():
    """A changed weight fails these comparisons: midpoint and exact differ by O(h³) per step."""
    assert float((step("data", 2) - step("data", 2, second_order="midpoint")).abs().max()) > 1e-4


@pytest.mark.parametrize("a", [2.0, 1.0, -1.0, 0.0])
def test_moments_are_the_integrals(a):
    """``m_n = ∫_{−h}^0 e^{a u} uⁿ du`` against a fine Simpson rule."""
    h = torch.tensor([0.3, 1.7], dtype=torch.float64)
    u = torch.linspace(0, 1, 2001, dtype=torch.float64)[:, None] * h - h  # (2001, 2) from −h to 0
    w = torch.ones(2001, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4, 2
    for n, m in enumerate(W.moments(a, h, 3)):
        simpson = (w[:, None] * torch.exp(a * u) * u**n).sum(0) * h / (3 * 2000)
        torch.testing.assert_close(m, simpson, rtol=1e-11, atol=1e-13)
