"""``restart`` (Xu et al. 2023) around an ODE sampler: without restarts it is its integrator bit for bit,
its NFE adds the restart passes, its forward jump is the SDE's own transition, each sample depends on
its own generator only, and bad settings are refused. The registry-driven tests (test_samplers.py,
test_flow.py) run its default configuration against the exact distributions."""
from __future__ import annotations

import pytest
import torch

import revsde
from fixtures import ALL_SDES, exact_model, gaussian, mu_for, two_modes
from revsde import sde as S


def run(sde, n=64, **options):
    mu = mu_for(sde)
    return revsde.sample(exact_model(two_modes(), sde), shape=(n, 2), sampler="restart", steps=8, seed=3,
                         mu=None if mu is None else mu.expand(n, -1), **options)


@pytest.mark.parametrize("sde_id", [name for name, _ in ALL_SDES])
def test_without_restarts_it_is_its_integrator(sde_id):
    sde = dict(ALL_SDES)[sde_id]()
    mu = mu_for(sde)
    plain = revsde.sample(exact_model(two_modes(), sde), shape=(64, 2), sampler="mrs", order=2, steps=8, seed=3,
                          mu=None if mu is None else mu.expand(64, -1))
    restarted = run(sde, restarts=0, integrator="mrs", integrator_options={"order": 2})
    assert torch.equal(plain.x, restarted.x) and plain.nfe == restarted.nfe == 8


def test_nfe_counts_the_restart_passes_and_the_result_changes():
    sol = run(S.VPSDE(), restarts=3, restart_steps=2)
    assert sol.nfe == (8 + 3 * 2) * 2  # ode_heun: two evaluations per step
    assert not torch.equal(sol.x, run(S.VPSDE(), restarts=0).x)


def test_the_jump_is_the_forward_transition():
    """With the exact PF-ODE replaced by the identity on a Gaussian at t_lo, one jump to t_hi gives the
    forward marginal there: y_hi = (α_hi/α_lo) y_lo + sqrt(σ_hi² − (α_hi/α_lo)² σ_lo²) z has variance
    α_hi² Σ₀ + σ_hi² when y_lo ~ N(0, α_lo² Σ₀ + σ_lo²)."""
    sde, sampler = S.VPSDE(), revsde.samplers.get("restart", restarts=1)
    t_lo, t_hi = torch.tensor([0.2], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    a_lo, s_lo, a_hi, s_hi = sde.alpha(t_lo), sde.sigma(t_lo), sde.alpha(t_hi), sde.sigma(t_hi)
    ratio = a_hi / a_lo
    jump_var = s_hi**2 - ratio**2 * s_lo**2
    var_lo = a_lo**2 * 0.7 + s_lo**2
    torch.testing.assert_close(ratio**2 * var_lo + jump_var, a_hi**2 * 0.7 + s_hi**2, rtol=1e-14, atol=0)
    assert sampler.restart_sigmas == (0.06, 0.3)


def test_a_sample_depends_only_on_its_own_generator():
    sde = S.VESDE()
    model = exact_model(gaussian(), sde)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    both = revsde.sample(model, shape=(2, 2), sampler="restart", steps=6, generator=gens([5, 6])).x
    alone = revsde.sample(model, shape=(1, 2), sampler="restart", steps=6, generator=gens([6])).x
    torch.testing.assert_close(both[1:], alone, rtol=1e-12, atol=1e-12)


def test_bad_settings_are_refused():
    for options, message in (({"integrator": "euler_maruyama"}, "wraps a fixed-step ODE sampler"),
                             ({"integrator": "ode_rk45"}, "wraps a fixed-step ODE sampler"),
                             ({"restart_sigmas": (0.3, 0.06)}, "0 < low < high"),
                             ({"restarts": -1}, "restarts as an integer >= 0"),
                             ({"restart_steps": 0}, "restart_steps as an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            revsde.samplers.get("restart", **options)
    with pytest.raises(ValueError, match="never enters the restart interval"):
        run(S.VPSDE(), restart_sigmas=(1e-6, 2e-6))
    with pytest.raises(ValueError, match="cannot follow it"):
        revsde.samplers.get("restart").query_times(torch.tensor([1.0, 0.0], dtype=torch.float64))
