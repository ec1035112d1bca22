"""The sampling loop's own cost per step (a free network), against diffusers' DPM-Solver++ step."""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import revsde  # noqa: E402
from revsde.apps.speed import _median_seconds  # noqa: E402
from revsde.integrations.diffusers import RevSDEScheduler  # noqa: E402

STEPS = 50
SHAPE = (1, 3, 32, 32)
OUTPUT = 0.1 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
START = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def scheduler_loop(scheduler):
    def run():
        scheduler.set_timesteps(STEPS)
        x = START
        for t in scheduler.timesteps:
            x = scheduler.step(OUTPUT, t, x).prev_sample
        return x
    return run


def sample_loop(sampler, **options):
    model = revsde.ScoreModel(lambda x, t: OUTPUT, RevSDEScheduler().sde)
    return lambda: revsde.sample(model, SHAPE, sampler=sampler, steps=STEPS, graphs=False, **options)


@pytest.fixture(scope="module")
def dpm_seconds():
    return _median_seconds(scheduler_loop(diffusers.DPMSolverMultistepScheduler()), 20)


def test_diffusers_dpm_solver_step(benchmark):
    benchmark(scheduler_loop(diffusers.DPMSolverMultistepScheduler()))


@pytest.mark.parametrize("sampler, options", [("mrs", {}), ("mrs", {"order": 3}), ("mrs", {"stochastic": True}),
                                              ("ode_euler", {}), ("euler_maruyama", {}), ("pc", {})],
                         ids=["mrs2", "mrs3", "mrs-sde", "ode_euler", "euler_maruyama", "pc"])
@pytest.mark.parametrize("path", ["sample", "scheduler"])
def test_revsde_loop(benchmark, dpm_seconds, sampler, options, path):
    if path == "sample":
        loop = sample_loop(sampler, **options)
    else:
        loop = scheduler_loop(RevSDEScheduler(sampler=sampler, timestep_spacing="linspace", **options))
    benchmark(loop)
    evals = revsde.samplers.get(sampler, **options).evals_per_step
    benchmark.extra_info["ratio_per_step_vs_dpm_solver"] = round(benchmark.stats["median"] / dpm_seconds, 3)
    benchmark.extra_info["ratio_per_nfe_vs_dpm_solver"] = round(benchmark.stats["median"] / evals / dpm_seconds, 3)
