"""``run_batched`` (lock-step generators, one network call per round), classifier-free guidance in
``ScoreModel``, the sync-free NaN guard, and ``graphs=`` of ``revsde.sample`` on CPU."""
from __future__ import annotations

import pytest
import torch

import revsde
from revsde.kernels import run_batched
from revsde.nets.gmm import exact_model
from revsde.samplers.driver import FiniteGuard, NonFiniteStateError
from revsde.samplers.base import Step

from fixtures import gaussian, two_modes


class Counting:
    """A network wrapper that counts calls and rows."""

    def __init__(self, net):
        self.net, self.calls, self.rows = net, 0, 0

    def __call__(self, x, t, **cond):
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x, t, **cond)


def start(sde, sampler, steps, batch, seed, grid=None, **options):
    """A sampler generator with its own prior draw and noise, as ``revsde.sample`` would make it."""
    smp = revsde.samplers.get(sampler, **options)
    t = revsde.grids.resolve(grid or smp.default_grid, sde, steps, batch, None)
    gens = revsde.noise.generator_from_seed(seed, batch)  # what seed= makes
    x = sde.prior_sample((batch, 2), generator=gens, dtype=torch.float64)
    return smp.run(sde, t, x, None, revsde.GaussianNoise((batch, 2), gens, dtype=torch.float64))


@pytest.mark.parametrize("sampler, options", [("mrs", {"order": 3}), ("euler_maruyama", {}), ("ode_heun", {}),
                                              ("pc", {"corrector": "ald"}), ("posterior", {})])
def test_run_batched_equals_separate_runs(sampler, options):
    sde = revsde.sde.VPSDE()
    model = exact_model(two_modes(), sde)
    counting = Counting(model.net)
    model.net = counting
    plans = [(5, 3, 0), (9, 1, 10), (2, 4, 20)]  # (steps, batch, seed): the runs end at different rounds
    got = run_batched(model, [start(sde, sampler, n, b, s, **options) for n, b, s in plans])
    evals = revsde.samplers.get(sampler, **options).evals_per_step
    assert counting.calls == got.nfe == max(n for n, _, _ in plans) * evals  # finished runs drop out
    assert counting.rows == sum(n * b for n, b, _ in plans) * evals
    for (n, b, s), x in zip(plans, got):
        smp = revsde.samplers.get(sampler, **options)
        alone = revsde.sample(model, (b, 2), sampler=smp, steps=n, seed=s, dtype=torch.float64)
        torch.testing.assert_close(x, alone.x, rtol=1e-12, atol=1e-12)
    assert got.steps == [n for n, _, _ in plans]


def test_run_batched_mixes_samplers_and_grids():
    sde = revsde.sde.VPSDE()
    model = exact_model(gaussian(), sde)
    runs = [start(sde, "mrs", 6, 2, 0), start(sde, "ode_rk4", 3, 2, 1, grid="karras")]
    mrs_x, rk4_x = run_batched(model, runs)
    torch.testing.assert_close(mrs_x, revsde.sample(model, (2, 2), sampler="mrs", steps=6, seed=0,
                                                    dtype=torch.float64).x)
    torch.testing.assert_close(rk4_x, revsde.sample(model, (2, 2), sampler="ode_rk4", steps=3, grid="karras",
                                                    seed=1, dtype=torch.float64).x)


def test_run_batched_with_mu_and_cond():
    sde = revsde.sde.MRSDE()
    model = exact_model(gaussian(), sde)
    seen = []
    net = model.net
    model.net = lambda x, t, **cond: seen.append(sorted(cond)) or net(x, t, **cond)
    mus = [torch.full((2, 2), 0.5, dtype=torch.float64), torch.full((3, 2), -1.0, dtype=torch.float64)]
    runs = []
    for mu, b, s in zip(mus, (2, 3), (0, 1)):
        smp = revsde.samplers.get("euler_maruyama")
        t = revsde.grids.resolve("uniform_t", sde, 20, b, None)
        gens = revsde.noise.generator_from_seed(s, b)
        x = sde.prior_sample((b, 2), mu, generator=gens, dtype=torch.float64)
        runs.append(smp.run(sde, t, x, mu, revsde.GaussianNoise((b, 2), gens, dtype=torch.float64)))
    got = run_batched(model, runs, mu=mus)
    for mu, b, s, x in zip(mus, (2, 3), (0, 1), got):
        alone = revsde.sample(model, (b, 2), sampler="euler_maruyama", steps=20, mu=mu, seed=s, dtype=torch.float64)
        torch.testing.assert_close(x, alone.x)
    assert seen[0] == ["mu"]


def test_run_batched_refuses_what_cannot_share_a_call():
    sde = revsde.sde.VPSDE()
    model = exact_model(gaussian(), sde)
    with pytest.raises(ValueError, match="at least one generator"):
        run_batched(model, [])
    with pytest.raises(ValueError, match="a list of 1 for 2 generators"):
        run_batched(model, [start(sde, "mrs", 3, 1, 0), start(sde, "mrs", 3, 1, 1)], mu=[None])
    smp = revsde.samplers.get("mrs")
    t = revsde.grids.resolve("logsnr", sde, 3, 1, None)
    other = smp.run(sde, t, torch.zeros(1, 3, dtype=torch.float64), None, None)
    with pytest.raises(ValueError, match="share the state's shape"):
        run_batched(model, [start(sde, "mrs", 3, 1, 0), other])


def test_run_batched_reports_a_non_finite_state():
    sde = revsde.sde.VPSDE()
    model = revsde.ScoreModel(lambda x, t: torch.full_like(x, float("nan")), sde)
    with pytest.raises(NonFiniteStateError, match="sampler 'generator 0': the state became NaN/Inf at step 0"):
        run_batched(model, [start(sde, "ode_euler", 3, 1, 0), start(sde, "ode_euler", 3, 1, 1)])


# --- classifier-free guidance --------------------------------------------------------------------------
def labelled_net(x, t, labels):
    """ε of a toy class-conditional model: a label-dependent offset."""
    return 0.1 * x + labels[:, None].to(x.dtype)


def test_guidance_is_one_batched_call_combining_both_branches():
    sde = revsde.sde.VPSDE()
    counting = Counting(labelled_net)
    guided = revsde.ScoreModel(counting, sde, guidance_scale=3.0, uncond={"labels": torch.tensor(0.0)})
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.5, dtype=torch.float64)
    labels = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = guided(x, t, labels=labels)
    assert counting.calls == 1 and counting.rows == 8
    cond = revsde.ScoreModel(labelled_net, sde)(x, t, labels=labels).noise
    uncond = revsde.ScoreModel(labelled_net, sde)(x, t, labels=torch.zeros(4)).noise
    torch.testing.assert_close(out.noise, uncond + 3.0 * (cond - uncond))
    # w = 1 is the conditional model
    one = revsde.ScoreModel(labelled_net, sde, guidance_scale=1.0, uncond={"labels": torch.tensor(0.0)})
    torch.testing.assert_close(one(x, t, labels=labels).noise, cond)


def test_guided_sampling_runs_and_counts_one_nfe_per_call():
    sde = revsde.sde.VPSDE()
    counting = Counting(labelled_net)
    guided = revsde.ScoreModel(counting, sde, guidance_scale=2.0, uncond={"labels": torch.tensor(0.0)})
    sol = revsde.sample(guided, (3, 2), sampler="mrs", steps=8, cond={"labels": torch.ones(3)})
    assert sol.nfe == counting.calls == 8 and counting.rows == 48


@pytest.mark.parametrize("kwargs, message", [
    ({"guidance_scale": 2.0}, "needs both guidance_scale and uncond"),
    ({"uncond": {"labels": None}}, "needs both guidance_scale and uncond"),
    ({"guidance_scale": "2", "uncond": {}}, "guidance_scale must be a number"),
])
def test_guidance_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        revsde.ScoreModel(labelled_net, revsde.sde.VPSDE(), **kwargs)


def test_uncond_must_name_given_cond_keys():
    guided = revsde.ScoreModel(labelled_net, revsde.sde.VPSDE(), guidance_scale=2.0, uncond={"label": torch.tensor(0.)})
    with pytest.raises(ValueError, match=r"uncond names \['label'\]"):
        guided(torch.zeros(2, 2), 0.5, labels=torch.ones(2))


# --- the NaN guard and graphs= --------------------------------------------------------------------------
def test_finite_guard_batches_its_reads_off_cpu_and_names_the_first_bad_step():
    smp = revsde.samplers.get("ode_euler")
    guard = FiniteGuard(smp.name, "meta", every=4)  # any non-CPU device defers its reads
    assert guard.every == 4
    ok, bad = torch.zeros(2, 2), torch.full((2, 2), float("nan"))
    t = torch.full((2,), 0.25)
    guard(Step(0, ok, t), 1)
    guard(Step(1, bad, t), 2)
    guard(Step(2, bad, t), 3)  # nothing read yet: three verdicts wait on the device
    with pytest.raises(NonFiniteStateError, match=r"at step 1 \(t = 0.25, NFE 2\)"):
        guard(Step(3, ok, t), 4)
    assert FiniteGuard(smp.name, "cpu").every == 1


def test_graphs_option_on_cpu_is_a_pass_through():
    sde = revsde.sde.VPSDE()
    model = exact_model(gaussian(), sde)
    eager = revsde.sample(model, (5, 2), sampler="mrs", steps=6, graphs=False)
    graphed = revsde.sample(model, (5, 2), sampler="mrs", steps=6, graphs=True)
    torch.testing.assert_close(graphed.x, eager.x, rtol=0, atol=0)
    assert model.graphed() is model.graphed() and model.graphed().graphed() is model.graphed()
    with pytest.raises(ValueError, match="graphs must be 'auto', True or False"):
        revsde.sample(model, (1, 2), graphs="yes")
