"""``unipc`` (Zhao et al. 2023): its weights against closed forms, the order conditions, no extra NFE for
the corrector, and the configurations refused. Exactness, convergence order and batch invariance run
in the registry-driven tests (test_samplers.py, test_flow.py); parity with diffusers in
tests/integrations/test_diffusers_unipc.py."""
from __future__ import annotations

import pytest
import torch

import revsde
from fixtures import ALL_SDES, exact_marginal_draw, exact_model, gaussian, mu_for, pf_ode_map, two_modes
from revsde import grids
from revsde import sde as S
from revsde.samplers.unipc import order_condition_rhs, solve_rhos, unipc_weights

G = torch.Generator().manual_seed(0)
LAM = sorted(torch.randn(4, generator=G, dtype=torch.float64).tolist())  # increasing λ: older nodes first


def nodes(k: int) -> list[torch.Tensor]:
    """The newest k of the 3 history nodes (newest first); the step goes from LAM[2] to LAM[3]."""
    return [torch.tensor(v, dtype=torch.float64) for v in LAM[:3][::-1][:k]]


@pytest.mark.parametrize("prediction", ["data", "noise"])
def test_first_order_unip_is_ddim(prediction):
    """UniP-1 is DDIM in either form: data y_t = (σ_t/σ_s) y_s + α_t (1 − e^{−h}) x̂₀, noise
    y_t = (α_t/α_s) y_s − σ_t (e^{h} − 1) ε̂."""
    a_s, a_t, s_s, s_t = (torch.tensor(v, dtype=torch.float64) for v in (0.6, 0.8, 0.8, 0.6))
    lam_s, lam_t = torch.log(a_s / s_s), torch.log(a_t / s_t)
    linear, (w,) = unipc_weights([lam_s], lam_t, a_s, a_t, s_s, s_t, 1, "bh2", prediction, False)
    h = lam_t - lam_s
    if prediction == "data":
        assert (float(linear), float(w)) == pytest.approx((0.75, float(a_t * -torch.expm1(-h))), rel=1e-15)
    else:
        assert (float(linear), float(w)) == pytest.approx((4 / 3, float(-s_t * torch.expm1(h))), rel=1e-15)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_first_order_unic_is_the_trapezoid_rule(variant):
    """UniC-1 (ρ = 1/2, as the paper's Algorithm 2 and diffusers fix it) on data prediction:
    y_t = (σ_t/σ_s) y_s − α_t (e^{−h} − 1) (m_s + m_t)/2 for bh2; bh1 weighs the new output by −α_t (−h)/2."""
    lam_s, lam_t = torch.tensor(-0.3, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    a_t, s_t, s_s = torch.sigmoid(2 * lam_t).sqrt(), torch.sigmoid(-2 * lam_t).sqrt(), torch.sigmoid(-2 * lam_s).sqrt()
    linear, (w_new, w_old) = unipc_weights([lam_s], lam_t, None, a_t, s_s, s_t, 1, variant, "data", True)
    h = lam_t - lam_s
    b = -h if variant == "bh1" else torch.expm1(-h)
    torch.testing.assert_close(w_new, -a_t * b / 2, rtol=1e-15, atol=0)
    torch.testing.assert_close(w_old + w_new, a_t * -torch.expm1(-h), rtol=1e-15, atol=1e-17)
    torch.testing.assert_close(linear, s_t / s_s, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("corrector, order", [(False, 3), (True, 2), (True, 3)])
def test_rhos_solve_the_order_conditions(variant, corrector, order):
    """Σ_k ρ_k r_k^{i−1} = i! φ_{i+1}(ĥ)/B(ĥ) for i = 1 .. (the predictor's p − 1, the corrector's p)."""
    lam = nodes(order)
    lam_t = torch.tensor(LAM[3], dtype=torch.float64)
    h = lam_t - lam[0]
    rks = [(n - lam[0]) / h for n in lam[1:]] + ([torch.ones_like(h)] if corrector else [])
    _, _, rhs = order_condition_rhs(-h, order, variant)
    rhos = solve_rhos(rks, rhs)
    for i in range(len(rks)):
        torch.testing.assert_close(sum(r * k**i for r, k in zip(rhos, rks)), rhs[i], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("corrector", [False, True])
def test_weights_reproduce_a_constant_output_exactly(corrector):
    """A constant data prediction m makes every step exact (the weights on m sum to α_t (1 − e^{−h})):
    the consistency every order keeps."""
    for order in (1, 2, 3):
        lam = nodes(order)
        lam_t = torch.tensor(LAM[3], dtype=torch.float64)
        a_t, s_t, s_s = torch.sigmoid(2 * lam_t).sqrt(), torch.sigmoid(-2 * lam_t).sqrt(), torch.sigmoid(-2 * lam[0]).sqrt()
        _, weights = unipc_weights(lam, lam_t, None, a_t, s_t=s_t, s_s=s_s, order=order, variant="bh2",
                                   prediction="data", corrector=corrector)
        torch.testing.assert_close(sum(weights), a_t * -torch.expm1(-(lam_t - lam[0])), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("sde_id", [name for name, _ in ALL_SDES])
def test_the_corrector_costs_no_evaluation_and_improves_on_unip(sde_id):
    """NFE = steps with or without UniC, and at 20 steps on Gaussian data UniC (order 2 + 1) lands closer to
    the exact PF-ODE map than UniP alone (below about 12 steps either can be ahead: the warm-up and the
    lowered final orders dominate there)."""
    sde = dict(ALL_SDES)[sde_id]()
    mixture, mu = gaussian(), mu_for(sde)
    x_init = exact_marginal_draw(mixture, sde, sde.t_max, 64, mu, seed=4)
    exact = pf_ode_map(mixture, sde, x_init, sde.t_max, sde.t_min, mu)
    errors = {}
    for corrector in (True, False):
        sol = revsde.sample(exact_model(mixture, sde), x_init=x_init, sampler="unipc", corrector=corrector, steps=20,
                            mu=None if mu is None else mu.expand(64, -1))
        assert sol.nfe == 20
        errors[corrector] = float((sol.x - exact).pow(2).mean().sqrt())
    assert errors[True] < errors[False], errors


def test_refused_configurations_name_the_problem():
    with pytest.raises(ValueError, match="supports order 1, 2 or 3"):
        revsde.samplers.get("unipc", order=4)
    with pytest.raises(ValueError, match="variant"):
        revsde.samplers.get("unipc", variant="bh3")
    rf = S.RectifiedFlow()
    model = exact_model(two_modes(), rf)
    for options, message in (({"prediction": "noise"}, "cannot start where α = 0"),
                             ({"variant": "bh1"}, "B\\(h\\) = h is infinite")):
        with pytest.raises(ValueError, match=message):
            revsde.sample(model, shape=(4, 2), sampler="unipc", steps=5, seed=0, **options)
    assert revsde.sample(model, shape=(4, 2), sampler="unipc", steps=5, seed=0, variant="bh1",
                         corrector=False).x.isfinite().all()
    assert grids.get("uniform_t")(rf, 5)[0] == rf.t_max
