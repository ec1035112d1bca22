"""The sampling loop's own cost per step (a free network), against diffusers' DPM-Solver++ step; on
flow-matching configs against ``FlowMatchEulerDiscreteScheduler``'s step, alone and inside a tiny
Stable Diffusion 3 pipeline (issue 22's target: RevSDEScheduler's per-step overhead in a flow pipeline
within FlowMatchEuler's + 20 %).

    python -m pytest benchmarks/test_overhead.py -k flow --benchmark-columns=median,rounds

Each flow test stores ``ratio_per_step_vs_flow_match_euler`` in ``extra_info`` (``--benchmark-json``).
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import revsde  # noqa: E402
from revsde.apps.bench.speed import _median_seconds  # noqa: E402
from revsde.integrations.diffusers import RevSDEScheduler  # noqa: E402

STEPS = 50
SHAPE = (1, 3, 32, 32)
OUTPUT = 0.1 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
START = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def scheduler_loop(scheduler, steps=None, start=None, output=None):
    """One sampling run of ``scheduler`` on a free network (a fixed output), as a callable."""
    steps, start, output = (STEPS if steps is None else steps, START if start is None else start,
                            OUTPUT if output is None else output)

    def run():
        scheduler.set_timesteps(steps)
        x = start
        for t in scheduler.timesteps:
            x = scheduler.step(output, t, x).prev_sample
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


# --- flow matching: FlowMatchEuler's step against RevSDEScheduler's -------------------------------------------
FLOW_STEPS = 28  # SD3's default
FLOW_SHAPE = (1, 16, 64, 64)  # SD3's latents of a 512 x 512 image
FLOW_OUTPUT = 0.1 * torch.randn(FLOW_SHAPE, generator=torch.Generator().manual_seed(2))
FLOW_START = torch.randn(FLOW_SHAPE, generator=torch.Generator().manual_seed(3))
FLOW_SAMPLERS = pytest.mark.parametrize("sampler, options", [("mrs", {"order": 1}), ("mrs", {}), ("ode_euler", {}),
                                                             ("mrs", {"stochastic": True})],
                                        ids=["mrs1", "mrs2", "ode_euler", "mrs-sde"])


def flow_euler():
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)


def paired_ratio(baseline, candidate, rounds: int) -> float:
    """Median time of ``candidate`` over median time of ``baseline``, the two run alternately (a shared
    machine's load then weighs on both alike)."""
    baseline(), candidate()  # warm-up
    times = {baseline: [], candidate: []}
    for _ in range(rounds):
        for fn in (baseline, candidate):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[candidate]) / statistics.median(times[baseline])


def flow_scheduler_loop(scheduler):
    return scheduler_loop(scheduler, FLOW_STEPS, FLOW_START, FLOW_OUTPUT)


def test_flow_match_euler_step(benchmark):
    benchmark(flow_scheduler_loop(flow_euler()))


@FLOW_SAMPLERS
def test_revsde_flow_scheduler_step(benchmark, sampler, options):
    """The scheduler alone (a free network): its whole per-step cost is overhead."""
    loop = flow_scheduler_loop(RevSDEScheduler.from_config(flow_euler().config, sampler=sampler, **options))
    benchmark(loop)
    ratio = paired_ratio(flow_scheduler_loop(flow_euler()), loop, 15)
    benchmark.extra_info["ratio_per_step_vs_flow_match_euler"] = round(ratio, 3)


@pytest.fixture(scope="module")
def sd3_pipe():
    from diffusers_pipelines import tiny_sd3_pipeline

    return tiny_sd3_pipeline()


def sd3_run(pipe, scheduler):
    """Denoising only: latents out (no VAE), one prompt with guidance: the pipeline's per-step loop."""
    def run():
        pipe.scheduler = scheduler
        return pipe("a photo of a red cat", num_inference_steps=FLOW_STEPS, guidance_scale=5.0, max_sequence_length=8,
                    generator=torch.Generator().manual_seed(0), output_type="latent").images
    return run


def test_flow_match_euler_in_sd3_pipeline(benchmark, sd3_pipe):
    benchmark(sd3_run(sd3_pipe, flow_euler()))


@FLOW_SAMPLERS
def test_revsde_flow_scheduler_in_sd3_pipeline(benchmark, sd3_pipe, sampler, options):
    """Inside a tiny CPU SD3 pipeline (a 1-layer transformer on 8 x 8 latents: a worst case, where the
    network costs about as little as the scheduler): every step's transformer, guidance and scheduler."""
    rev = RevSDEScheduler.from_config(flow_euler().config, sampler=sampler, **options)
    run = sd3_run(sd3_pipe, rev)
    benchmark(run)
    ratio = paired_ratio(sd3_run(sd3_pipe, flow_euler()), run, 7)
    nfe = 1 + (FLOW_STEPS - 1) * rev.order
    benchmark.extra_info["ratio_per_step_vs_flow_match_euler"] = round(ratio, 3)
    benchmark.extra_info["ratio_per_nfe_vs_flow_match_euler"] = round(ratio * FLOW_STEPS / nfe, 3)
