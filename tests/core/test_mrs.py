"""The MR Sampler (``mrs``) and IR-SDE posterior sampling against exact solutions, the IR-SDE
formulas, and diffusers' DPM-Solver++ on the same timesteps."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import revsde
from revsde import sde as S

from fixtures import exact_marginal_draw, exact_model, gaussian, loglog_slope, moment_tolerances, mu_for, pf_ode_map

SDES = {"vp": S.VPSDE, "ve": S.VESDE, "mr": lambda: S.MRSDE(schedule="linear"), "ouve": S.OUVESDE}
ODE_COMBOS = list(itertools.product((1, 2, 3), ("data", "noise", "velocity")))


def _order(sde_name, ns, **options):
    sde = SDES[sde_name]()
    mixture, mu = gaussian(), mu_for(sde)
    x = exact_marginal_draw(mixture, sde, sde.t_max, 64, mu, seed=3)
    exact = pf_ode_map(mixture, sde, x, sde.t_max, sde.t_min, mu)
    errors = []
    for n in ns:
        sol = revsde.sample(exact_model(mixture, sde), x_init=x, sampler="mrs", steps=n,
                            mu=None if mu is None else mu.expand(64, -1), **options)
        errors.append(float((sol.x - exact).abs().max()))
    return loglog_slope(ns, errors), errors


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("order, prediction", ODE_COMBOS)
def test_ode_order_is_at_least_the_declared_order(order, prediction, sde_name):
    """Every ODE configuration with the midpoint warm-up: measured order ≥ declared − 0.3 (on Gaussian
    data some exceed it: q(λ) is nearly polynomial there)."""
    smp = revsde.samplers.get("mrs", order=order, prediction=prediction, warmup="midpoint")
    assert smp.order == order
    measured, errors = _order(sde_name, [16, 32, 64, 128], order=order, prediction=prediction, warmup="midpoint")
    assert measured >= order - 0.3, (measured, errors)


@pytest.mark.parametrize("sde_name", ["vp", "ouve"])
def test_multistep_warmup_caps_third_order_at_two(sde_name):
    """With DPM-Solver++'s lower-order start (one evaluation per step) the first step's O(h²) error
    dominates on a grid where the output varies fast near the prior, as the `order` attribute says;
    DPM-Solver's own 3M form is second-order consistent whatever the start."""
    assert revsde.samplers.get("mrs", order=3).order == 2.0
    assert revsde.samplers.get("mrs", order=3, warmup="midpoint", third_order="dpm-solver").order == 2.0
    measured, errors = _order(sde_name, [16, 32, 64, 128], order=3, grid="uniform_t")
    assert 1.7 <= measured, (measured, errors)


def test_third_order_step_integrates_a_quadratic_exactly():
    """One step, data prediction: y_t = (σ_t/σ_s) y_s + σ_t ∫ e^λ q(λ) dλ with q the quadratic through
    the three history points, checked against Simpson quadrature."""
    from revsde.samplers.mrs_weights import exponential

    sde = S.VPSDE()
    t = torch.tensor([[0.5], [0.4], [0.3], [0.2]], dtype=torch.float64)
    lam = sde.log_snr(t)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, generator=gen, dtype=torch.float64)
    qs = [torch.randn(1, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    history = [(lam[2], qs[0]), (lam[1], qs[1]), (lam[0], qs[2])]
    w = exponential("data", 3, [h[0] for h in history], lam[2], lam[3], sde.alpha(t[2]), sde.alpha(t[3]),
                    sde.sigma(t[2]), sde.sigma(t[3]))
    y = w.linear * x + sum(wj * q for wj, (_, q) in zip(w.outputs, history))

    nodes = [float(h[0]) for h in history]

    def q(l):
        return sum(v * math.prod((l - nodes[k]) / (nodes[j] - nodes[k]) for k in range(3) if k != j)
                   for j, v in enumerate(qs))

    ls, lt, n = float(lam[2]), float(lam[3]), 2000
    w = [1 if k in (0, n) else (4 if k % 2 else 2) for k in range(n + 1)]
    pts = [ls + (lt - ls) * k / n for k in range(n + 1)]
    integral = sum(wk * math.exp(p) * q(p) for wk, p in zip(w, pts)) * (lt - ls) / (3 * n)
    reference = sde.sigma(t[3]) / sde.sigma(t[2]) * x + sde.sigma(t[3]) * integral
    torch.testing.assert_close(y, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde_name", ["vp", "mr"])
@pytest.mark.parametrize("order, prediction", list(itertools.product((1, 2), ("data", "noise"))))
def test_sde_variants_reach_exact_distribution(order, prediction, sde_name):
    sde = S.MRSDE() if sde_name == "mr" else S.VPSDE()
    mixture, mu, n = gaussian(), mu_for(sde), 20000
    x = exact_marginal_draw(mixture, sde, sde.t_max, n, mu, seed=0)
    sol = revsde.sample(exact_model(mixture, sde), x_init=x, sampler="mrs", order=order, prediction=prediction,
                        stochastic=True, steps=200, mu=None if mu is None else mu.expand(n, -1),
                        generator=torch.Generator().manual_seed(1))
    mean, cov = mixture.marginal_moments(sde, sde.t_min, mu)
    mean_tol, cov_tol = moment_tolerances(cov, n)
    assert torch.all((sol.x.mean(0) - mean).abs() < mean_tol)
    assert torch.all((torch.cov(sol.x.T) - cov).abs() < cov_tol)


def test_noise_prediction_sde_diverges_at_low_nfe_and_warns():
    """The reference toy (mr_sampler.md §5): x0 ~ N(0.3, 0.2²), μ = 0.8, IR-SDE schedule, NFE 5.
    Noise-prediction SDE solvers blow up; data prediction stays bounded. revsde warns."""
    sde = S.MRSDE()
    mixture = revsde.nets.gmm.GaussianMixture.gaussian([0.3], [[0.04]])
    mu, n = torch.full((4000, 1), 0.8, dtype=torch.float64), 4000
    x = exact_marginal_draw(mixture, sde, sde.t_max, n, mu[0], seed=0)
    stds = {}
    for prediction in ("noise", "data"):
        with pytest.warns(UserWarning, match="diverges at low NFE") if prediction == "noise" else _no_warning():
            sol = revsde.sample(exact_model(mixture, sde), x_init=x, sampler="mrs", prediction=prediction,
                                stochastic=True, order=2, steps=5, grid="logsnr", mu=mu,
                                generator=torch.Generator().manual_seed(1))
        stds[prediction] = float(sol.x.std())
    assert stds["noise"] > 1.0  # the reference saw 15.5 (order 2, linspace) and 48.6 (linear-λ)
    assert 0.05 < stds["data"] < 0.4


def test_noise_sde_divergence_is_detected_after_the_run():
    """Beyond the a-priori warning at <= 10 steps, the result itself is checked: far outside the prior's scale is flagged."""
    sde = S.MRSDE()
    mixture = revsde.nets.gmm.GaussianMixture.gaussian([0.3], [[0.04]])
    mu = torch.full((2000, 1), 0.8, dtype=torch.float64)
    x = exact_marginal_draw(mixture, sde, sde.t_max, 2000, mu[0], seed=0)
    with pytest.warns(UserWarning, match="diverged: the result's RMS"):
        revsde.sample(exact_model(mixture, sde), x_init=x, sampler="mrs", prediction="noise", stochastic=True,
                      order=2, steps=5, grid="logsnr", mu=mu, generator=torch.Generator().manual_seed(1))


class _no_warning:
    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


@pytest.mark.parametrize("t_cur, t_next", [(0.5, 0.49), (0.9, 0.3), (0.07, 0.0)])
def test_posterior_is_the_irsde_formula(t_cur, t_next):
    """mr_sampler.md §3.1 with A = e^{−θ dt}, B = α_cur, C = α_next (A·C = B), rescaled to any step."""
    sde = S.MRSDE()
    gen = torch.Generator().manual_seed(0)
    x, mu, x0_hat = (torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    t1, t0 = torch.full((3,), t_cur, dtype=torch.float64), torch.full((3,), t_next, dtype=torch.float64)
    B, C = sde.alpha(t1)[:, None], sde.alpha(t0)[:, None]
    A = B / C
    mean = mu + A * (1 - C**2) / (1 - B**2) * (x - mu) + C * (1 - A**2) / (1 - B**2) * (x0_hat - mu)
    std = sde.stationary_std * torch.sqrt((1 - A**2) * (1 - C**2) / (1 - B**2))
    pred = revsde.Prediction("data", x0_hat, x, t1, sde, mu)
    got_mean, got_std = revsde.samplers.updates.posterior(sde, x, t1, t0, pred, mu)
    torch.testing.assert_close(got_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_std.expand_as(std), std, rtol=1e-12, atol=1e-14)


def _diffusers_run(scheduler, sde, mixture, n, x0, generator=None):
    scheduler.set_timesteps(n)
    x = x0.clone()
    for t in scheduler.timesteps:
        eps = mixture.noise(sde, x, torch.full((x.shape[0],), float(t) / (sde.num_train_timesteps - 1),
                                               dtype=torch.float64))
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    grid = torch.cat([scheduler.timesteps.double(), torch.zeros(1, dtype=torch.float64)]) / (sde.num_train_timesteps - 1)
    return x, grid


def _dpm_problem(n, order, algorithm, solver_type, seed):
    """DPMSolverMultistepScheduler (final σ = σ_min) at ``n`` steps, the VP SDE of its own (float32)
    table so both integrate exactly the same schedule, a Gaussian, and exact draws at its first time."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=order,
                                                      algorithm_type=algorithm, solver_type=solver_type,
                                                      final_sigmas_type="sigma_min")
    sde = S.VPSDE.from_alphas_cumprod(scheduler.alphas_cumprod.double())
    mixture = gaussian()
    scheduler.set_timesteps(n)
    x0 = exact_marginal_draw(mixture, sde, float(scheduler.timesteps[0]) / 999, 16, None, seed=seed)
    return scheduler, sde, mixture, x0


SOLVER_TYPES = {"heun": "exact", "midpoint": "midpoint"}  # diffusers' solver_type -> mrs second_order


@pytest.mark.parametrize("n", [8, 20, 50])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("solver_type", list(SOLVER_TYPES))
@pytest.mark.parametrize("prediction, algorithm", [("data", "dpmsolver++"), ("noise", "dpmsolver")])
def test_reproduces_diffusers_dpm_solver(prediction, algorithm, solver_type, order, n):
    """On the DDPM table, `mrs` equals DPMSolverMultistepScheduler on diffusers' own timesteps (final
    σ = σ_min): ``solver_type`` "heun" is the Taylor form of the MR Sampler (``second_order="exact"``),
    "midpoint" is ``second_order="midpoint"``; order 3 with ``third_order="dpm-solver"``."""
    scheduler, sde, mixture, x0 = _dpm_problem(n, order, algorithm, solver_type, seed=2)
    expected, grid = _diffusers_run(scheduler, sde, mixture, n, x0)
    sol = revsde.sample(exact_model(mixture, sde), x_init=x0, sampler="mrs", order=order, prediction=prediction,
                        grid=grid, second_order=SOLVER_TYPES[solver_type], third_order="dpm-solver")
    assert sol.nfe == n
    torch.testing.assert_close(sol.x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:sampler 'mrs'", "ignore::FutureWarning")
@pytest.mark.parametrize("n", [8, 25])
@pytest.mark.parametrize("solver_type", list(SOLVER_TYPES))
@pytest.mark.parametrize("prediction, algorithm", [("data", "sde-dpmsolver++"), ("noise", "sde-dpmsolver")])
def test_reproduces_diffusers_sde_dpm_solver(prediction, algorithm, solver_type, n):
    """The stochastic `mrs` (order 2) equals diffusers' SDE-DPM-Solver(++) 2M draw for draw when both
    take their noise from the same generator."""
    scheduler, sde, mixture, x0 = _dpm_problem(n, 2, algorithm, solver_type, seed=3)
    expected, grid = _diffusers_run(scheduler, sde, mixture, n, x0.float(), torch.Generator().manual_seed(7))
    sol = revsde.sample(exact_model(mixture, sde), x_init=x0.float(), sampler="mrs", order=2, prediction=prediction,
                        stochastic=True, grid=grid, second_order=SOLVER_TYPES[solver_type],
                        generator=torch.Generator().manual_seed(7))
    assert sol.nfe == n
    torch.testing.assert_close(sol.x, expected, rtol=1e-4, atol=1e-4)


# --- eta: from the ODE to the SDE ---------------------------------------------------------------------
def test_eta_ends_are_the_ode_and_the_sde_bit_for_bit():
    model = exact_model(gaussian(), S.VPSDE())
    run = lambda **o: revsde.sample(model, shape=(64, 2), sampler="mrs", steps=8, seed=2, **o).x
    assert torch.equal(run(eta=1.0), run(stochastic=True))
    assert torch.equal(run(eta=0.0), run())
    assert revsde.samplers.get("mrs", eta=0.3).kind == "sde" and revsde.samplers.get("mrs", eta=0).kind == "ode"


def test_eta_first_order_step_is_k_diffusions_dpmpp_sde_step():
    """On VE (α = 1, λ = −log σ) the first-order step with η is k-diffusion's sample_dpmpp_2m_sde first
    step: x' = (σ'/σ) e^{−ηh} x + (1 − e^{−(1+η)h}) x̂₀ + σ' sqrt(1 − e^{−2ηh}) z, h = log(σ/σ')."""
    from revsde.samplers.mrs_weights import exponential

    sig_s, sig_t, eta = torch.tensor(3.0, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64), 0.4
    h = torch.log(sig_s / sig_t)
    one = torch.ones((), dtype=torch.float64)
    w = exponential("data", 1, [-torch.log(sig_s)], -torch.log(sig_s), -torch.log(sig_t), one, one, sig_s, sig_t,
                    stochastic=True, eta=eta)
    torch.testing.assert_close(w.linear, sig_t / sig_s * torch.exp(-eta * h), rtol=1e-15, atol=0)
    torch.testing.assert_close(w.outputs[0], -torch.expm1(-h - eta * h), rtol=1e-15, atol=0)
    torch.testing.assert_close(w.noise, sig_t * torch.sqrt(-torch.expm1(-2 * eta * h)), rtol=1e-15, atol=0)


@pytest.mark.parametrize("sde_name", ["vp", "mr"])
def test_every_eta_reaches_the_exact_distribution(sde_name):
    """η = 0.5 samples the data distribution of Gaussian data: mean and covariance within 5 standard
    errors at 4000 samples, 60 steps (the marginals do not depend on η)."""
    sde = S.MRSDE() if sde_name == "mr" else S.VPSDE()
    mixture, mu = gaussian(), mu_for(sde)
    n = 4000
    sol = revsde.sample(exact_model(mixture, sde), shape=(n, 2), sampler="mrs", eta=0.5, steps=60, seed=1,
                        mu=None if mu is None else mu.expand(n, -1))
    mean, cov = mixture.marginal_moments(sde, sde.t_min, mu)
    mean_tol, cov_tol = moment_tolerances(cov, n)
    assert ((sol.x.mean(0) - mean).abs() <= mean_tol).all()
    assert ((torch.cov(sol.x.T) - cov).abs() <= cov_tol).all()


def test_eta_options_are_checked():
    for options, message in (({"eta": 1.5}, "eta in \\[0, 1\\]"), ({"eta": 0, "stochastic": True}, "contradict"),
                             ({"eta": 0.5, "prediction": "noise"}, "prediction='data' only")):
        with pytest.raises(ValueError, match=message):
            revsde.samplers.get("mrs", **options)
