"""Every sampler in the registry against exact solutions for Gaussian data (no per-sampler test code:
a newly registered sampler is checked by these loops)."""
from __future__ import annotations

import pytest
import torch

import revsde
from revsde import sde as S

from fixtures import (exact_marginal_draw, exact_model, gaussian, loglog_slope, moment_tolerances, mu_for,
                   pf_ode_map, two_modes)

SDES = {
    "vp": S.VPSDE,
    "subvp": S.SubVPSDE,
    "ve": S.VESDE,
    "mr": S.MRSDE,
    "ouve": S.OUVESDE,
    "rf": S.RectifiedFlow,
}
SAMPLERS = [n for n in revsde.samplers.available() if n != "dmcmc"]  # needs a classifier: tests/core/test_dmcmc.py
DEFAULTS = {n: revsde.samplers.get(n) for n in SAMPLERS}
ODE_SAMPLERS = [n for n, smp in DEFAULTS.items() if smp.kind == "ode" and not smp.adaptive]
# Options under which each sampler is a consistent integrator of the marginals of p_t. The Langevin
# corrector with a fixed snr has an O(snr²) stationary bias (≈ snr² relative in the covariance:
# 2.6% at the default 0.16) that no number of steps removes, so the exactness test uses a small snr;
# test_pc_langevin_bias_is_snr_squared checks the bias itself. On this 2-D data the per-sample norms
# (pc's default) are heavy-tailed: ‖s_b‖ comes near 0 around the mode and the step 2 (snr ‖z‖/‖s‖)² explodes
# (VE's covariance doubles); score_sde's batch-mean norms are the consistent choice here, and
# test_pc_per_sample_norms_reach_exact_distribution_in_high_dimension checks the default where it is meant.
EXACT_OPTIONS = {"pc": {"snr": 0.02, "langevin_norms": "batch"}}


def high_nfe_steps(sampler) -> int:
    """Enough steps for the discretisation bias to sit well below the sampling error of 20000 samples
    (first-order ODE Euler on VE, σ from 50 to 0.01, needs the most)."""
    if sampler.kind == "sde":
        return 600
    return {1.0: 2000, 2.0: 100}.get(sampler.order, 40)


def run_exact(sde, name, n=20000, steps=None, seed=0, **options):
    mixture = gaussian()
    mu = mu_for(sde)
    x_init = exact_marginal_draw(mixture, sde, sde.t_max, n, mu, seed)
    smp = revsde.samplers.get(name, **options)
    sol = revsde.sample(exact_model(mixture, sde), x_init=x_init, sampler=smp,
                        steps=steps or high_nfe_steps(smp), mu=None if mu is None else mu.expand(n, -1),
                        generator=torch.Generator().manual_seed(seed + 1))
    return sol, mixture.marginal_moments(sde, sde.t_min, mu)


# VP in the default tier; the other SDEs (minutes in all) in the slow one
@pytest.mark.parametrize("sde_name", [s if s == "vp" else pytest.param(s, marks=pytest.mark.slow) for s in SDES])
@pytest.mark.parametrize("name", SAMPLERS)
def test_reaches_exact_distribution(name, sde_name):
    """At high NFE every sampler reaches N(α m + (1−α)μ, α²C + σ²I) at t_min, within 5 standard errors."""
    sde = SDES[sde_name]()
    n = 20000
    sol, (mean, cov) = run_exact(sde, name, n=n, **EXACT_OPTIONS.get(name, {}))
    x = sol.x
    mean_tol, cov_tol = moment_tolerances(cov, n)
    assert sol.x.dtype == torch.float64
    assert torch.all((x.mean(0) - mean).abs() < mean_tol), (x.mean(0), mean, mean_tol)
    assert torch.all((torch.cov(x.T) - cov).abs() < cov_tol), (torch.cov(x.T), cov, cov_tol)


def test_pc_langevin_bias_is_snr_squared():
    """Song et al.'s Langevin corrector with a fixed snr targets a slightly widened N(m, v/(1 − O(snr²))) on
    Gaussian data: the documented O(snr²) bias, visible at a large snr and gone at a small one."""
    sde = S.VESDE()
    n = 20000
    sol, (mean, cov) = run_exact(sde, "pc", n=n, steps=200, snr=0.4, corrector_steps=4, langevin_norms="batch")
    ratio = torch.cov(sol.x.T).diagonal() / cov.diagonal()
    assert torch.all(ratio > 1.08), ratio  # ≈ 1/(1 − 0.16) with corrector steps dominating


@pytest.mark.parametrize("sde_name", ["vp", "ve", "mr"])
def test_pc_per_sample_norms_reach_exact_distribution_in_high_dimension(sde_name):
    """pc's default Langevin step uses each sample's own ‖z‖/‖s‖. In dimension D these norms concentrate
    (relative spread O(1/sqrt(D))), so on 64-dimensional Gaussian data the corrector is consistent, as
    with batch-mean norms: mean within 5 standard errors, and the variance, averaged over coordinates,
    within 8% (measured on VE at 200 steps: +4.8%, against +3.6% with batch norms, the rest being the
    discretisation; in 2-D per-sample norms double it)."""
    d, n = 64, 2000
    gen = torch.Generator().manual_seed(7)
    mean0 = torch.randn(d, generator=gen, dtype=torch.float64) * 0.5
    scales = torch.linspace(0.3, 1.5, d, dtype=torch.float64)
    mixture = revsde.nets.gmm.GaussianMixture.gaussian(mean0, torch.diag(scales**2))
    sde = SDES[sde_name]()
    mu = None if sde_name != "mr" else torch.full((d,), 0.2, dtype=torch.float64)
    x_init = exact_marginal_draw(mixture, sde, sde.t_max, n, mu, seed=8)
    sol = revsde.sample(exact_model(mixture, sde), x_init=x_init, sampler="pc", snr=0.02, steps=200,
                        mu=None if mu is None else mu.expand(n, -1), generator=torch.Generator().manual_seed(9))
    mean, cov = mixture.marginal_moments(sde, sde.t_min, mu)
    var = cov.diagonal()
    assert float(((sol.x.mean(0) - mean).abs() / (var / n).sqrt()).max()) < 5
    assert abs(float((sol.x.var(0) / var).mean()) - 1) < 0.08


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_ode_convergence_order(name, sde_name):
    """Fit the global order against the closed-form PF-ODE map; within ±0.3 of the declared order.

    For MR the linear θ table is used: its interpolation between indices is smooth, while the cosine
    table's θ has small kinks at the indices that cap RK4 near 3.6 once the error is below 1e-8.
    """
    sde = S.MRSDE(schedule="linear") if sde_name == "mr" else SDES[sde_name]()
    smp = revsde.samplers.get(name)
    mixture, mu = gaussian(), mu_for(sde)
    x_init = exact_marginal_draw(mixture, sde, sde.t_max, 64, mu, seed=3)
    exact = pf_ode_map(mixture, sde, x_init, sde.t_max, sde.t_min, mu)
    base = {1.0: 64, 2.0: 16, 3.0: 16, 4.0: 32}[smp.order]
    if sde_name == "rf" and name == "mrs":
        # Uniform t on rectified flow takes λ-steps of O(1) next to both ends (λ = ∓∞): the multistep
        # error is O(Δ² log N), ratios 3.3-3.6 per halving at these N, so it is measured further out.
        base *= 4
    ns = [base, 2 * base, 4 * base, 8 * base]
    errors = []
    for n in ns:
        sol = revsde.sample(exact_model(mixture, sde), x_init=x_init, sampler=smp, steps=n,
                            mu=None if mu is None else mu.expand(64, -1))
        assert sol.nfe == n * smp.evals_per_step
        errors.append(float((sol.x - exact).abs().max()))
    order = loglog_slope(ns, errors)
    expected = smp.order
    if sde_name == "rf" and name == "unipc":
        # the step into σ = 0 (t = 0, λ = +∞) is first order, an O(Δ²) error in x̂₀ there: UniPC's third
        # order shows on every SDE whose grid ends at a finite λ, and is capped at 2 here
        expected = min(smp.order, 2.0)
    assert abs(order - expected) <= 0.3, (name, sde_name, order, errors)


@pytest.mark.parametrize("sde_name", [*SDES, "mr-linear"])
def test_rk45_meets_its_tolerance(sde_name):
    """Adaptive Dormand–Prince: error against the exact map shrinks with the tolerance, NFE grows.

    IR-SDE's cosine θ is a table; between its indices θ is interpolated with kinks (C⁰), which limit
    what a 5th-order error estimate can promise, so there the bound is 1e-3; with the linear table
    the interpolated θ is smooth and the bound is the same as for the analytic schedules.
    """
    sde = S.MRSDE(schedule="linear") if sde_name == "mr-linear" else SDES[sde_name]()
    mixture, mu = gaussian(), mu_for(sde)
    x_init = exact_marginal_draw(mixture, sde, sde.t_max, 64, mu, seed=4)
    exact = pf_ode_map(mixture, sde, x_init, sde.t_max, sde.t_min, mu)
    results = []
    for tol in (1e-3, 1e-5, 1e-7):
        sol = revsde.sample(exact_model(mixture, sde), x_init=x_init, sampler="ode_rk45", rtol=tol, atol=tol,
                            mu=None if mu is None else mu.expand(64, -1))
        results.append((float((sol.x - exact).abs().max()), sol.nfe))
    errors, nfes = zip(*results)
    assert errors[0] > errors[1] > errors[2], results
    assert errors[2] < (1e-3 if sde_name == "mr" else 1e-5), results
    assert nfes[0] < nfes[1] < nfes[2], results


def _strong_samplers():
    """(id, sampler) for every SDE sampler with a declared strong order, noise on the Brownian path."""
    out = []
    for name in SAMPLERS:
        if DEFAULTS[name].kind != "sde":
            continue
        variants = [{"method": m} for m in revsde.samplers.torchsde_sampler.METHODS] if name == "torchsde" else [{}]
        for options in variants:
            if "denoise" in revsde.samplers.option_names(name):
                options = {**options, "denoise": False}  # the last step's noise is part of the path
            if name == "pc":
                options = {**options, "corrector": None}
            smp = revsde.samplers.get(name, **options)
            if smp.order is not None:
                out.append(pytest.param(smp, id=f"{name}-{options.get('method', '')}".rstrip("-")))
    return out


@pytest.mark.slow  # a 2048-step reference per case: about 7 minutes in all
@pytest.mark.parametrize("sde_name", ["vp", "ve", "mr", "ouve", "rf"])
@pytest.mark.parametrize("smp", _strong_samplers())
def test_sde_strong_order(smp, sde_name):
    """Strong order with BrownianNoise: error against a fine-grid solution on the same Brownian path.

    Data: a two-component mixture, so the drift is nonlinear in x (on Gaussian data the reverse SDE
    is linear and some methods, e.g. SRA1, gain half an order or more).
    """
    sde = SDES[sde_name]()
    mixture, mu = two_modes(), mu_for(sde)
    batch = 256
    x_init = exact_marginal_draw(gaussian(), sde, sde.t_max, batch, mu, seed=5)
    noise = revsde.BrownianNoise((batch, 2), sde.t_min, sde.t_max, entropy=1234, dtype=torch.float64)
    model = exact_model(mixture, sde)
    mu_b = None if mu is None else mu.expand(batch, -1)

    def solve(n):
        return revsde.sample(model, x_init=x_init, sampler=smp, steps=n, grid="uniform_t", mu=mu_b, noise=noise).x

    reference = solve(2048)
    ns = [32, 64, 128, 256]
    errors = [float((solve(n) - reference).abs().mean()) for n in ns]
    order = loglog_slope(ns, errors)
    # At least the declared order; a method may do better on a particular drift (SRA1 reaches ~2
    # when the drift is nearly linear, as on VE where σ dominates the score), but not wildly so. On
    # rectified flow the first step from t = 1, where the SDE's coefficients are infinite, is the exact
    # posterior draw (not a step on the Brownian path): it caps the strong order at 1 (SRA1: 1.09).
    declared = min(smp.order, 1.0) if sde_name == "rf" else smp.order
    assert declared - 0.3 <= order <= smp.order + 0.6, (smp, sde_name, order, errors)


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_output(name):
    sde = S.VPSDE()
    model = exact_model(gaussian(), sde)
    a = revsde.sample(model, shape=(4, 2), sampler=name, steps=6, seed=7, dtype=torch.float64).x
    b = revsde.sample(model, shape=(4, 2), sampler=name, steps=6, seed=7, dtype=torch.float64).x
    c = revsde.sample(model, shape=(4, 2), sampler=name, steps=6, seed=8, dtype=torch.float64).x
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _stochastic_variants():
    """(id, name, options) for every stochastic sampler of the registry with its defaults, plus the
    variants whose noise enters differently: pc with each corrector, mrs's SDE solvers."""
    out = []
    for name in SAMPLERS:
        smp = DEFAULTS[name]
        if smp.adaptive:
            continue  # one adaptive step size serves the whole batch (documented), so steps depend on it
        variants = [{}]
        if name == "pc":
            variants = [{"corrector": c} for c in ("langevin", "ald", None)]
        elif name == "mrs":
            variants = [{"stochastic": True, "order": k} for k in (1, 2)]
        elif smp.kind != "sde":
            continue
        for options in variants:
            tag = "-".join(f"{v}" for v in options.values())
            out.append(pytest.param(name, options, id=f"{name}-{tag}" if tag else name))
    return out


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("noise", ["gaussian", "brownian"])
@pytest.mark.parametrize("name, options", _stochastic_variants())
def test_sample_does_not_depend_on_its_batch(name, options, noise, sde_name):
    """With ``seed=`` (per-sample Philox streams keyed seed + b), sample b is the same, bit for bit, in a
    batch of 3 and of 5 and placed elsewhere in a batch (keys 9 + b with b = 2, 3, 4 are 11, 12, 13), for
    every stochastic sampler on every SDE (the Langevin corrector included: its norms are per sample)."""
    smp = revsde.samplers.get(name, **options)
    assert smp.batch_independent
    sde = SDES[sde_name]()
    model = exact_model(two_modes(), sde)
    mu = mu_for(sde)

    def run(batch, seed=11):
        return revsde.sample(model, shape=(batch, 2), sampler=smp, steps=5, seed=seed, noise=noise,
                             mu=None if mu is None else mu.expand(batch, 2), dtype=torch.float64).x

    alone = run(3)
    assert torch.equal(alone, run(5)[:3])
    assert torch.equal(alone, run(5, seed=9)[2:])


@pytest.mark.parametrize("noise", ["gaussian", "brownian"])
@pytest.mark.parametrize("name, options", _stochastic_variants())
def test_sample_with_per_sample_torch_generators_does_not_depend_on_its_batch(name, options, noise):
    """``generator=`` a list of ``torch.Generator``s (one per sample) keeps its own batch invariance."""
    smp = revsde.samplers.get(name, **options)
    model = exact_model(two_modes(), S.VPSDE())

    def run(batch):
        gens = [torch.Generator().manual_seed(11 + b) for b in range(batch)]
        return revsde.sample(model, shape=(batch, 2), sampler=smp, steps=5, generator=gens, noise=noise,
                             dtype=torch.float64).x

    torch.testing.assert_close(run(3), run(5)[:3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SAMPLERS)
def test_nfe_is_counted_and_callback_sees_every_step(name):
    sde = S.VESDE()
    seen = []
    sol = revsde.sample(exact_model(gaussian(), sde), shape=(3, 2), sampler=name, steps=7, seed=0,
                        callback=lambda step: seen.append((step.i, step.nfe, step.x.shape)))
    assert [s[0] for s in seen] == list(range(len(seen)))
    assert sol.steps == len(seen)
    assert seen[-1][1] == sol.nfe
    smp = revsde.samplers.get(name)
    if not smp.adaptive and smp.evals_per_step is not None:
        assert len(seen) == 7
        assert sol.nfe == 7 * smp.evals_per_step


@pytest.mark.parametrize("name", [n for n in SAMPLERS if not DEFAULTS[n].adaptive])
def test_per_sample_grids(name):
    """A (N+1, B) grid: each column equals a separate run on that column's (N+1,) grid."""
    assert DEFAULTS[name].batch_independent
    sde = S.VPSDE()
    model = exact_model(gaussian(), sde)
    g1 = torch.linspace(1.0, sde.t_min, 9, dtype=torch.float64)
    g2 = torch.linspace(0.6, sde.t_min, 9, dtype=torch.float64)
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gens = lambda: [torch.Generator().manual_seed(50), torch.Generator().manual_seed(51)]
    both = revsde.sample(model, x_init=x, sampler=name, grid=torch.stack([g1, g2], 1), generator=gens())
    one = revsde.sample(model, x_init=x[:1], sampler=name, grid=g1, generator=gens()[:1])
    two = revsde.sample(model, x_init=x[1:], sampler=name, grid=g2, generator=gens()[1:])
    torch.testing.assert_close(both.x, torch.cat([one.x, two.x]), rtol=1e-10, atol=1e-12)
