"""Prediction conversions (noise / data / score / velocity / flow) are exact, and ScoreModel calls the network
as DESIGN §3 promises (time value, μ in cond, dtype cast)."""
from __future__ import annotations

import pytest
import torch

from revsde import Prediction, ScoreModel
from revsde import sde as S
from revsde.model import PREDICTIONS

from fixtures import ddpm_linear_alphas_cumprod, interior_times, is_mean_reverting

F64 = torch.float64
KINDS = ["noise", "data", "score", "velocity", "flow"]


def scenario(sde, batch: int = 8, seed: int = 0):
    """Random x0, ε, μ and interior times; x = α x0 + (1 − α) μ + σ ε and the four exact targets."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 2, 3, generator=gen, dtype=F64)
    eps = torch.randn(batch, 2, 3, generator=gen, dtype=F64)
    mu = torch.randn(batch, 2, 3, generator=gen, dtype=F64) if is_mean_reverting(sde) else None
    inner = interior_times(sde)
    t = inner[torch.randint(len(inner), (batch,), generator=gen)]
    a, s = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
    y0 = x0 if mu is None else x0 - mu
    x = a * x0 + (1 - a) * (0 if mu is None else mu) + s * eps
    c = sde.velocity_scale
    r = torch.sqrt(a**2 + s**2 / c**2)
    a_dot, s_dot = sde.alpha_dot(t)[:, None, None], sde.sigma_dot(t)[:, None, None]
    targets = {"noise": eps, "data": x0, "score": -eps / s, "velocity": (a * c * eps - s * y0 / c) / r,
               "flow": a_dot * y0 + s_dot * eps}
    return x, t, mu, targets, a, s


def assert_close_scaled(actual, expected, rel=1e-10):
    """Relative to the tensor's scale (a near-zero entry of a unit-scale tensor is judged in absolute terms)."""
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * float(expected.abs().max()))


@pytest.mark.parametrize("kind", KINDS)
def test_prediction_converts_exactly(sde, kind):
    x, t, mu, targets, _, _ = scenario(sde)
    pred = Prediction(kind, targets[kind], x, t, sde, mu)
    for other in KINDS:
        assert_close_scaled(getattr(pred, other), targets[other])
        assert_close_scaled(pred[other], targets[other])


def test_vp_velocity_is_salimans_ho():
    sde = S.VPSDE()
    x, t, mu, targets, a, s = scenario(sde)
    pred = Prediction("noise", targets["noise"], x, t, sde)
    assert_close_scaled(pred.velocity, a * targets["noise"] - s * targets["data"], rel=1e-12)


@pytest.mark.parametrize("build", [S.MRSDE, lambda: S.MRSDE(10 / 255, "linear", convention="irsde")])
def test_mr_velocity_matches_mr_sampler(build):
    """MR Sampler §6: v = α λ ε − (σ/λ)(x0 − μ); x̂0 = α x + (1−α) μ − (σ/λ) v; ε = (α v + (σ/λ)(x − μ))/λ."""
    sde = build()
    lam = sde.stationary_std
    assert sde.velocity_scale == lam
    x, t, mu, targets, a, s = scenario(sde)
    eps, x0 = targets["noise"], targets["data"]
    v = a * lam * eps - (s / lam) * (x0 - mu)
    assert_close_scaled(Prediction("noise", eps, x, t, sde, mu).velocity, v, rel=1e-12)
    from_v = Prediction("velocity", v, x, t, sde, mu)
    assert_close_scaled(from_v.data, a * x + (1 - a) * mu - (s / lam) * v, rel=1e-12)
    assert_close_scaled(from_v.noise, (a * v + (s / lam) * (x - mu)) / lam, rel=1e-12)
    assert_close_scaled(from_v.data, x0)
    assert_close_scaled(from_v.noise, eps)


def test_prediction_rejects_unknown_kind():
    sde = S.VPSDE()
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="noise, data, score, velocity.*'eps'"):
        Prediction("eps", x, x, torch.full((2,), 0.5, dtype=F64), sde)


# --- ScoreModel ---------------------------------------------------------------------------------

class Recorder:
    """A network that returns a fixed output and remembers what it was called with."""

    def __init__(self, output):
        self.output, self.calls = output, []

    def __call__(self, x, time, **cond):
        self.calls.append((x, time, cond))
        return self.output


def test_score_model_passes_model_time_and_mu():
    sde = S.MRSDE()
    x = torch.randn(3, 2, dtype=F64)
    mu = torch.randn(3, 2, dtype=F64)
    out = torch.randn(3, 2, dtype=F64)
    net = Recorder(out)
    t = torch.tensor([0.1, 0.25, 0.9], dtype=F64)
    pred = ScoreModel(net, sde, prediction="noise")(x, t, mu=mu, label=7)
    (x_in, time_in, cond), = net.calls
    assert x_in is x
    torch.testing.assert_close(time_in, torch.tensor([10.0, 25.0, 90.0], dtype=F64), rtol=0, atol=1e-12)
    assert cond["label"] == 7 and cond["mu"] is mu
    assert pred.kind == "noise" and torch.equal(pred.noise, out) and pred.mu is mu
    # the data it implies uses μ: x0 = μ + (x − μ − σ ε)/α
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    assert_close_scaled(pred.data, mu + (x - mu - s * out) / a, rel=1e-13)


def test_score_model_without_mu_passes_no_mu():
    net = Recorder(torch.zeros(2, 4, dtype=F64))
    ScoreModel(net, S.VPSDE())(torch.zeros(2, 4, dtype=F64), 0.5)
    assert "mu" not in net.calls[0][2]


def test_score_model_gives_ddpm_indices_to_discrete_vp():
    sde = S.VPSDE.from_alphas_cumprod(ddpm_linear_alphas_cumprod())
    net = Recorder(torch.zeros(4, 3, dtype=F64))
    idx = torch.tensor([0, 1, 500, 999], dtype=F64)
    ScoreModel(net, sde)(torch.zeros(4, 3, dtype=F64), idx / 999)
    torch.testing.assert_close(net.calls[0][1], idx, rtol=0, atol=1e-9)


def test_score_model_gives_sigma_to_ve():
    sde = S.VESDE(0.01, 50.0)
    net = Recorder(torch.zeros(2, 3, dtype=F64))
    ScoreModel(net, sde)(torch.zeros(2, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    torch.testing.assert_close(net.calls[0][1], torch.tensor([0.01, 50.0], dtype=F64), rtol=1e-13, atol=0)


def test_score_model_expands_a_float_time_and_honours_time_fn():
    sde = S.VPSDE.from_alphas_cumprod(ddpm_linear_alphas_cumprod())
    net = Recorder(torch.zeros(5, 3, dtype=F64))
    ScoreModel(net, sde, time_fn=lambda t: t)(torch.zeros(5, 3, dtype=F64), 0.3)
    time_in = net.calls[0][1]
    assert time_in.shape == (5,)
    assert bool((time_in == 0.3).all())


def test_score_model_rejects_unknown_prediction():
    with pytest.raises(ValueError) as info:
        ScoreModel(Recorder(None), S.VPSDE(), prediction="epsilon")
    for word in ("epsilon", *PREDICTIONS):
        assert word in str(info.value)


@pytest.mark.parametrize("net_dtype", [torch.bfloat16, torch.float16])
def test_score_model_casts_network_inputs_and_returns_state_dtype(net_dtype):
    """A half-precision net sees half-precision x, time and μ; the Prediction is in the state's dtype."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 2).to(net_dtype)
    seen = {}

    def net(x, time, mu):
        seen.update(x=x.dtype, time=time.dtype, mu=mu.dtype)
        return lin(torch.cat([x, mu, time[:, None]], 1))

    sde = S.OUVESDE()
    x = torch.randn(4, 2, dtype=F64)
    mu = torch.randn(4, 2, dtype=F64)
    model = ScoreModel(net, sde, prediction="data", dtype=net_dtype)
    pred = model(x, 0.5, mu=mu)
    assert seen == {"x": net_dtype, "time": net_dtype, "mu": net_dtype}
    assert pred.data.dtype == F64 and pred.noise.dtype == F64
    with torch.no_grad():
        expected = lin(torch.cat([x, mu, torch.full((4, 1), 0.5, dtype=F64)], 1).to(net_dtype)).to(F64)
    torch.testing.assert_close(pred.data, expected, rtol=0, atol=0)
