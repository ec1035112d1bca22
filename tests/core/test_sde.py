"""The numbers of every linear SDE: coefficient identities, log-SNR inverse, marginals against a
simulated forward SDE, transitions, priors, published reference values, argument validation."""
from __future__ import annotations

import math

import pytest
import torch

from revsde import sde as S

from fixtures import ALL_SDES, ddpm_linear_alphas_cumprod, interior_times, is_mean_reverting, knots, regular_t_max

F64 = torch.float64


def t64(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def mu_of(sde, shape=(1,), value=0.8):
    return torch.full(shape, value, dtype=F64) if is_mean_reverting(sde) else None


# --- coefficient identities ---------------------------------------------------------------------

FD_STEP = 1e-5  # well inside every tabulated segment (the narrowest, DDPM's, is 1/999 wide)


def central_difference(fn, t: torch.Tensor, h: float = FD_STEP) -> torch.Tensor:
    """Fourth-order central difference (error O(h⁴), roundoff O(ulp/h))."""
    return (-fn(t + 2 * h) + 8 * fn(t + h) - 8 * fn(t - h) + fn(t - 2 * h)) / (12 * h)


def test_f_is_derivative_of_log_alpha(sde):
    t = interior_times(sde)
    expected = central_difference(sde.log_alpha, t)
    torch.testing.assert_close(sde.f(t), expected, rtol=1e-6, atol=1e-9)


def test_g2_is_variance_growth_minus_drift(sde):
    t = interior_times(sde)
    var = lambda u: sde.sigma(u) ** 2  # noqa: E731
    expected = central_difference(var, t) - 2 * sde.f(t) * var(t)
    torch.testing.assert_close(sde.g2(t), expected, rtol=1e-6, atol=1e-12)


def gauss_legendre(sde, s: float, t: float, order: int = 6, pieces: int = 400):
    """Quadrature nodes and weights on [s, t], Gauss–Legendre on each piece; a tabulated schedule's knots
    are piece ends, so no node sits on a knot (its integrands are smooth between knots only)."""
    import numpy as np

    k = knots(sde)
    ends = torch.linspace(s, t, pieces + 1, dtype=F64) if k is None else \
        torch.cat([t64(s), k[(k > s) & (k < t)], t64(t)])
    x, w = (torch.as_tensor(v, dtype=F64) for v in np.polynomial.legendre.leggauss(order))
    half = 0.5 * (ends[1:] - ends[:-1])[:, None]
    nodes = 0.5 * (ends[1:] + ends[:-1])[:, None] + half * x
    return nodes.flatten(), (half * w).flatten()


def test_integrated_coefficients_give_the_transition(sde):
    """Over the whole interval: log a = ∫ f and G² = ∫ (α_t/α_r)² g²(r) dr (checks the knots too; up to
    ``regular_t_max`` where the coefficients blow up at t_max)."""
    s, t = sde.t_min + 0.013 * (sde.t_max - sde.t_min), regular_t_max(sde)
    nodes, weights = gauss_legendre(sde, s, t)
    a, big_g2 = sde.transition(s, t)
    log_a = (weights * sde.f(nodes)).sum()
    g2_int = (weights * torch.exp(2 * (sde.log_alpha(t) - sde.log_alpha(nodes))) * sde.g2(nodes)).sum()
    assert float(log_a) == pytest.approx(float(torch.log(a)), rel=1e-10)
    assert float(g2_int) == pytest.approx(float(big_g2), rel=1e-9)


# --- log-SNR ----------------------------------------------------------------------------------------

def test_log_snr_is_half_log_snr(sde):
    t = interior_times(sde)
    torch.testing.assert_close(sde.log_snr(t), torch.log(sde.alpha(t) / sde.sigma(t)), rtol=1e-12, atol=1e-12)


def test_log_snr_strictly_decreasing(sde):
    t = torch.linspace(sde.t_min, sde.t_max, 4001, dtype=F64)
    lam = sde.log_snr(t)
    assert bool(torch.isfinite(lam[1:-1]).all())
    assert bool(torch.isfinite(lam[-1])) == (float(sde.alpha(sde.t_max)) > 0)  # −∞ only where α = 0
    assert bool((lam[1:] < lam[:-1]).all())


def test_t_from_log_snr_inverts_log_snr(sde):
    t = torch.cat([interior_times(sde), t64(sde.t_max)])
    if math.isfinite(float(sde.log_snr(sde.t_min))):
        t = torch.cat([t64(sde.t_min), t])
    back = sde.t_from_log_snr(sde.log_snr(t))
    assert back.shape == t.shape
    torch.testing.assert_close(back, t, rtol=0, atol=1e-9)
    for u in (float(t[1]), float(t[len(t) // 2]), float(t[-2])):
        assert float(sde.t_from_log_snr(float(sde.log_snr(u)))) == pytest.approx(u, abs=1e-9)


# --- marginals -----------------------------------------------------------------------------------

def test_marginal_and_perturb_are_the_affine_kernel(sde):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 5, generator=gen, dtype=F64)
    noise = torch.randn(4, 3, 5, generator=gen, dtype=F64)
    mu = torch.randn(4, 3, 5, generator=gen, dtype=F64) if is_mean_reverting(sde) else None
    t = interior_times(sde, 4)[:4]
    a, s = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
    mean, std = sde.marginal(x0, t, mu)
    expected_mean = a * x0 + (0 if mu is None else (1 - a) * mu)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(std.expand_as(x0), s.expand_as(x0), rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.perturb(x0, t, noise, mu), expected_mean + s * noise, rtol=1e-14, atol=1e-14)
    # a float time is every sample's time
    mean1, std1 = sde.marginal(x0, float(t[2]), mu)
    torch.testing.assert_close(mean1[2], mean[2], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(std1.expand_as(x0)[2], std.expand_as(x0)[2], rtol=1e-14, atol=0)


def simulation_grid(sde, steps: int = 1000) -> torch.Tensor:
    """About ``steps`` steps from t_min to t_max; a tabulated schedule's knots are grid points, so no step
    straddles a knot (the coefficients are smooth inside every step)."""
    k = knots(sde)
    if k is None:
        return torch.linspace(sde.t_min, regular_t_max(sde), steps + 1, dtype=F64)
    k = torch.cat([t64(sde.t_min), k[(k > sde.t_min) & (k < sde.t_max)], t64(sde.t_max)])
    m = max(1, round(steps / (len(k) - 1)))
    sub = torch.linspace(0, 1, m + 1, dtype=F64)[:-1]
    return torch.cat([(k[:-1, None] + (k[1:] - k[:-1])[:, None] * sub).flatten(), k[-1:]])


def simulate_forward(sde, t_grid, y, gen, record):
    """Simulate ``dy = f(t) y dt + g(t) dw`` (y = x − μ) with a weak-order-2 Taylor scheme for linear SDEs
    with additive noise, ``y' = (1 + Δf̄ + (Δf̄)²/2) y + sqrt(g² Δ)(1 + Δf̄/2) ξ``, f̄ from the 2-point Gauss
    rule and g² at the mid-point — only ``f`` and ``g2``, evaluated inside each step. Returns the samples at
    the ``record`` step indices with the scheme's own exact mean factor and variance (it is linear:
    ``y' = A y + C ξ``); their distance from the true marginal is the discretisation bias."""
    dt = t_grid[1:] - t_grid[:-1]
    mid = 0.5 * (t_grid[1:] + t_grid[:-1])
    gauss = dt / (2 * math.sqrt(3))
    f_bar = 0.5 * (sde.f(mid - gauss) + sde.f(mid + gauss))
    A = 1 + dt * f_bar + 0.5 * (dt * f_bar) ** 2
    C = torch.sqrt(sde.g2(mid) * dt) * (1 + 0.5 * dt * f_bar)
    out, factor, extra_var = {}, 1.0, 0.0
    for k in range(len(dt)):
        y = A[k] * y + C[k] * torch.randn(y.shape, generator=gen, dtype=F64)
        factor, extra_var = factor * float(A[k]), float(A[k]) ** 2 * extra_var + float(C[k]) ** 2
        if k + 1 in record:
            out[k + 1] = (y.clone(), factor, extra_var)
    return out


def test_marginal_matches_simulated_forward_sde(sde):
    """Start from the marginal at t_min, integrate the forward SDE with f and g² only, compare the empirical
    mean and std at three later times with ``marginal``: 5 standard errors plus the scheme's exact bias."""
    n = 20000
    x0 = torch.tensor([0.7], dtype=F64)
    mu = mu_of(sde, value=-1.3)
    shift = 0.0 if mu is None else float(mu)
    gen = torch.Generator().manual_seed(2024)
    t_grid = simulation_grid(sde)
    steps = len(t_grid) - 1
    m0, s0 = sde.marginal(x0, sde.t_min, mu)
    y = (float(m0) - shift) + float(s0) * torch.randn(n, generator=gen, dtype=F64)
    record = (steps // 4, 3 * steps // 5, steps)
    sims = simulate_forward(sde, t_grid, y, gen, record)
    for k in record:
        y_k, factor, extra_var = sims[k]
        mean, std = (float(v) for v in sde.marginal(x0, float(t_grid[k]), mu))
        scheme_mean = shift + factor * (float(m0) - shift)
        scheme_std = math.sqrt(factor**2 * float(s0) ** 2 + extra_var)
        se_mean, se_std = std / math.sqrt(n), std / math.sqrt(2 * n)
        # the discretisation bias must be small next to the sampling error, or the test would be toothless
        assert abs(scheme_mean - mean) < 0.5 * se_mean + 1e-12
        assert abs(scheme_std - std) < 2 * se_std
        assert abs(float(y_k.mean()) + shift - mean) < 5 * se_mean + abs(scheme_mean - mean)
        assert abs(float(y_k.std()) - std) < 5 * se_std + abs(scheme_std - std)


# --- transitions ------------------------------------------------------------------------------------

def test_transition_is_ratio_of_alphas_and_residual_variance(sde):
    t = interior_times(sde, 9)
    s_, t_ = t[:-1], t[1:]
    a, g2 = sde.transition(s_, t_)
    torch.testing.assert_close(a, sde.alpha(t_) / sde.alpha(s_), rtol=1e-13, atol=0)
    torch.testing.assert_close(g2, sde.sigma(t_) ** 2 - a**2 * sde.sigma(s_) ** 2, rtol=1e-12, atol=1e-15)
    assert bool((a < 1).all() if not isinstance(sde, S.VESDE) else (a == 1).all())
    assert bool((g2 > 0).all())


def test_transitions_compose(sde):
    t = interior_times(sde, 12)
    t1, t2, t3 = t[0:4], t[4:8], t[8:12]
    a12, g12 = sde.transition(t1, t2)
    a23, g23 = sde.transition(t2, t3)
    a13, g13 = sde.transition(t1, t3)
    torch.testing.assert_close(a13, a12 * a23, rtol=1e-13, atol=0)
    torch.testing.assert_close(g13, a23**2 * g12 + g23, rtol=1e-11, atol=1e-15)


# --- priors ---------------------------------------------------------------------------------------

def test_prior_std_is_the_marginal_std_at_t_max(sde):
    assert sde.prior_std == pytest.approx(float(sde.sigma(sde.t_max)), rel=1e-4)


def test_prior_sample_is_mu_plus_prior_std_normal(sde):
    mu = torch.linspace(-1, 1, 6, dtype=F64).reshape(2, 3) if is_mean_reverting(sde) else None
    x = sde.prior_sample((2, 3), mu, generator=torch.Generator().manual_seed(5), dtype=F64)
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    expected = sde.prior_std * z + (0 if mu is None else mu)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-15)
    again = sde.prior_sample((2, 3), mu, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.equal(x, again)


def test_prior_sample_per_sample_generators_do_not_depend_on_the_batch(sde):
    mu = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64) \
        if is_mean_reverting(sde) else None
    gens = [torch.Generator().manual_seed(100 + b) for b in range(4)]
    x = sde.prior_sample((4, 2, 3), mu, generator=gens, dtype=F64)
    for b in range(4):
        row = sde.prior_sample((1, 2, 3), None if mu is None else mu[b:b + 1],
                               generator=[torch.Generator().manual_seed(100 + b)], dtype=F64)
        assert torch.equal(x[b], row[0])
    assert not torch.equal(x[0], x[1])
    with pytest.raises(ValueError, match="one per sample"):
        sde.prior_sample((3, 2), generator=gens)


@pytest.mark.parametrize("sde_id,factory", [ALL_SDES[0], ALL_SDES[-1]], ids=["vp", "ouve"])
def test_prior_sample_complex_is_circular(sde_id, factory):
    """SGMSE convention: complex prior noise has E|z|² = 1, real and imaginary parts each variance ½."""
    sde = factory()
    n = 200000
    mu = torch.full((n,), 0.3 - 0.2j, dtype=torch.complex128) if is_mean_reverting(sde) else None
    x = sde.prior_sample((n,), mu, generator=torch.Generator().manual_seed(3), dtype=torch.complex128)
    assert x.dtype == torch.complex128
    z = (x - (0 if mu is None else mu)) / sde.prior_std
    var_tol = 5 * 0.5 * math.sqrt(2 / n)
    for part in (z.real, z.imag):
        assert float(part.mean()) == pytest.approx(0, abs=5 * math.sqrt(0.5 / n))
        assert float(part.var()) == pytest.approx(0.5, abs=var_tol)
    assert float((z.real * z.imag).mean()) == pytest.approx(0, abs=5 * 0.5 / math.sqrt(n))


# --- reference values: IR-SDE / MR Sampler (mr_sampler.md §2) -----------------------------------

def test_mr_theta_schedule_reference_values():
    sde = S.MRSDE(50 / 255, "cosine", 100, 0.005)
    th = sde.thetas
    assert len(th) == 101
    assert float(th[0]) == pytest.approx(6.142e-4, abs=5e-8)
    assert float(th[1]) == pytest.approx(1.695e-3, abs=5e-7)
    assert float(th[100]) == pytest.approx(0.99977, abs=5e-6)
    assert float(th.sum()) == pytest.approx(50.900, abs=5e-4)
    assert sde.dt == pytest.approx(0.104093, abs=5e-7)
    # IR-SDE's own dt divides by Σθ − θ_0
    irsde = S.MRSDE(50 / 255, "cosine", 100, 0.005, convention="irsde")
    assert irsde.dt == pytest.approx(-math.log(0.005) / (float(th.sum()) - float(th[0])), rel=1e-14)


def test_mr_alpha_reference_values():
    mrs, irsde = S.MRSDE(convention="mrs"), S.MRSDE(convention="irsde")
    idx = t64(1, 50, 100) / 100
    a_mrs, a_ir = mrs.alpha(idx), irsde.alpha(idx)
    assert float(a_ir[0]) == pytest.approx(0.99982, abs=5e-6)
    assert float(a_mrs[0]) == pytest.approx(0.99976, abs=5e-6)
    for a in (a_mrs, a_ir):
        assert float(a[1]) == pytest.approx(0.3608, abs=5e-5)
        assert float(a[2]) == pytest.approx(0.005, rel=1e-12)  # α(T) = eps exactly
    assert float(mrs.sigma(1.0)) == pytest.approx(0.196076, abs=5e-7)
    assert float(mrs.alpha(0.0)) == pytest.approx(0.999936, abs=5e-7)
    assert float(mrs.sigma(0.0)) == pytest.approx(0.002217, abs=5e-7)
    assert float(irsde.sigma(0.0)) == 0.0


@pytest.mark.parametrize("index,value", [(0, 6.111), (1, 5.449), (10, 3.382), (50, 0.680), (90, -2.637),
                                         (100, -3.669)])
def test_mr_log_snr_reference_values_mrs_convention(index, value):
    assert float(S.MRSDE(50 / 255).log_snr(index / 100)) == pytest.approx(value, abs=5e-4)


def test_mr_log_snr_reference_values_irsde_convention():
    assert float(S.MRSDE(50 / 255, convention="irsde").log_snr(0.01)) == pytest.approx(5.604, abs=5e-4)
    assert math.isinf(float(S.MRSDE(50 / 255, convention="irsde").log_snr(0.0)))
    small = S.MRSDE(10 / 255, convention="irsde")
    assert float(small.log_snr(0.01)) == pytest.approx(7.213, abs=5e-4)
    assert float(small.log_snr(0.50)) == pytest.approx(2.289, abs=5e-4)
    assert float(small.log_snr(1.00)) == pytest.approx(-2.060, abs=5e-4)


def test_mr_is_exact_at_irsde_indices():
    """At every index k: θ̄_k = Σ_{i≤k} θ_i (− θ_0 for IR-SDE), α = e^{−θ̄ dt}, σ² = λ²(1 − α²)."""
    for conv in ("mrs", "irsde"):
        sde = S.MRSDE(30 / 255, "cosine", 100, 0.005, convention=conv)
        th = sde.thetas
        cum = torch.cumsum(th, 0) - (th[0] if conv == "irsde" else 0)
        dt = -math.log(0.005) / float(cum[-1])
        t = torch.arange(101, dtype=F64) / 100
        alpha = torch.exp(-cum * dt)
        torch.testing.assert_close(sde.alpha(t), alpha, rtol=1e-13, atol=0)
        torch.testing.assert_close(sde.sigma(t), 30 / 255 * torch.sqrt(1 - alpha**2), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(sde.model_time(t), torch.arange(101, dtype=F64), rtol=0, atol=1e-12)


MR_SDES = [(i, f) for i, f in ALL_SDES if i.startswith("mr")]


@pytest.mark.parametrize("sde_id,factory", MR_SDES, ids=[i for i, _ in MR_SDES])
def test_mr_g2_over_theta_is_twice_stationary_variance(sde_id, factory):
    """IR-SDE's constraint σ_t²/θ_t = 2λ² (g² = −2λ² f) holds at every time."""
    sde = factory()
    t = torch.linspace(sde.t_min, sde.t_max, 1001, dtype=F64)
    torch.testing.assert_close(sde.g2(t), -2 * sde.stationary_std**2 * sde.f(t), rtol=1e-14, atol=0)
    assert bool((sde.f(t) < 0).all())


def test_mr_from_irsde_config_reads_8bit_units():
    assert S.MRSDE.from_irsde_config(50).stationary_std == pytest.approx(50 / 255, rel=1e-15)
    assert S.MRSDE.from_irsde_config(0.2).stationary_std == 0.2


# --- reference values: SGMSE OUVE (sgmse.md §1.1) --------------------------------------------------

def test_ouve_reference_values():
    sde = S.OUVESDE(theta=1.5, sigma_min=0.05, sigma_max=0.5)
    t = t64(0.03, 0.5, 1.0)
    torch.testing.assert_close(sde.sigma(t), t64(0.018830, 0.121657, 0.388983), rtol=0, atol=5e-7)
    torch.testing.assert_close(torch.sqrt(sde.g2(t)), t64(0.11497, 0.33931, 1.07298), rtol=0, atol=5e-6)
    torch.testing.assert_close(sde.alpha(t), torch.exp(-1.5 * t), rtol=1e-15, atol=0)
    torch.testing.assert_close(sde.alpha(t), t64(0.9560, 0.4724, 0.2231), rtol=0, atol=5e-5)
    assert sde.prior_std == pytest.approx(0.388983, abs=5e-7)
    wide = S.OUVESDE(theta=2.0, sigma_min=0.1, sigma_max=1.0)
    # the exact float64 value is 0.7314815 (SGMSE's formula in float64 too); the reference's last digit
    # comes from a float32 run (0.73148155), so allow one unit of the printed digit
    assert float(wide.sigma(1.0)) == pytest.approx(0.731482, abs=1e-6)
    assert float(wide.sigma(0.03)) == pytest.approx(0.037390, abs=5e-7)


def test_ouve_sigma_closed_form():
    """σ² = σ_min² ((σ_max/σ_min)^{2t} − e^{−2θt}) L/(θ + L), SGMSE's ``_std``."""
    theta, smin, smax = 1.5, 0.05, 0.5
    sde = S.OUVESDE(theta, smin, smax)
    L = math.log(smax / smin)
    for t in (1e-6, 0.03, 0.2, 0.77, 1.0):
        var = smin**2 * ((smax / smin) ** (2 * t) - math.exp(-2 * theta * t)) * L / (theta + L)
        assert float(sde.sigma(t)) == pytest.approx(math.sqrt(var), rel=1e-12)
        assert float(sde.g2(t)) == pytest.approx((smin * (smax / smin) ** t) ** 2 * 2 * L, rel=1e-13)
    assert float(sde.sigma(0.0)) == 0.0
    assert torch.equal(sde.model_time(t64(0.3, 0.7)), t64(0.3, 0.7))


# --- VP family -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sde_id,factory", ALL_SDES[:3], ids=[i for i, _ in ALL_SDES[:3]])
def test_vp_preserves_variance(sde_id, factory):
    sde = factory()
    t = torch.linspace(sde.t_min, sde.t_max, 101, dtype=F64)
    torch.testing.assert_close(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-14)
    torch.testing.assert_close(sde.g2(t), -2 * sde.f(t), rtol=1e-14, atol=0)


def test_vp_linear_matches_score_sde_closed_form():
    beta_min, beta_max = 0.1, 20.0
    sde = S.VPSDE(beta_min, beta_max)
    for t in (1e-3, 0.1, 0.5, 0.9, 1.0):
        log_mean_coeff = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
        assert float(sde.log_alpha(t)) == pytest.approx(log_mean_coeff, rel=1e-14)
        assert float(sde.sigma(t)) == pytest.approx(math.sqrt(1 - math.exp(2 * log_mean_coeff)), rel=1e-12)
        beta = beta_min + t * (beta_max - beta_min)
        assert float(sde.f(t)) == pytest.approx(-0.5 * beta, rel=1e-14)
        assert float(sde.g2(t)) == pytest.approx(beta, rel=1e-14)
    assert torch.equal(sde.model_time(t64(0.25)), t64(0.25))


def test_discrete_vp_reproduces_the_ddpm_table():
    ac = ddpm_linear_alphas_cumprod()
    sde = S.VPSDE.from_alphas_cumprod(ac)
    n = len(ac)
    t = torch.arange(n, dtype=F64) / (n - 1)
    torch.testing.assert_close(sde.alpha(t) ** 2, ac, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.sigma(t) ** 2, 1 - ac, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.model_time(t), torch.arange(n, dtype=F64), rtol=0, atol=1e-9)
    # λ is linear in t between table points
    mid = (torch.arange(n - 1, dtype=F64) + 0.5) / (n - 1)
    lam = 0.5 * torch.log(ac / (1 - ac))
    torch.testing.assert_close(sde.log_snr(mid), 0.5 * (lam[1:] + lam[:-1]), rtol=1e-12, atol=1e-12)
    assert float(ac[0]) == pytest.approx(1 - 1e-4, rel=1e-15)
    betas_sde = S.DiscreteVPSDE.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    torch.testing.assert_close(betas_sde.alphas_cumprod, ac, rtol=1e-15, atol=0)


def test_cosine_vp_matches_improved_ddpm_formula():
    s = 0.008
    sde = S.VPSDE.cosine(s)
    for t in (1e-3, 0.2, 0.5, 0.8, 0.99):
        alpha = math.cos(math.pi / 2 * (t + s) / (1 + s)) / math.cos(math.pi / 2 * s / (1 + s))
        assert float(sde.alpha(t)) == pytest.approx(alpha, rel=1e-13)
        assert float(sde.sigma(t)) == pytest.approx(math.sqrt(1 - alpha**2), rel=1e-12)
    assert float(sde.alpha(0.0)) == pytest.approx(1.0, abs=1e-15)
    assert sde.t_max == 0.9946


def test_subvp_sigma_is_one_minus_alpha_squared():
    sde, vp = S.SubVPSDE(), S.VPSDE()
    t = torch.linspace(1e-3, 1, 50, dtype=F64)
    torch.testing.assert_close(sde.alpha(t), vp.alpha(t), rtol=1e-15, atol=0)
    torch.testing.assert_close(sde.sigma(t), 1 - vp.alpha(t) ** 2, rtol=1e-13, atol=0)
    # score_sde's sub-VP diffusion: β(t)(1 − e^{−2∫β})
    int_beta = 0.5 * t**2 * (20 - 0.1) + 0.1 * t
    torch.testing.assert_close(sde.g2(t), (0.1 + t * 19.9) * (1 - torch.exp(-2 * int_beta)), rtol=1e-13, atol=0)


def test_ve_sigma_is_geometric_and_model_time_is_sigma():
    smin, smax = 0.01, 50.0
    sde = S.VESDE(smin, smax)
    t = torch.linspace(0, 1, 11, dtype=F64)
    expected = smin * (smax / smin) ** t
    torch.testing.assert_close(sde.sigma(t), expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.alpha(t), torch.ones_like(t), rtol=0, atol=0)
    torch.testing.assert_close(sde.model_time(t), expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.g2(t), 2 * math.log(smax / smin) * expected**2, rtol=1e-13, atol=0)
    assert sde.prior_std == smax


# --- validation --------------------------------------------------------------------------------------

BAD_ARGUMENTS = {
    "MRSDE(schedule='foo')": (lambda: S.MRSDE(schedule="foo"), ["foo", "cosine", "linear", "constant"]),
    "MRSDE(convention='ddpm')": (lambda: S.MRSDE(convention="ddpm"), ["ddpm", "mrs", "irsde"]),
    "MRSDE(steps=0)": (lambda: S.MRSDE(steps=0), ["steps", "0"]),
    "MRSDE(steps=2.5)": (lambda: S.MRSDE(steps=2.5), ["steps", "2.5"]),
    "MRSDE(eps=1.5)": (lambda: S.MRSDE(eps=1.5), ["eps", "1.5"]),
    "MRSDE(stationary_std=-0.1)": (lambda: S.MRSDE(stationary_std=-0.1), ["stationary_std", "-0.1"]),
    "MRSDE(t_min=1.0)": (lambda: S.MRSDE(t_min=1.0), ["t_min", "1.0"]),
    "VESDE(sigma_min=-0.01)": (lambda: S.VESDE(sigma_min=-0.01), ["sigma_min", "-0.01"]),
    "VESDE(sigma_min=5.0, sigma_max=1.0)":
        (lambda: S.VESDE(sigma_min=5.0, sigma_max=1.0), ["sigma_max", "sigma_min"]),
    "VESDE(t_min=-1e-3)": (lambda: S.VESDE(t_min=-1e-3), ["t_min", "-0.001"]),
    "VPSDE(beta_min=20.0, beta_max=0.1)": (lambda: S.VPSDE(beta_min=20.0, beta_max=0.1), ["beta_max", "beta_min"]),
    "VPSDE(beta_min=1.0, beta_max=1.0)": (lambda: S.VPSDE(beta_min=1.0, beta_max=1.0), ["beta_max"]),
    "VPSDE(beta_max=float('nan'))": (lambda: S.VPSDE(beta_max=float("nan")), ["beta_max", "nan"]),
    "VPSDE(t_min=2.0)": (lambda: S.VPSDE(t_min=2.0), ["t_min", "2.0"]),
    "VPSDE.cosine(t_max=1.0)": (lambda: S.VPSDE.cosine(t_max=1.0), ["t_max", "1.0"]),
    "SubVPSDE(beta_min=0.0)": (lambda: S.SubVPSDE(beta_min=0.0), ["beta_min", "0.0"]),
    "OUVESDE(theta=-1.5)": (lambda: S.OUVESDE(theta=-1.5), ["theta", "-1.5"]),
    "OUVESDE(sigma_min=0.5, sigma_max=0.05)":
        (lambda: S.OUVESDE(sigma_min=0.5, sigma_max=0.05), ["sigma_max", "sigma_min"]),
    "OUVESDE(t_min=1.2)": (lambda: S.OUVESDE(t_min=1.2), ["t_min", "1.2"]),
    "VPSDE.from_alphas_cumprod([0.9, 0.95, 0.5])":
        (lambda: S.VPSDE.from_alphas_cumprod([0.9, 0.95, 0.5]), ["decreasing"]),
    "VPSDE.from_alphas_cumprod([1.0, 0.5])": (lambda: S.VPSDE.from_alphas_cumprod([1.0, 0.5]), ["(0, 1)"]),
}


@pytest.mark.parametrize("build,words", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_raise_helpful_errors(build, words):
    with pytest.raises(ValueError) as info:
        build()
    for word in words:
        assert word in str(info.value)


def test_numpy_scalars_are_valid_arguments():
    np = pytest.importorskip("numpy")
    sde = S.VPSDE(beta_min=np.float32(0.1), beta_max=np.float64(20.0))
    assert sde.beta_min == pytest.approx(0.1, rel=1e-7)
    assert S.MRSDE(stationary_std=np.float32(0.2)).stationary_std == pytest.approx(0.2, rel=1e-7)
