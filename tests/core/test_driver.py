"""The one driver of the sampler protocol (``revsde.samplers.driver``): the checks on what a sampler
yields, NFE and step counting, the NaN guard naming the step and the samples, and the same run through
``revsde.sample``, ``kernels.run_batched``, ``RevSDEScheduler`` and Denoising MCMC's relay; the noise
contract (``revsde.noise.NoiseSource``) every noise class keeps and dmcmc relies on; and the grids made
from a grid (``grids.resample_grid``, ``grids.integration_grid``)."""
from __future__ import annotations

import math

import pytest
import torch

import revsde
from revsde import sde as S
from revsde.kernels import run_batched
from revsde.nets.noise_classifier import ExactNoisePosterior
from revsde.noise import (NOISES, BrownianNoise, GaussianNoise, NoiseSource, check_generators, generators_from_seed,
                          make_noise, randn)
from revsde.samplers import driver as driver_mod
from revsde.samplers.base import Query, Sampler, Step
from revsde.samplers.driver import Driver, FiniteGuard, NonFiniteStateError

from fixtures import exact_model, gaussian, two_modes

F64 = torch.float64


def scripted(*plan, x=None):
    """A sampler generator that follows ``plan``: "q" asks a query (the answer is the new state), "s" yields
    a step, anything else is yielded as it is. Returns the state; ``closed`` records its closing."""
    x = torch.zeros(2, 3, dtype=F64) if x is None else x
    t = torch.full((x.shape[0],), 0.5, dtype=F64)
    i = 0
    try:
        for item in plan:
            if item == "q":
                x = yield Query(x, t)
            elif item == "s":
                yield Step(i, x, t)
                i += 1
            else:
                yield item
    finally:
        scripted.closed = True
    return x


def answer(query):
    return query.x + 1


class Bad(Sampler):
    """A sampler that yields something outside the protocol after one step."""

    name, kind, order, evals_per_step = "bad", "ode", 1, 1

    def __init__(self):
        pass

    def run(self, sde, grid, x, mu, noise):
        pred = yield Query(x, grid[0])
        yield Step(0, pred.data, grid[1])
        yield "not a query"
        return x


# --- the driver itself ----------------------------------------------------------------------------------
def test_driver_counts_answered_queries_and_steps_and_sets_each_steps_nfe():
    seen = []
    drv = Driver(scripted("q", "q", "s", "q", "s", "s"), "script", on_step=lambda st: seen.append((st.i, st.nfe)))
    x = drv.drive(answer)
    assert drv.nfe == 3 and drv.steps == 3 and drv.done and drv.query is None
    assert seen == [(0, 2), (1, 3), (2, 3)]
    torch.testing.assert_close(x, torch.full((2, 3), 3.0, dtype=F64))
    assert drv.result is x


def test_driver_one_query_at_a_time_and_stop():
    scripted.closed = False
    drv = Driver(scripted("s", "q", "q"), "script")
    first = drv.start()  # runs through the step before the first query
    assert isinstance(first, Query) and drv.steps == 1 and drv.nfe == 0 and drv.query is first
    second = drv.answer(torch.zeros(2, 3, dtype=F64))
    assert isinstance(second, Query) and drv.nfe == 1
    drv.stop(torch.full((2, 3), 7.0))  # the answer is used outside the run: one NFE, the run ends there
    assert drv.nfe == 2 and drv.done and drv.query is None and scripted.closed
    assert float(drv.result[0, 0]) == 7.0


def test_driver_start_of_a_run_without_queries():
    drv = Driver(scripted("s", "s"), "script")
    assert drv.start() is None and drv.done and drv.steps == 2 and drv.nfe == 0


@pytest.mark.parametrize("bad", [3, None, torch.zeros(2)])
def test_driver_refuses_what_is_neither_query_nor_step(bad):
    scripted.closed = False
    with pytest.raises(TypeError, match=f"sampler 'script' yielded {type(bad).__name__}; expected Query or Step"):
        Driver(scripted("q", "s", bad), "script").drive(answer)
    assert scripted.closed
    with pytest.raises(TypeError, match=f"generator 7 yielded {type(bad).__name__}; expected Query or Step"):
        Driver(scripted(bad), "g", label="generator 7").start()


def test_every_caller_refuses_a_bad_yield():
    """sample, run_batched and dmcmc's relay of its integrator go through the same check."""
    sde = S.VPSDE()
    model = exact_model(gaussian(), sde)
    with pytest.raises(TypeError, match="sampler 'bad' yielded str; expected Query or Step"):
        revsde.sample(model, (2, 2), sampler=Bad(), steps=3)
    t = revsde.grids.resolve("uniform_t", sde, 3, 2)
    with pytest.raises(TypeError, match="generator 1 yielded str; expected Query or Step"):
        run_batched(model, [revsde.samplers.get("ode_euler").run(sde, t, torch.zeros(2, 2), None, None),
                            Bad().run(sde, t, torch.zeros(2, 2), None, None)])
    post = ExactNoisePosterior(gaussian(), sde, 10)
    smp = revsde.samplers.get("dmcmc", noise_classifier=post, integrator=Bad(), burn_in_steps=1, mcmc_steps=1)
    with pytest.raises(TypeError, match="sampler 'bad' yielded str; expected Query or Step"):
        revsde.sample(model, (2, 2), sampler=smp, steps=3)


def test_relay_passes_queries_up_and_counts_them_without_guarding():
    """A run inside another run: the outer driver answers and guards; the inner one counts and renumbers."""
    renumbered = []

    def outer():
        inner = Driver(scripted("q", "s", "q", "s", x=torch.full((1, 2), float("nan"))), "inner", guard=False,
                       on_step=lambda st: renumbered.append(st.i))
        x = yield from inner.relay()
        assert inner.nfe == 2 and inner.steps == 2
        pred = yield Query(x, torch.zeros(1))
        return pred

    drv = Driver(outer(), "outer", guard=False)
    drv.drive(answer)
    assert drv.nfe == 3 and drv.steps == 2 and renumbered == [0, 1]
    with pytest.raises(NonFiniteStateError, match="sampler 'outer': the state became NaN/Inf at step 0"):
        Driver(outer(), "outer").drive(answer)  # the NaN steps came up through the relay unguarded


# --- the NaN guard -------------------------------------------------------------------------------------
def nan_rows(rows, batch=4, dtype=torch.float32):
    x = torch.zeros(batch, 3, dtype=dtype)
    x[rows, 1] = float("nan")
    return x


def test_guard_names_the_step_and_the_samples():
    t = torch.full((4,), 0.5)
    with pytest.raises(NonFiniteStateError) as err:
        FiniteGuard("mrs", "cpu")(Step(2, nan_rows([1, 3]), t), 5)
    assert str(err.value).startswith("sampler 'mrs': the state became NaN/Inf at step 2 (t = 0.5, NFE 5) in samples "
                                     "1, 3 of 4; try more steps")
    assert err.value.step == 2 and err.value.samples == [1, 3]
    x = torch.full((12, 2), float("inf"))
    with pytest.raises(NonFiniteStateError, match=r"in samples 0, 1, 2, 3, 4, 5, 6, 7, … of 12;"):
        FiniteGuard("mrs", "cpu")(Step(0, x, torch.linspace(0.2, 0.4, 12)), 1)
    with pytest.raises(NonFiniteStateError, match=r"t = 0.2..0.4, NFE 1\) in sample 0 of 1;"):
        FiniteGuard("mrs", "cpu")(Step(0, x[:1], torch.tensor([0.2, 0.4])), 1)


@pytest.mark.parametrize("device", ["cpu", "meta"])  # "meta": any device but the CPU defers its reads
def test_guard_takes_one_sum_per_step_and_the_exact_check_only_when_it_trips(device, monkeypatch):
    exact_checks = []
    real = driver_mod.non_finite_samples
    monkeypatch.setattr(driver_mod, "non_finite_samples", lambda x: exact_checks.append(x) or real(x))
    guard = FiniteGuard("ode_euler", device, every=3)
    t = torch.full((2,), 0.25)
    huge = torch.full((2, 4), 3e38)  # finite, but its float32 sum overflows: the exact check clears it
    for i, x in enumerate([torch.zeros(2, 4), huge, torch.ones(2, 4), torch.zeros(2, 4)]):
        guard(Step(i, x, t), i + 1)
    guard.flush()
    assert len(exact_checks) == 1 and exact_checks[0] is huge
    with pytest.raises(NonFiniteStateError, match=r"at step 4 \(t = 0.25, NFE 5\) in sample 0 of 2"):
        guard(Step(4, nan_rows([0], 2), t), 5)  # on CPU: raised here
        guard(Step(5, nan_rows([1], 2), t), 6)  # elsewhere both wait: the first bad step is the one reported
        guard.flush()


def test_driver_guard_can_watch_the_first_rows_only():
    drv = Driver(scripted("q", "s"), "script")
    drv.rows = 1  # DiT's mirrored batch: the second half is not the run
    drv.start()
    drv.answer(torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]], dtype=F64))
    assert drv.done
    drv = Driver(scripted("q", "s"), "script")
    drv.start()
    with pytest.raises(NonFiniteStateError, match="in sample 1 of 2"):
        drv.answer(torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]], dtype=F64))


def test_sample_names_the_samples_that_went_non_finite():
    sde = S.VPSDE()

    def net(x, t):  # sample 1 breaks below t = 0.5
        bad = (t[:, None] < 0.5) & (torch.arange(x.shape[0])[:, None] == 1)
        return torch.where(bad, torch.full_like(x, float("nan")), torch.zeros_like(x))

    model = revsde.ScoreModel(net, sde, "noise", time_fn=lambda t: t)
    with pytest.raises(revsde.NonFiniteStateError) as err:
        revsde.sample(model, shape=(3, 2), sampler="ode_euler", steps=10, grid="uniform_t")
    assert "sampler 'ode_euler'" in str(err.value) and "at step 6" in str(err.value)
    assert "in sample 1 of 3;" in str(err.value) and err.value.samples == [1]


def test_sample_checks_what_the_run_returns():
    sde = S.VPSDE()

    class NaNAtTheEnd(Bad):
        name = "nan_end"

        def run(self, sde, grid, x, mu, noise):
            pred = yield Query(x, grid[0])
            yield Step(0, pred.data, grid[1])
            return torch.full_like(x, float("nan"))

    with pytest.raises(NonFiniteStateError, match=r"sampler 'nan_end' returned a NaN/Inf state \(NFE 1\) in samples "
                                                  r"0, 1 of 2"):
        revsde.sample(exact_model(gaussian(), sde), (2, 2), sampler=NaNAtTheEnd(), steps=1)


# --- one run, every caller -----------------------------------------------------------------------------
def test_the_same_run_through_sample_run_batched_and_the_scheduler():
    """mrs 2M on a DDPM table: the scheduler's loop, revsde.sample on its grid and run_batched of the same
    generator give the same samples, NFE and steps."""
    pytest.importorskip("diffusers")
    from revsde.integrations.diffusers import RevSDEScheduler

    rev = RevSDEScheduler(sampler="mrs", order=2, stochastic=True, final_sigmas_type="sigma_min")
    rev.set_timesteps(6)
    data = gaussian()

    def net(x, timestep):  # the exact ε at DDPM index ``timestep``
        t = torch.as_tensor(timestep, dtype=F64).expand(x.shape[0]) / (rev.config.num_train_timesteps - 1)
        return data.noise(rev.sde, x, t)

    model = revsde.ScoreModel(net, rev.sde, prediction="noise")
    gens = lambda: generators_from_seed(10, 4)
    x_init = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)

    x = x_init
    for k, timestep in enumerate(rev.timesteps):
        x = rev.step(net(x, timestep), timestep, x, generator=gens() if k == 0 else None).prev_sample
    steps = []
    sol = revsde.sample(model, x_init=x_init, sampler=rev.sampler, grid=rev._grid, generator=gens(),
                        callback=lambda st: steps.append((st.i, st.nfe)))
    grid = rev._grid[:, None].expand(-1, 4).contiguous()
    batched_steps = []
    got = run_batched(model, [rev.sampler.run(rev.sde, grid, x_init, None, GaussianNoise((4, 2), gens(), dtype=F64))],
                      callback=lambda k, st: batched_steps.append((st.i, st.nfe)))
    torch.testing.assert_close(sol.x, got[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x, sol.x, rtol=1e-9, atol=1e-9)
    assert rev.nfe == sol.nfe == got.nfe == 6 and sol.steps == got.steps[0] == 6
    assert steps == batched_steps == [(i, i + 1) for i in range(6)]


def test_the_scheduler_guard_names_step_and_samples():
    pytest.importorskip("diffusers")
    from revsde.integrations.diffusers import RevSDEScheduler

    rev = RevSDEScheduler(sampler="ode_euler")
    rev.set_timesteps(4)
    x = torch.zeros(3, 2)
    with pytest.raises(NonFiniteStateError, match=r"sampler 'ode_euler': the state became NaN/Inf at step 1 "
                                                  r"\(t = [0-9.e-]+, NFE 2\) in sample 2 of 3"):
        for k, timestep in enumerate(rev.timesteps):
            out = torch.zeros_like(x)
            if k == 1:
                out[2] = float("nan")
            x = rev.step(out, timestep, x).prev_sample


# --- the noise contract --------------------------------------------------------------------------------
NOISE_CLASSES = [obj for obj in vars(revsde.noise).values()
                 if isinstance(obj, type) and obj.__module__ == "revsde.noise" and obj.__name__.endswith("Noise")]


def test_every_noise_class_implements_the_protocol():
    assert {cls.__name__ for cls in NOISE_CLASSES} >= {"GaussianNoise", "BrownianNoise"}
    for cls in NOISE_CLASSES:
        assert all(callable(getattr(cls, m, None)) for m in ("__call__", "fresh")), cls
        assert isinstance(getattr(cls, "generators", None), property), cls
    gens = generators_from_seed(0, 3)
    for noise in (GaussianNoise((3, 2), gens), GaussianNoise((3, 2), gens[0]), GaussianNoise((3, 2)),
                  BrownianNoise((3, 2), 0.0, 1.0, [1, 2, 3]), BrownianNoise((3, 2), 0.0, 1.0, 5)):
        assert isinstance(noise, NoiseSource)
        assert noise(torch.full((3,), 0.5), torch.full((3,), 0.25)).shape == noise.fresh().shape == (3, 2)
    assert GaussianNoise((3, 2), gens).generators == gens and GaussianNoise((3, 2), gens[0]).generators == [gens[0]]
    assert GaussianNoise((3, 2)).generators is None
    path = BrownianNoise((3, 2), 0.0, 1.0, [1, 2, 3])
    before = [g.get_state() for g in path.generators]
    path.fresh()  # its fresh normals come from exactly these generators
    assert len(before) == 3 and all(not torch.equal(b, g.get_state()) for b, g in zip(before, path.generators))
    assert len(BrownianNoise((3, 2), 0.0, 1.0, 5).generators) == 1  # one path, one generator for the batch
    assert not isinstance(lambda t0, t1: None, NoiseSource)


def test_make_noise_builds_each_named_source():
    grid = torch.tensor([[1.0, 0.9], [0.5, 0.4], [0.1, 0.2]], dtype=F64)
    assert NOISES == ("gaussian", "brownian")
    gauss = make_noise("gaussian", (2, 3), generators_from_seed(4, 2), grid, dtype=F64)
    torch.testing.assert_close(gauss.fresh(), randn((2, 3), generators_from_seed(4, 2), dtype=F64))
    per_sample = make_noise("brownian", (2, 3), generators_from_seed(4, 2), grid, dtype=F64)
    one_path = make_noise("brownian", (2, 3), torch.Generator().manual_seed(4), grid, dtype=F64)
    assert (per_sample.t0, per_sample.t1) == (0.1, 1.0) and len(per_sample.entropies) == 2
    assert len(one_path.entropies) == 1
    assert check_generators(generators_from_seed(0, 2), 2) is not None
    with pytest.raises(ValueError, match="generator is a list of 1 for a batch of 2: give one per sample"):
        check_generators(generators_from_seed(0, 1), 2)


class ProtocolNoise:
    """A user's noise source with the protocol's members only: normals from per-sample generators."""

    def __init__(self, shape, generators):
        self.shape, self._gens = shape, generators

    def __call__(self, t0, t1):
        return randn(self.shape, self._gens, dtype=F64)

    def fresh(self):
        return randn(self.shape, self._gens, dtype=F64)

    @property
    def generators(self):
        return self._gens


def test_dmcmc_resumes_its_chains_with_a_noise_that_has_only_the_protocol():
    """dmcmc saves and restores the chains' randomness through ``generators``: a run continued with a
    user's noise source equals the same run with the built-in Gaussian source, bit for bit."""
    sde = S.VPSDE()
    data = two_modes()
    post = ExactNoisePosterior(data, sde, 20)
    model = exact_model(data, sde)
    options = dict(noise_classifier=post, noise_level="sample", integrator_options={"stochastic": True},
                   burn_in_steps=2, mcmc_steps=3)

    def two_runs(own_noise: bool):
        smp = revsde.samplers.get("dmcmc", **options)
        outs = []
        for seed in (1, 2):
            gens = generators_from_seed(seed, 3)
            noise = ProtocolNoise((3, 2), gens) if own_noise else "gaussian"
            outs.append(revsde.sample(model, (3, 2), sampler=smp, steps=4, generator=gens, noise=noise,
                                      dtype=F64).x)
        return outs, smp.state

    assert isinstance(ProtocolNoise((3, 2), None), NoiseSource)
    (first, second), state = two_runs(own_noise=True)
    (first_ref, second_ref), _ = two_runs(own_noise=False)
    assert len(state.generators) == 3
    assert torch.equal(first, first_ref) and torch.equal(second, second_ref)


# --- grids made from a grid -------------------------------------------------------------------------------
def test_integration_grid_is_the_callers_grid_from_each_level():
    """A logsnr grid moved to a chain's level is the logsnr grid from that level to the end."""
    sde = S.VPSDE()
    grid = revsde.grids.resolve("logsnr", sde, 10, 3)
    start = torch.tensor([0.9, 0.4, 0.05], dtype=F64)
    sub = revsde.grids.integration_grid(sde, grid, start)
    assert sub.shape == (11, 3) and torch.equal(sub[0], start) and torch.equal(sub[-1], grid[-1])
    lam = sde.log_snr(sub)
    steps = lam[1:] - lam[:-1]
    torch.testing.assert_close(steps, steps[:1].expand_as(steps), rtol=1e-9, atol=1e-12)


def test_integration_grid_keeps_t_fractions_where_log_snr_is_infinite():
    """Rectified flow (λ infinite at both ends): a uniform-t grid moved to each start stays uniform in t."""
    sde = S.RectifiedFlow()
    grid = revsde.grids.resolve("uniform_t", sde, 4, 2)
    start = torch.tensor([0.8, 0.4], dtype=F64)
    sub = revsde.grids.integration_grid(sde, grid, start)
    expected = start + torch.linspace(0, 1, 5, dtype=F64)[:, None] * (grid[-1] - start)
    torch.testing.assert_close(sub, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["logsnr", "uniform_t"])
def test_resampled_grid_keeps_the_callers_spacing(name):
    """The init pass's grid of ``init_steps`` steps: the caller's grid with more or fewer points, the same
    ends and (λ linear in the index) the grid of that name with that many steps; per-sample grids too."""
    sde = S.VPSDE()
    grid = revsde.grids.resolve(name, sde, 4, 2)
    for steps in (1, 3, 4, 10):
        out = revsde.grids.resample_grid(sde, grid, steps)
        assert out.shape == (steps + 1, 2) and torch.equal(out[0], grid[0]) and torch.equal(out[-1], grid[-1])
        assert bool((out[1:] < out[:-1]).all())
    torch.testing.assert_close(revsde.grids.resample_grid(sde, grid, 4), grid, rtol=1e-9, atol=1e-12)
    if name == "logsnr":
        torch.testing.assert_close(revsde.grids.resample_grid(sde, grid, 10),
                                   revsde.grids.resolve("logsnr", sde, 10, 2), rtol=1e-9, atol=1e-12)


def test_resampled_grid_interpolates_t_where_log_snr_is_infinite():
    sde = S.RectifiedFlow()
    grid = revsde.grids.resolve("uniform_t", sde, 4, 1)
    torch.testing.assert_close(revsde.grids.resample_grid(sde, grid, 8),
                               revsde.grids.resolve("uniform_t", sde, 8, 1), rtol=0, atol=1e-15)
    assert math.isinf(float(sde.log_snr(grid[0])))  # the case the fallback is for
