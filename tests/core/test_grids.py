"""Time grids: exact ends, monotonicity, and each grid's defining formula; ``resolve`` validation."""
from __future__ import annotations

import pytest
import torch

from revsde import grids
from revsde import sde as S

F64 = torch.float64
STEPS = [1, 3, 10, 37]


@pytest.mark.parametrize("name", grids.available())
@pytest.mark.parametrize("steps", STEPS)
def test_grid_runs_from_t_max_to_t_min(sde, name, steps):
    if needs_finite_log_snr_at_t_max(sde, name):
        with pytest.raises(ValueError, match="finite log-SNR.*uniform_t, Shifted"):
            grids.get(name)(sde, steps)
        return
    t = grids.get(name)(sde, steps)
    assert t.dtype == F64 and t.shape == (steps + 1,)
    assert float(t[0]) == sde.t_max  # exactly: the prior is drawn at t_max
    assert float(t[-1]) == sde.t_min  # exactly: the sample is returned at t_min
    assert bool((t[1:] < t[:-1]).all())


def needs_finite_log_snr_at_t_max(sde, name) -> bool:
    """logsnr and karras are spaced in λ, which is −∞ where α = 0 (rectified flow's t = 1): refused there."""
    return name in ("logsnr", "karras") and float(sde.alpha(sde.t_max)) == 0


@pytest.mark.parametrize("name", grids.available())
def test_grid_ends_are_exact_for_awkward_intervals(name):
    """t_min + (t_max − t_min) is not always t_max in floating point (it was not, for this pair)."""
    sde = S.VPSDE.cosine(t_min=0.28762098977142975, t_max=0.9191262118441977)
    t = grids.get(name)(sde, 10)
    assert float(t[0]) == sde.t_max and float(t[-1]) == sde.t_min


def test_named_grids_are_the_four_of_the_design():
    assert grids.available() == ["uniform_t", "logsnr", "karras", "quadratic"]


@pytest.mark.parametrize("steps", STEPS)
def test_uniform_t_is_equally_spaced(sde, steps):
    t = grids.uniform_t(sde, steps)
    k = torch.arange(steps + 1, dtype=F64)
    expected = sde.t_max + (sde.t_min - sde.t_max) * k / steps
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("steps", STEPS)
def test_quadratic_formula(sde, steps):
    t = grids.quadratic(sde, steps)
    k = torch.arange(steps + 1, dtype=F64)
    expected = sde.t_min + (sde.t_max - sde.t_min) * (1 - k / steps) ** 2
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("steps", STEPS)
def test_logsnr_grid_is_uniform_in_log_snr(sde, steps):
    if needs_finite_log_snr_at_t_max(sde, "logsnr"):
        return  # refused: test_grid_runs_from_t_max_to_t_min
    t = grids.logsnr(sde, steps)
    lam = sde.log_snr(t)
    lam_max, lam_min = float(sde.log_snr(sde.t_max)), float(sde.log_snr(sde.t_min))
    expected = lam_max + (lam_min - lam_max) * torch.arange(steps + 1, dtype=F64) / steps
    torch.testing.assert_close(lam, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rho", [7.0, 3.0])
@pytest.mark.parametrize("steps", STEPS)
def test_karras_grid_follows_the_power_law(sde, steps, rho):
    """σ̃ = σ/α with σ̃_k^{1/ρ} = σ̃_max^{1/ρ} + k/N (σ̃_min^{1/ρ} − σ̃_max^{1/ρ})."""
    if needs_finite_log_snr_at_t_max(sde, "karras"):
        return  # refused: test_grid_runs_from_t_max_to_t_min
    t = grids.karras(sde, steps, rho=rho) if rho != 7.0 else grids.karras(sde, steps)
    sigma_tilde = sde.sigma(t) / sde.alpha(t)
    hi = float(sde.sigma(sde.t_max) / sde.alpha(sde.t_max)) ** (1 / rho)
    lo = float(sde.sigma(sde.t_min) / sde.alpha(sde.t_min)) ** (1 / rho)
    expected = (hi + torch.arange(steps + 1, dtype=F64) / steps * (lo - hi)) ** rho
    torch.testing.assert_close(sigma_tilde, expected, rtol=1e-9, atol=0)


def test_karras_on_ve_is_the_edm_sigma_schedule():
    sde = S.VESDE(0.002, 80.0, t_min=0.0)
    t = grids.karras(sde, 18)
    i = torch.arange(19, dtype=F64)
    edm = (80.0 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(sde.sigma(t), edm, rtol=1e-12, atol=0)


def test_karras_rejects_non_positive_rho():
    with pytest.raises(ValueError, match="rho > 0.*-1"):
        grids.karras(S.VPSDE(), 10, rho=-1)


def test_logsnr_grid_needs_finite_log_snr_at_t_min():
    for sde in (S.VPSDE(t_min=0.0), S.OUVESDE(t_min=0.0), S.MRSDE(convention="irsde", t_min=0.0)):
        with pytest.raises(ValueError, match="finite log-SNR"):
            grids.logsnr(sde, 10)
        # the other grids are fine down to σ = 0
        t = grids.karras(sde, 10)
        assert float(t[-1]) == 0.0 and bool((t[1:] < t[:-1]).all())


# --- resolve ---------------------------------------------------------------------------------------

def test_resolve_named_grid_is_per_sample():
    sde = S.MRSDE()
    t = grids.resolve("logsnr", sde, 12, batch=3)
    assert t.shape == (13, 3) and t.dtype == F64
    for b in range(3):
        assert torch.equal(t[:, b], grids.logsnr(sde, 12))


def test_resolve_accepts_explicit_grids():
    sde = S.VPSDE()
    one = torch.tensor([1.0, 0.5, 0.2, 1e-3], dtype=F64)
    t = grids.resolve(one, sde, None, batch=2)
    assert t.shape == (4, 2) and torch.equal(t[:, 0], one) and torch.equal(t[:, 1], one)
    assert torch.equal(grids.resolve(one.tolist(), sde, 3, batch=2), t)
    per_sample = torch.tensor([[1.0, 0.8], [0.5, 0.3], [1e-3, 1e-3]], dtype=F64)
    assert torch.equal(grids.resolve(per_sample, sde, 2, batch=2), per_sample)
    # float round-off at the ends is tolerated and clamped
    nudged = torch.tensor([1.0 + 1e-12, 0.5, 1e-3 - 1e-12], dtype=F64)
    t = grids.resolve(nudged, sde, None, batch=1)
    assert float(t[0, 0]) == 1.0 and float(t[-1, 0]) == 1e-3


@pytest.mark.parametrize("grid,steps,batch,words", [
    (torch.tensor([[[1.0, 0.5]]]), None, 1, ["(N+1,) or (N+1, B)", "(1, 1, 2)"]),
    (torch.tensor([1.0]), None, 1, ["N >= 1", "(1,)"]),
    (torch.ones(3, 4), None, 2, ["(N+1, 2)", "(3, 4)"]),
    (torch.tensor([1.0, 0.5, 0.5, 0.1]), None, 1, ["strictly decreasing"]),
    (torch.tensor([0.1, 0.5, 1.0]), None, 1, ["strictly decreasing"]),
    (torch.tensor([[1.0, 0.5], [0.5, 0.7]]), None, 2, ["strictly decreasing"]),
    (torch.tensor([1.5, 0.5, 0.1]), None, 1, ["[t_min, t_max]", "[0.001, 1.0]", "1.5"]),
    (torch.tensor([1.0, 0.5, 0.0]), None, 1, ["[t_min, t_max]", "[0.001, 1.0]", "min 0.0"]),
    (torch.tensor([1.0, 0.5, 0.1]), 3, 1, ["steps=3", "2 intervals"]),
    ("logsnr", 0, 1, ["steps", ">= 1", "0"]),
    ("logsnr", -2, 1, ["steps", "-2"]),
    ("logsnr", 2.0, 1, ["steps", "2.0"]),
    ("logsnr", None, 1, ["'logsnr' needs steps"]),
    ("linear", 10, 1, ["'linear'", "uniform_t", "logsnr", "karras", "quadratic"]),
])
def test_resolve_rejects_bad_grids(grid, steps, batch, words):
    with pytest.raises(ValueError) as info:
        grids.resolve(grid, S.VPSDE(), steps, batch=batch)
    for word in words:
        assert word in str(info.value)


def test_get_unknown_grid_lists_valid_names():
    with pytest.raises(ValueError) as info:
        grids.get("cosine")
    assert all(name in str(info.value) for name in grids.available())


def test_sgmse_grid_is_sgmse_timesteps_then_zero():
    grid = grids.sgmse_grid(30, 0.03)
    assert grid.shape == (31,) and grid.dtype == torch.float64
    torch.testing.assert_close(grid[:30], torch.linspace(1, 0.03, 30, dtype=torch.float64), rtol=0, atol=0)
    assert float(grid[0]) == 1.0 and float(grid[29]) == 0.03 and float(grid[30]) == 0.0
    torch.testing.assert_close(grids.sgmse_grid(1, 0.03), torch.tensor([1.0, 0.0], dtype=torch.float64))  # SGMSE's N = 1
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="at least 1 step"):
            grids.sgmse_grid(bad, 0.03)
