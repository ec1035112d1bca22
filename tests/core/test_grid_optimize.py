"""``grids.optimize`` (LD3 on the model's own samples) and grid files: the fitted grid brings the few-step
sampler measurably closer to the exact PF-ODE map than the default grid, stays a valid grid, is the same
bit for bit for the same seed, and bad settings are refused; grid files round-trip and refuse a mismatch."""
from __future__ import annotations

import json

import pytest
import torch
from fixtures import gaussian, pf_ode_map, two_modes

import revsde
from revsde import grids
from revsde import sde as S
from revsde.grid_fit import grid_from_logits, logits_from_grid, run_sampler
from revsde.nets.gmm import exact_model

F64 = torch.float64
FAST = dict(n=32, iterations=40, lr=0.1, dtype=F64, progress=False)


@pytest.fixture(scope="module")
def vp():
    return S.VPSDE()


def held_out(sde, n=256, seed=1234):
    """Prior draws the fit never saw."""
    return sde.prior_std * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rms(a, b) -> float:
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("sampler, options", [("mrs", {"order": 2}), ("ode_euler", {})])
def test_fitted_grid_is_closer_to_the_exact_map_than_the_default(vp, sampler, options):
    mixture = gaussian()
    model = exact_model(mixture, vp)
    grid = grids.optimize(model, (2,), sampler=sampler, steps=5, seed=0, **FAST, **options)
    x = held_out(vp)
    exact = pf_ode_map(mixture, vp, x, vp.t_max, vp.t_min)
    smp = revsde.samplers.get(sampler, **options)
    before = rms(run_sampler(model, smp, grids.logsnr(vp, 5), x), exact)
    after = rms(run_sampler(model, smp, grid, x), exact)
    assert after < 0.5 * before, (sampler, before, after)


def test_fitted_grid_is_closer_to_the_teacher_on_two_modes(vp):
    model = exact_model(two_modes(), vp)
    fit = grids.fit_grid(model, (2,), sampler="mrs", steps=5, seed=0, **FAST)
    assert fit.loss < 0.5 * fit.loss_start
    x = held_out(vp)
    teacher = run_sampler(model, revsde.samplers.get("mrs", order=3), grids.logsnr(vp, 40), x)
    smp = revsde.samplers.get("mrs")
    assert rms(run_sampler(model, smp, fit.grid, x), teacher) < 0.8 * rms(run_sampler(model, smp, grids.logsnr(vp, 5), x), teacher)


@pytest.mark.parametrize("sde", [S.VPSDE(), S.VESDE(), S.RectifiedFlow()], ids=["vp", "ve", "rf"])
def test_fitted_grid_is_a_grid_of_the_sde(sde):
    grid = grids.optimize(exact_model(gaussian(), sde), (2,), sampler="mrs", steps=4, seed=0,
                          **{**FAST, "iterations": 5})
    assert grid.dtype == F64 and grid.shape == (5,)
    assert float(grid[0]) == sde.t_max and float(grid[-1]) == sde.t_min
    assert bool((grid[1:] < grid[:-1]).all())


def test_the_fit_optimises_what_sample_computes(vp):
    """The differentiable run is ``revsde.sample`` with the grid as a tensor, bit for bit."""
    model = exact_model(two_modes(), vp)
    grid = grids.optimize(model, (2,), sampler="mrs", steps=5, seed=0, **{**FAST, "iterations": 5})
    x = held_out(vp, n=8)
    for name in ("mrs", "ode_heun"):
        ours = run_sampler(model, revsde.samplers.get(name), grid, x)
        theirs = revsde.sample(model, x_init=x, sampler=name, grid=grid).x
        assert torch.equal(ours, theirs)


def test_logits_parametrise_every_decreasing_grid(vp):
    t = grids.logsnr(vp, 7)
    back = grid_from_logits(logits_from_grid(t), vp.t_max, vp.t_min)
    assert torch.allclose(back, t, rtol=1e-12, atol=1e-15)
    assert float(back[0]) == vp.t_max and float(back[-1]) == vp.t_min
    wild = grid_from_logits(torch.tensor([8.0, -8.0, 0.0, 5.0], dtype=F64), vp.t_max, vp.t_min)
    assert bool((wild[1:] < wild[:-1]).all())


def test_same_seed_same_grid_bit_for_bit(vp):
    model = exact_model(two_modes(), vp)
    settings = dict(sampler="unipc", steps=4, **{**FAST, "iterations": 15})
    a = grids.optimize(model, (2,), seed=3, **settings)
    b = grids.optimize(model, (2,), seed=3, **settings)
    c = grids.optimize(model, (2,), seed=4, **settings)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(steps=2.5), "steps must be an integer >= 1"),
    (dict(n=0), "n must be an integer >= 1"),
    (dict(lr=-1.0), "lr must be a positive number"),
    (dict(sampler="euler_maruyama"), "ODE samplers.*stochastic"),
    (dict(sampler="mrs", stochastic=True), "ODE samplers.*stochastic"),
    (dict(sampler="ode_rk45"), "adaptive"),
    (dict(sampler="mrs", order=7), "order"),
    (dict(shape=()), "shape must be one sample's shape"),
    (dict(shape=(0,)), "shape must be one sample's shape"),
    (dict(shape=(2,), mu=torch.zeros(3, 5)), "mu has shape"),
    (dict(teacher="mrs"), "teacher must be a"),
])
def test_bad_settings_are_refused(vp, kwargs, message):
    settings = dict(shape=(2,), sampler="mrs", steps=3, **{**FAST, "iterations": 1})
    settings.update(kwargs)
    shape = settings.pop("shape")
    with pytest.raises(ValueError, match=message):
        grids.optimize(exact_model(gaussian(), vp), shape, **settings)


def test_wrong_sample_shape_is_refused_by_the_model(vp):
    with pytest.raises(ValueError, match="2-dimensional"):
        grids.optimize(exact_model(gaussian(), vp), (3,), sampler="mrs", steps=3, **{**FAST, "iterations": 1})


# --- grid files ---------------------------------------------------------------------------------------

def test_grid_file_round_trip_bit_for_bit(vp, tmp_path):
    model = exact_model(two_modes(), vp)
    fit = grids.fit_grid(model, (2,), sampler="mrs", steps=5, seed=0, order=3, **{**FAST, "iterations": 5})
    path = grids.save_grid(tmp_path / "g.json", fit.grid, model=model, sampler="mrs", options={"order": 3},
                           info=fit.settings)
    record = json.loads(path.read_text())
    assert record["sampler"] == "mrs" and record["options"]["order"] == 3 and record["steps"] == 5
    assert record["fingerprint"] == grids.fingerprint(model)
    loaded = grids.load_grid(path, model=exact_model(two_modes(), vp), sampler=revsde.samplers.get("mrs", order=3),
                             steps=5)
    assert loaded.dtype == F64 and torch.equal(loaded, fit.grid)
    assert not list(tmp_path.glob("*.tmp"))


def test_grid_file_refuses_another_model_sampler_options_or_steps(vp, tmp_path):
    model = exact_model(two_modes(), vp)
    path = grids.save_grid(tmp_path / "g.json", grids.logsnr(vp, 5), model=model, sampler="mrs")
    with pytest.raises(ValueError, match=r"fingerprint sha256:\w+, not to this model \(sha256:\w+\)"):
        grids.load_grid(path, model=exact_model(gaussian(), vp))
    with pytest.raises(ValueError, match="fingerprint"):
        grids.load_grid(path, model=exact_model(two_modes(), S.VPSDE(beta_max=10.0)))
    with pytest.raises(ValueError, match="for sampler 'mrs', not 'unipc'"):
        grids.load_grid(path, sampler="unipc")
    with pytest.raises(ValueError, match=r"other options.*'order': \(2, 3\)"):
        grids.load_grid(path, sampler="mrs", options={"order": 3})
    with pytest.raises(ValueError, match="5-step grid, not 10 steps"):
        grids.load_grid(path, steps=10)
    assert torch.equal(grids.load_grid(path, model=model, sampler="mrs", steps=5), grids.logsnr(vp, 5))


def test_fingerprints_of_files_and_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"one")
    first = grids.fingerprint(tmp_path / "a")
    (tmp_path / "a" / "w.bin").write_bytes(b"two")
    assert grids.fingerprint(tmp_path / "a") != first
    assert grids.fingerprint(first) == first
    with pytest.raises(ValueError, match="no such file"):
        grids.fingerprint(tmp_path / "missing")
