"""Every fixed-step sampler plans its coefficients once per grid (issue 24): the planned runs equal the
per-step computation they replace, and the network's time input comes from the grid's cache.

The references below are the per-step updates as the samplers computed them before the plans (each
coefficient from the SDE at the step's two times, every step: the library's one-step ``euler_maruyama`` and
``posterior``, and the test's own copies of the others), driven on the same network, grid and normals. In float64 the planned runs agree with them to 1e-14 of the state's scale on every SDE of
``fixtures.ALL_SDES`` (the plans evaluate the same formulas vectorised over the grid and fold them into
fewer tensor operations, so the last bits may differ).
"""
from __future__ import annotations

import pytest
import torch

import revsde
from fixtures import mu_for
from revsde import sde as S
from revsde.model import Prediction
from revsde.samplers import updates
from revsde.sde.cached import GridCoefficients
from revsde.tensors import bcast

STEPS = 12
BATCH = 3
TOL = 1e-14


class Replay:
    """Pre-drawn normals handed out in order (``noise(t0, t1)`` and ``fresh()`` alike)."""

    def __init__(self, shape, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)
        self.shape, self.draws, self.used = shape, [], 0

    def __call__(self, t0=None, t1=None):
        if self.used == len(self.draws):
            self.draws.append(torch.randn(self.shape, generator=self.gen, dtype=torch.float64))
        self.used += 1
        return self.draws[self.used - 1]

    fresh = __call__

    def rewind(self):
        self.used = 0
        return self


def net(x, t, mu=None):
    """A smooth network whose output depends on the state, the time it is given and μ."""
    scale = bcast(1 + 1e-3 * torch.as_tensor(t, dtype=x.dtype), x)
    out = 0.4 * torch.tanh(x) * scale + 0.05
    return out if mu is None else out + 0.1 * mu


# --- the per-step updates as they were -----------------------------------------------------------------------
def _to_y(x, mu):
    return x if mu is None else x - mu


def ref_reverse_diffusion(sde, x, t_cur, t_next, pred, mu):
    """The exact discretisation's step as the sampler took it: ``x − (a − 1)(x − μ) + G² s``, noise ``G``."""
    a, G2 = sde.transition(t_next, t_cur)
    f_i = bcast(a - 1, x) * _to_y(x, mu)
    return x - f_i + bcast(G2, x) * pred.score, bcast(torch.sqrt(G2), x)


# The Euler-type steps at given times (the posterior step where f is infinite) and the posterior step are the
# library's one-step forms, which the planned runs no longer call.
PREDICTORS = {
    "euler_maruyama": updates.euler_maruyama,
    "reverse_diffusion": ref_reverse_diffusion,
    "reverse_diffusion_euler": updates.euler_maruyama,  # x − f (x − μ) Δ + g² s Δ, noise g sqrt(Δ): the same step
    "ancestral": updates.posterior,
    "ancestral_forward": lambda *a: updates.posterior(*a, variance="forward"),
    "posterior": updates.posterior,
}


def ref_corrector_step(sde, x, t_cur, t_next, score, z, *, corrector, snr, anneal, norms="sample"):
    a = torch.exp(2 * (sde.log_alpha(t_cur) - sde.log_alpha(t_next))) if anneal else 1.0
    if corrector == "ald":
        step = 2 * a * (snr * sde.sigma(t_cur)) ** 2
    else:
        norm = lambda v: torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)
        noise_norm, grad_norm = norm(z).to(t_cur.dtype), norm(score).to(t_cur.dtype)
        if norms == "batch":
            noise_norm, grad_norm = noise_norm.mean().expand_as(t_cur), grad_norm.mean().expand_as(t_cur)
        step = (snr * noise_norm / grad_norm) ** 2 * 2 * a
    return x + bcast(step, x) * score + bcast(torch.sqrt(2 * step), x) * z


def reference_run(name, options, model, sde, grid, x, mu, noise):
    """The sampler's run with the per-step updates, on the same cached coefficients ``revsde.sample`` uses."""
    view = GridCoefficients(sde, grid)

    def evaluate(x, t):
        return Prediction(model.prediction, model.output(x, t, mu), x, t, view, mu)

    drift = lambda x, t, pred: view.pf_ode_drift(x, t, pred, mu)
    n = grid.shape[0] - 1
    for i in range(n):
        t_cur, t_next = grid[i], grid[i + 1]
        h = bcast(t_next - t_cur, x)
        if name == "ode_euler":
            x = x + h * drift(x, t_cur, evaluate(x, t_cur))
        elif name == "ode_heun":
            d_cur = drift(x, t_cur, evaluate(x, t_cur))
            x_euler = x + h * d_cur
            x = x + h * 0.5 * (d_cur + drift(x_euler, t_next, evaluate(x_euler, t_next)))
        elif name == "ode_rk4":
            t_mid = 0.5 * (t_cur + t_next)
            k1 = drift(x, t_cur, evaluate(x, t_cur))
            x2 = x + 0.5 * h * k1
            k2 = drift(x2, t_mid, evaluate(x2, t_mid))
            x3 = x + 0.5 * h * k2
            k3 = drift(x3, t_mid, evaluate(x3, t_mid))
            x4 = x + h * k3
            k4 = drift(x4, t_next, evaluate(x4, t_next))
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        else:
            predictor = name
            if name in ("pc", "sgmse"):
                corrector = {"corrector": "ald", "snr": 0.5, "anneal": False} if name == "sgmse" else {
                    "corrector": options.get("corrector", "langevin"), "snr": 0.16, "anneal": True,
                    "norms": options.get("langevin_norms", "sample")}
                for _ in range(1):
                    score = evaluate(x, t_cur).score
                    x = ref_corrector_step(view, x, t_cur, t_next, score, noise.fresh(), **corrector)
                predictor = "reverse_diffusion_euler" if name == "sgmse" else options.get("predictor", "reverse_diffusion")
            elif name == "reverse_diffusion" and options.get("discretization") == "euler":
                predictor = "reverse_diffusion_euler"
            elif name == "ancestral" and options.get("variance") == "forward":
                predictor = "ancestral_forward"
            mean, std = PREDICTORS[predictor](view, x, t_cur, t_next, evaluate(x, t_cur), mu)
            x = mean if i == n - 1 else mean + std * noise(t_cur, t_next)
    return x


CASES = [
    ("euler_maruyama", {}),
    ("reverse_diffusion", {}),
    ("reverse_diffusion", {"discretization": "euler"}),
    ("ancestral", {}),
    ("ancestral", {"variance": "forward"}),
    ("posterior", {}),
    ("pc", {}),
    ("pc", {"corrector": "ald"}),
    ("pc", {"langevin_norms": "batch"}),
    ("pc", {"predictor": "euler_maruyama"}),
    ("pc", {"predictor": "ancestral"}),
    ("sgmse", {}),
    ("ode_euler", {}),
    ("ode_heun", {}),
    ("ode_rk4", {}),
]
CASE_IDS = [name + "".join(f"-{v}" for v in options.values()) for name, options in CASES]


def _start(sde, mu, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = sde.prior_std * torch.randn(BATCH, 2, 4, generator=gen, dtype=torch.float64)
    return x if mu is None else x + mu


def _grid(sde, name):
    smp = revsde.samplers.get(name)
    grid_name = sde.default_grid or smp.default_grid
    return revsde.grids.resolve(grid_name, sde, STEPS, BATCH)


def _mu(sde):
    mu = mu_for(sde)
    return None if mu is None else mu[None, :, None].expand(BATCH, 2, 4)


def assert_close(got, want):
    scale = max(1.0, float(want.abs().max()))
    err = float((got - want).abs().max())
    assert err <= TOL * scale, f"planned run differs from the per-step one by {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name, options", CASES, ids=CASE_IDS)
def test_planned_run_equals_the_per_step_updates(sde, name, options):
    mu = _mu(sde)
    # a flow network on rectified flow: its x̂₀ is finite at t = 1, where α = 0
    model = revsde.ScoreModel(net, sde, prediction="flow" if isinstance(sde, S.RectifiedFlow) else "noise")
    grid, x = _grid(sde, name), _start(sde, mu)
    noise = Replay(x.shape)
    got = revsde.sample(model, x_init=x, sampler=name, grid=grid, mu=mu, noise=noise, graphs=False, **options).x
    want = reference_run(name, options, model, sde, grid, x, mu, noise.rewind())
    assert torch.isfinite(want).all()
    assert_close(got, want)


@pytest.mark.parametrize("name, options", [c for c in CASES if c[0] in ("euler_maruyama", "pc", "ode_heun")],
                         ids=[i for i, c in zip(CASE_IDS, CASES) if c[0] in ("euler_maruyama", "pc", "ode_heun")])
def test_planned_run_equals_the_per_step_updates_on_per_sample_grids(name, options):
    """Each sample on its own grid; on rectified flow one sample starts at t = 1, where the Euler step does
    not exist and the posterior step stands in, and the others below it."""
    sde = S.RectifiedFlow()
    model = revsde.ScoreModel(net, sde, prediction="flow")
    starts = torch.tensor([1.0, 0.9, 0.7], dtype=torch.float64)
    grid = starts[None] * torch.linspace(1, 0, STEPS + 1, dtype=torch.float64)[:, None]
    x = _start(sde, None)
    noise = Replay(x.shape)
    got = revsde.sample(model, x_init=x, sampler=name, grid=grid, noise=noise, graphs=False, **options).x
    want = reference_run(name, options, model, sde, grid, x, None, noise.rewind())
    assert_close(got, want)


def test_the_reference_tells_a_wrong_coefficient():
    """The comparison above can fail: a reference with one coefficient off by 1e-12 is caught."""
    sde = S.VPSDE()
    model = revsde.ScoreModel(net, sde)
    grid, x = _grid(sde, "euler_maruyama"), _start(sde, None)
    noise = Replay(x.shape)
    got = revsde.sample(model, x_init=x, sampler="euler_maruyama", grid=grid, noise=noise, graphs=False).x
    original = PREDICTORS["euler_maruyama"]
    PREDICTORS["euler_maruyama"] = lambda *a: (lambda m, s: (m * (1 + 1e-12), s))(*original(*a))
    try:
        want = reference_run("euler_maruyama", {}, model, sde, grid, x, None, noise.rewind())
    finally:
        PREDICTORS["euler_maruyama"] = original
    with pytest.raises(AssertionError, match="differs"):
        assert_close(got, want)


class CountingVP(S.DiscreteVPSDE):
    """A DDPM table that counts how often its network time is computed (and on how many values)."""

    def __init__(self):
        super().__init__(S.vp.ddpm_alphas_cumprod().double())
        self.calls = []

    def model_time(self, t):
        self.calls.append(tuple(t.shape))
        return super().model_time(t)


@pytest.mark.parametrize("name", ["euler_maruyama", "ancestral", "pc", "ode_heun", "mrs"])
def test_model_time_comes_from_the_grid_cache(name):
    """One computation on the whole grid per run, whatever the NFE; the values the network sees are the
    DDPM indices of each query's times."""
    sde = CountingVP()
    seen = []
    model = revsde.ScoreModel(lambda x, t: (seen.append(t), 0.1 * x)[1], sde)
    sol = revsde.sample(model, (2, 3), sampler=name, steps=STEPS, graphs=False)
    assert sol.nfe >= STEPS
    assert sde.calls == [(STEPS + 1, 2)], sde.calls
    grid = sol.grid
    queried = revsde.samplers.get(name).query_times(grid)
    torch.testing.assert_close(torch.stack(seen), (queried * 999).float(), rtol=0, atol=1e-4)


def test_model_time_off_the_grid_is_computed():
    """A time that is no row of a live grid (a copy of one, or any time after the run) is computed as before."""
    sde = CountingVP()
    grid = torch.linspace(1, 0, 5, dtype=torch.float64)[:, None].expand(-1, 2).contiguous()
    view = GridCoefficients(sde, grid)
    assert torch.equal(sde.model_time(grid[2]), grid[2] * 999)
    assert sde.calls == [(5, 2)]
    sde.model_time(grid[2].clone())
    assert sde.calls == [(5, 2), (2,)]
    del view
    sde.model_time(grid[2])
    assert sde.calls == [(5, 2), (2,), (2,)]
