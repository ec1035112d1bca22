"""The driver: validation before any work, the NaN guard, dtypes, and agreement of the PC / SGMSE
samplers with their reference formulas written out by hand."""
from __future__ import annotations

import math

import pytest
import torch

import revsde
from revsde import sde as S

from fixtures import exact_model, gaussian


@pytest.fixture
def vp_model():
    return exact_model(gaussian(), S.VPSDE())


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "nope"}, "available samplers: euler_maruyama"),
    ({"sampler": "pc", "order": 2}, "has no option 'order'; its options are: predictor"),
    ({"sampler": "pc", "corrector": "bad"}, "corrector in {'langevin', 'ald', None}"),
    ({"sampler": "pc", "snr": -1}, "snr to be a number > 0"),
    ({"sampler": "torchsde", "method": "rk4"}, "method in {'euler'"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"grid": "linear"}, "valid grids: uniform_t, logsnr, karras, quadratic"),
    ({"grid": torch.tensor([2.0, 0.5, 0.001])}, "grid times must lie in [t_min, t_max] = [0.001, 1.0]"),
    ({"grid": torch.tensor([0.5, 0.9, 0.001])}, "strictly decreasing"),
    ({"mu": torch.zeros(3, 2)}, "mu has shape (3, 2), which does not broadcast to the state's shape (4, 2)"),
    ({"noise": "pink"}, "noise must be one of gaussian, brownian"),
    ({"generator": [torch.Generator()]}, "give one per sample"),
])
def test_bad_input_is_refused_before_any_work(vp_model, kwargs, message):
    calls = []
    net = vp_model.net
    model = revsde.ScoreModel(lambda x, t, **c: calls.append(1) or net(x, t, **c), vp_model.sde, "noise",
                              time_fn=lambda t: t)
    kwargs = {"sampler": "euler_maruyama", "steps": None if torch.is_tensor(kwargs.get("grid")) else 10, **kwargs}
    with pytest.raises(ValueError) as err:
        revsde.sample(model, shape=(4, 2), **kwargs)
    assert message in str(err.value)
    assert calls == []


def test_shape_or_x_init(vp_model):
    with pytest.raises(ValueError, match="exactly one of shape= .* or x_init="):
        revsde.sample(vp_model, steps=3)
    with pytest.raises(ValueError, match="exactly one of"):
        revsde.sample(vp_model, shape=(2, 2), x_init=torch.zeros(2, 2), steps=3)


def test_model_must_be_a_score_model():
    with pytest.raises(ValueError, match="wrap your network as ScoreModel"):
        revsde.sample(lambda x, t: x, shape=(2, 2), steps=3)


def test_nan_guard_names_sampler_step_and_time():
    sde = S.VPSDE()

    def net(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), torch.zeros_like(x))

    model = revsde.ScoreModel(net, sde, "noise", time_fn=lambda t: t)
    with pytest.raises(revsde.NonFiniteStateError) as err:
        revsde.sample(model, shape=(2, 2), sampler="ode_euler", steps=10, grid="uniform_t")
    text = str(err.value)
    # the first evaluation below t = 0.5 is at t = 0.4006 (step 6), which ends at t = 0.3007
    assert "sampler 'ode_euler'" in text and "at step 6" in text and "t = 0.3007," in text


@pytest.mark.parametrize("given, expected", [
    (None, torch.float32), (torch.float64, torch.float64), (torch.float16, torch.float32),
    (torch.complex128, torch.complex128),
])
def test_state_dtype(given, expected):
    sde = S.VESDE()
    model = revsde.ScoreModel(lambda x, t: torch.zeros_like(x), sde, "score", time_fn=lambda t: t)
    x = None if given is None else torch.zeros(2, 3, dtype=given)
    kwargs = {"shape": (2, 3)} if x is None else {"x_init": x}
    assert revsde.sample(model, sampler="ode_euler", steps=2, **kwargs).x.dtype == expected


def test_seed_none_is_random(vp_model):
    a = revsde.sample(vp_model, shape=(2, 2), steps=2, seed=None).x
    b = revsde.sample(vp_model, shape=(2, 2), steps=2, seed=None).x
    assert not torch.equal(a, b)


def test_progress_bar_runs(vp_model, capsys):
    revsde.sample(vp_model, shape=(2, 2), steps=3, progress=True)
    revsde.sample(vp_model, shape=(2, 2), sampler="ode_rk45", progress=True)


def _sgmse_reference(score_fn, y, x, timesteps, eps, theta, sde, snr, noises):
    """SGMSE's get_pc_sampler with reverse_diffusion + ald, written from sgmse.md §5.2."""
    n = len(timesteps)
    for i in range(n):
        t = timesteps[i]
        dt = t - timesteps[i + 1] if i < n - 1 else eps
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        # corrector (annealed Langevin): ε = 2 (r σ(t))²
        step = 2 * (snr * float(sde.sigma(t))) ** 2
        x = x + step * score_fn(x, tt) + math.sqrt(2 * step) * noises.pop(0)
        # predictor (reverse diffusion, Euler discretisation of OUVE)
        g = math.sqrt(float(sde.g2(t)))
        x_mean = x - theta * (y - x) * dt + g**2 * dt * score_fn(x, tt)
        if i < n - 1:  # SGMSE draws the last noise too, but returns the mean (denoise=True)
            x = x_mean + g * math.sqrt(dt) * noises.pop(0)
    return x_mean


def test_sgmse_matches_its_reference_loop():
    """On OUVE with t_min = 0 and SGMSE's grid [linspace(1, t_eps, N), 0], the `sgmse` sampler is the
    SGMSE loop: same states, complex noise included."""
    sde = S.OUVESDE(t_min=0.0)
    n_steps, eps = 6, 0.03
    y = torch.randn(3, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    x0 = y + 0.4 * torch.randn(3, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))

    def score(x, t):
        return -(x - 0.7 * y) / (0.2 + sde.sigma(t)[:, None] ** 2)

    model = revsde.ScoreModel(lambda x, t, mu: score(x, t), sde, "score", time_fn=lambda t: t)
    grid = torch.cat([torch.linspace(1, eps, n_steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])

    class Recorded:
        def __init__(self):
            self.draws, self.gen = [], torch.Generator().manual_seed(5)

        def __call__(self, t0=None, t1=None):
            z = torch.randn(3, 4, dtype=torch.complex128, generator=self.gen)
            self.draws.append(z)
            return z

        fresh = __call__

    noise = Recorded()
    sol = revsde.sample(model, x_init=x0, sampler="sgmse", grid=grid, mu=y, noise=noise)
    assert sol.nfe == 2 * n_steps
    reference = _sgmse_reference(score, y, x0, grid[:-1], eps, sde.theta, sde, 0.5, list(noise.draws))
    torch.testing.assert_close(sol.x, reference, rtol=1e-12, atol=1e-12)


def test_sgmse_complex_gaussian_reaches_exact_distribution():
    """Circular complex Gaussian data (E|x − m|² = s² per element) under OUVE with the SGMSE sampler."""
    sde = S.OUVESDE()
    n, d = 20000, 2
    m = torch.tensor([0.5 + 0.2j, -0.3 + 0.1j], dtype=torch.complex128)
    s2 = torch.tensor([0.6, 0.3], dtype=torch.float64)
    mu = torch.tensor([1.0 - 0.5j, 0.2 + 0.4j], dtype=torch.complex128)

    def moments(t):
        a, sig = float(sde.alpha(t)), float(sde.sigma(t))
        return a * m + (1 - a) * mu, a**2 * s2 + sig**2

    def noise_net(x, t, mu):
        a, sig = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        mean, var = a * m + (1 - a) * mu, a**2 * s2 + sig**2
        return sig * (x - mean) / var  # ε = −σ ∇ (complex convention: score −(x − mean)/var)

    gen = torch.Generator().manual_seed(0)
    mean_T, var_T = moments(sde.t_max)
    x_init = mean_T + var_T.sqrt() * torch.randn(n, d, dtype=torch.complex128, generator=gen)
    model = revsde.ScoreModel(noise_net, sde, "noise", time_fn=lambda t: t)
    sol = revsde.sample(model, x_init=x_init, sampler="sgmse", steps=400, mu=mu.expand(n, d),
                        generator=torch.Generator().manual_seed(1))
    mean, var = moments(sde.t_min)
    centred = sol.x - mean
    assert (centred.mean(0).abs() < 5 * (var / n).sqrt()).all()
    assert ((centred.abs() ** 2).mean(0) / var - 1).abs().max() < 5 * math.sqrt(1 / n) + 0.01
    # circular: real and imaginary parts share the variance, no pseudo-covariance
    assert ((centred.real**2).mean(0) / (centred.imag**2).mean(0) - 1).abs().max() < 0.06
    assert ((centred**2).mean(0).abs() / var).max() < 0.03
