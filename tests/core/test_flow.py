"""Rectified flow as a linear SDE: the flow prediction, the time shifts as grids, and every sampler's
first step from t = 1 (α = 0, λ = −∞) and last step to t = 0 (σ = 0, λ = +∞), exact and finite."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import revsde
from revsde import Prediction, ScoreModel, grids
from revsde import sde as S
from revsde.samplers import updates

from fixtures import exact_marginal_draw, gaussian, pf_ode_map, two_modes

F64 = torch.float64


class ToyFlow(torch.nn.Module):
    """A smooth nonlinear velocity field ``v(x, t)`` (not any data's): the solvers' algebra is checked
    on it, so no step can lean on Gaussian structure."""

    def forward(self, x, t):
        t = t.reshape(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(x) * (1 + t) - 0.3 * x.flip(-1) + 0.1 * t**2


def toy_model(time_scale: float = 1.0) -> ScoreModel:
    sde = S.RectifiedFlow(time_scale=time_scale)
    return ScoreModel(ToyFlow(), sde, "flow", time_fn=lambda t: t)


def euler_flow(model, x, ts):
    """The flow's Euler method, ``x ← x + (t_next − t) v(x, t)`` (FlowMatchEulerDiscreteScheduler's step)."""
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        v = model.net(x, torch.full((x.shape[0],), float(t_cur), dtype=x.dtype))
        x = x + (float(t_next) - float(t_cur)) * v
    return x


# --- the path --------------------------------------------------------------------------------------

def test_rectified_flow_is_the_straight_path():
    rf = S.RectifiedFlow()
    t = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(rf.alpha(t), 1 - t, rtol=0, atol=0)
    torch.testing.assert_close(rf.sigma(t), t, rtol=0, atol=0)
    assert float(rf.log_snr(1.0)) == -math.inf and float(rf.log_snr(0.0)) == math.inf
    assert float(rf.t_from_log_snr(-math.inf)) == 1.0 and float(rf.t_from_log_snr(math.inf)) == 0.0
    assert rf.t_max == 1.0 and rf.t_min == 0.0 and rf.prior_std == 1.0
    # the transition into t = 1 forgets the data: a = 0, G² = 1
    a, g2 = rf.transition(0.4, 1.0)
    assert float(a) == 0.0 and float(g2) == 1.0
    assert float(S.RectifiedFlow(time_scale=1000.0).model_time(0.25)) == 250.0


def test_rectified_flow_rejects_bad_arguments():
    with pytest.raises(ValueError, match="t_min must lie in"):
        S.RectifiedFlow(t_min=1.0)
    with pytest.raises(ValueError, match="time_scale must be a positive"):
        S.RectifiedFlow(time_scale=0)


def test_flow_prediction_of_rectified_flow_is_noise_minus_data():
    """``u = ε − x₀``; from it ``x₀ = x − t u`` and ``ε = x + (1 − t) u``, finite at t = 1 and t = 0."""
    rf = S.RectifiedFlow()
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=gen, dtype=F64), torch.randn(5, 3, generator=gen, dtype=F64)
    t = torch.tensor([1.0, 0.75, 0.5, 0.1, 0.0], dtype=F64)
    x = (1 - t)[:, None] * x0 + t[:, None] * eps
    pred = Prediction("flow", eps - x0, x, t, rf)
    torch.testing.assert_close(pred.data, x0, rtol=0, atol=1e-15)
    torch.testing.assert_close(pred.noise, eps, rtol=0, atol=1e-15)
    back = Prediction("data", x0[1:4], x[1:4], t[1:4], rf)  # data → flow, where σ > 0
    torch.testing.assert_close(back.flow, (eps - x0)[1:4], rtol=0, atol=1e-14)


def test_exact_mixture_model_predicts_the_flow_at_the_prior():
    """At t = 1 the exact x̂₀ is the data's mean and ε̂ = x; the exact model predicts the flow there."""
    rf = S.RectifiedFlow()
    mixture = two_modes()
    model = revsde.nets.gmm.exact_model(mixture, rf)
    assert model.prediction == "flow"
    x = torch.randn(4, 2, dtype=F64)
    pred = model(x, 1.0)
    torch.testing.assert_close(pred.data, mixture.mean().expand(4, 2), rtol=0, atol=1e-14)
    torch.testing.assert_close(pred.noise, x, rtol=0, atol=1e-14)


# --- time shifts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 7.5])
def test_static_shift_grid_is_sd3s_shifted_sigma(shift):
    rf = S.RectifiedFlow()
    t = grids.Shifted(shift)(rf, 12)
    base = torch.linspace(1, 0, 13, dtype=F64)
    torch.testing.assert_close(t, grids.static_shift(base, shift), rtol=0, atol=1e-15)
    assert float(t[0]) == 1.0 and float(t[-1]) == 0.0
    # a constant offset of λ
    lam, lam_base = rf.log_snr(t[1:-1]), rf.log_snr(base[1:-1])
    torch.testing.assert_close(lam, lam_base - math.log(shift), rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind,exponent", [("exponential", 1.0), ("linear", 1.0), ("exponential", 0.7)])
def test_dynamic_shift_grid_is_fluxs_time_shift(kind, exponent):
    rf = S.RectifiedFlow()
    mu = grids.flux_mu(4096 // 4)
    t = grids.Shifted(mu=mu, time_shift_type=kind, exponent=exponent)(rf, 9)
    base = torch.linspace(1, 0, 10, dtype=F64)
    expected = base.clone()
    expected[1:-1] = grids.time_shift(base[1:-1], mu, kind, exponent)
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-14)


def test_flux_mu_is_linear_in_the_sequence_length():
    assert grids.flux_mu(256) == pytest.approx(0.5)
    assert grids.flux_mu(4096) == pytest.approx(1.15)
    assert grids.flux_mu(2176) == pytest.approx(0.825)


def test_shifted_grids_refuse_bad_arguments():
    for kwargs, words in [({}, "exactly one"), ({"shift": 2.0, "mu": 1.0}, "exactly one"),
                          ({"shift": -1.0}, "positive"), ({"mu": 1.0, "time_shift_type": "cubic"}, "time_shift_type"),
                          ({"mu": -1.0, "time_shift_type": "linear"}, "mu > 0"), ({"shift": 2.0, "base": "nope"}, "unknown grid")]:
        with pytest.raises(ValueError, match=words):
            grids.Shifted(**kwargs)


def test_sample_takes_a_shifted_grid_and_defaults_to_uniform_t():
    model = toy_model()
    sol = revsde.sample(model, shape=(3, 2), sampler="mrs", order=1, steps=6, grid=grids.Shifted(3.0), dtype=F64)
    torch.testing.assert_close(sol.grid[:, 0], grids.Shifted(3.0)(model.sde, 6), rtol=0, atol=0)
    default = revsde.sample(model, shape=(3, 2), sampler="mrs", steps=6, dtype=F64)  # mrs' own default is logsnr
    torch.testing.assert_close(default.grid[:, 0], torch.linspace(1, 0, 7, dtype=F64), rtol=0, atol=0)
    with pytest.raises(ValueError, match="finite log-SNR"):
        revsde.sample(model, shape=(3, 2), sampler="mrs", steps=6, grid="logsnr")


# --- the first step from t = 1 and the last to t = 0 -------------------------------------------------

@pytest.mark.parametrize("grid", ["uniform_t", grids.Shifted(3.0)], ids=["uniform", "shift3"])
def test_first_order_data_step_is_the_flow_euler_step(grid):
    """``mrs`` order 1 (data) and ``ode_euler`` are FlowMatchEuler's update at every step, the first
    (from α = 0) and the last (to σ = 0) included."""
    model = toy_model()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    ts = grids.resolve(grid, model.sde, 7, 4)[:, 0]
    expected = euler_flow(model, x, ts)
    for name, options in [("mrs", {"order": 1}), ("ode_euler", {})]:
        got = revsde.sample(model, x_init=x, sampler=name, steps=7, grid=grid, **options).x
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)
    # the noise form's first-order step is the same update (taken in the data form from the prior)
    noise_form = revsde.sample(model, x_init=x, sampler="mrs", order=1, prediction="noise", steps=7, grid=grid).x
    torch.testing.assert_close(noise_form, expected, rtol=0, atol=1e-13)


def test_the_first_stochastic_step_is_the_exact_posterior_draw():
    """From the prior the reverse SDE's exact step is x_next ~ N(α_next x̂₀, σ_next²); ancestral, the
    mrs SDE (data) and the Euler-type steps (which do not exist at t = 1) all take it."""
    model = toy_model()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    grid = torch.tensor([1.0, 0.6], dtype=F64)
    v = model.net(x, torch.ones(6, dtype=F64))
    x0_hat = x - v
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=F64)

    class Fixed:
        def __call__(self, t_cur, t_next):
            return z

        def fresh(self):
            return z

    expected = 0.4 * x0_hat + 0.6 * z
    for name, options in [("ancestral", {"denoise": False}), ("posterior", {"denoise": False}),
                          ("euler_maruyama", {"denoise": False}), ("mrs", {"stochastic": True, "order": 1}),
                          ("reverse_diffusion", {"discretization": "euler", "denoise": False})]:
        got = revsde.sample(model, x_init=x, sampler=name, grid=grid, noise=Fixed(), **options).x
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-14, msg=name)


def fixed_step_variants():
    out = []
    for name in revsde.samplers.available():
        if name == "dmcmc":
            continue  # needs a classifier (tests/core/test_dmcmc.py)
        out.append(pytest.param(name, {}, id=name))
    out += [pytest.param("mrs", {"order": 3}, id="mrs-3"), pytest.param("mrs", {"prediction": "noise", "order": 2},
                                                                          id="mrs-noise"),
            pytest.param("mrs", {"prediction": "velocity"}, id="mrs-velocity"),
            pytest.param("mrs", {"stochastic": True}, id="mrs-sde"),
            pytest.param("mrs", {"second_order": "midpoint"}, id="mrs-midpoint"),
            pytest.param("pc", {"corrector": "ald"}, id="pc-ald"),
            pytest.param("torchsde", {"method": "srk"}, id="torchsde-srk")]
    return out


@pytest.mark.parametrize("name,options", fixed_step_variants())
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_every_sampler_is_finite_from_t_1_to_t_0(name, options, steps):
    model = revsde.nets.gmm.exact_model(two_modes(), S.RectifiedFlow())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SDE samplers at 1-2 steps: their own low-NFE warnings
        sol = revsde.sample(model, shape=(16, 2), sampler=name, steps=steps, dtype=F64, seed=3, **options)
    assert bool(torch.isfinite(sol.x).all())
    assert float(sol.grid[0, 0]) == 1.0 and float(sol.grid[-1, 0]) == 0.0


def test_one_data_step_from_the_prior_to_the_data_is_the_mean():
    """One first-order step from t = 1 to t = 0 returns x̂₀(x, 1): the data's mean, for every sample."""
    mixture = two_modes()
    model = revsde.nets.gmm.exact_model(mixture, S.RectifiedFlow())
    sol = revsde.sample(model, shape=(5, 2), sampler="mrs", steps=1, dtype=F64)
    torch.testing.assert_close(sol.x, mixture.mean().expand(5, 2), rtol=0, atol=1e-14)


def test_configurations_that_cannot_start_at_alpha_zero_are_refused():
    model = toy_model()
    with pytest.raises(ValueError, match="stochastic=True and prediction='noise' cannot start where α = 0"), \
            pytest.warns(UserWarning, match="diverges at low NFE"):
        revsde.sample(model, shape=(2, 3), sampler="mrs", stochastic=True, prediction="noise", steps=4)
    with pytest.raises(ValueError, match="warmup='midpoint' needs a finite log-SNR"):
        revsde.sample(model, shape=(2, 3), sampler="mrs", order=2, warmup="midpoint", steps=4)


def test_singular_start_is_detected_on_the_host():
    assert updates.singular_at_start(S.RectifiedFlow())
    assert not updates.singular_at_start(S.VPSDE())
    assert not updates.singular_at_start(S.MRSDE())


@pytest.mark.parametrize("name,options", [("mrs", {}), ("mrs", {"order": 3}), ("ode_heun", {}), ("ode_rk4", {})])
def test_high_order_solvers_reach_the_exact_flow_map(name, options):
    """Against the closed-form PF-ODE map of Gaussian data from t = 1 to t = 0."""
    rf = S.RectifiedFlow()
    mixture = gaussian()
    x = exact_marginal_draw(mixture, rf, 1.0, 32, None, seed=4)
    exact = pf_ode_map(mixture, rf, x, 1.0, 0.0)
    sol = revsde.sample(revsde.nets.gmm.exact_model(mixture, rf), x_init=x, sampler=name, steps=64, **options)
    assert float((sol.x - exact).abs().max()) < 5e-3


def test_diagonal_mixture_fast_path_matches_the_eigenbasis():
    """Diagonal covariances take the O(K D) path; it equals the eigenbasis computation."""
    import copy

    gen = torch.Generator().manual_seed(6)
    means = torch.randn(3, 5, generator=gen, dtype=F64)
    covs = torch.diag_embed(0.1 + torch.rand(3, 5, generator=gen, dtype=F64))
    fast = revsde.nets.gmm.GaussianMixture([0.2, 0.5, 0.3], means, covs)
    slow = copy.copy(fast)
    slow.variances = None
    assert fast.variances is not None
    x = torch.randn(7, 5, generator=gen, dtype=F64)
    for sde, t in [(S.VPSDE(), 0.4), (S.RectifiedFlow(), 1.0), (S.RectifiedFlow(), 0.3)]:
        for a, b in zip(fast.denoise(sde, x, t), slow.denoise(sde, x, t)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_reverse_sde_drift_without_the_score_equals_the_generic_one_and_is_finite_at_t_0():
    rf = S.RectifiedFlow()
    model = toy_model()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    t = torch.tensor([0.9, 0.5, 0.3, 0.1, 0.01], dtype=F64)
    pred = model(x, t)
    generic = revsde.sde.LinearSDE.reverse_sde_drift(rf, x, t, pred)
    torch.testing.assert_close(rf.reverse_sde_drift(x, t, pred), generic, rtol=1e-12, atol=1e-12)
    at_zero = model(x, 0.0)
    assert not bool(torch.isfinite(at_zero.score).all())  # −ε̂/σ at σ = 0
    assert bool(torch.isfinite(rf.reverse_sde_drift(x, torch.zeros(5, dtype=F64), at_zero)).all())
