"""``unipc`` against diffusers' ``UniPCMultistepScheduler``: driven by ``RevSDEScheduler`` from the same
config, the same loop gives the same samples (bh1 and bh2, orders 1-3, data and noise prediction, both
timestep spacings), and ``revsde.sample`` on the scheduler's grid equals its loop."""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import revsde  # noqa: E402
from fixtures import tiny_ddpm_pipeline  # noqa: E402
from revsde.integrations.diffusers import RevSDEScheduler  # noqa: E402


def run_loop(scheduler, unet, steps: int = 10, seed: int = 3) -> torch.Tensor:
    """The DDPM-style loop (UniPC's ``step`` takes no ``generator``, so DDPMPipeline cannot drive it)."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        with torch.no_grad():
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("config, options", [
    (dict(), dict(order=2)),
    (dict(solver_order=1), dict(order=1)),
    (dict(solver_order=3), dict(order=3)),
    (dict(solver_order=3, timestep_spacing="trailing"), dict(order=3)),
    (dict(solver_type="bh1", final_sigmas_type="sigma_min"), dict(order=2, variant="bh1")),
    (dict(solver_type="bh1", solver_order=3, timestep_spacing="trailing", final_sigmas_type="sigma_min"),
     dict(order=3, variant="bh1")),
    (dict(predict_x0=False, final_sigmas_type="sigma_min"), dict(order=2, prediction="noise")),
    (dict(lower_order_final=False, solver_order=3, final_sigmas_type="sigma_min"),
     dict(order=3, lower_order_final=False)),
], ids=["bh2-2", "bh2-1", "bh2-3", "bh2-3-trailing", "bh1-2", "bh1-3-trailing", "noise-2", "3-no-lower-final"])
def test_unipc_equals_diffusers_unipc_multistep(config, options):
    """The issue's parity, at 10 steps on the tiny DDPM UNet (random weights drive |x| to ~600, where
    float32 spacing is 6e-5): equal to float32 rounding (relative 1e-5), and bh1 differs from bh2 (the option is read)."""
    pipe = tiny_ddpm_pipeline()
    uni = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config, **config)
    ours = RevSDEScheduler.from_config(uni.config, sampler="unipc", **options)
    expected, got = run_loop(uni, pipe.unet), run_loop(ours, pipe.unet)
    assert ours.sampler.options()["variant"] == options.get("variant", "bh2")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=5e-3)
    assert float((expected - expected.mean()).abs().max()) > 1  # not a constant


def test_bh1_and_bh2_differ_and_the_corrector_matters():
    pipe = tiny_ddpm_pipeline()
    config = dict(pipe.scheduler.config, final_sigmas_type="sigma_min")
    runs = {name: run_loop(RevSDEScheduler.from_config(config, sampler="unipc", **opts), pipe.unet)
            for name, opts in {"bh2": {}, "bh1": {"variant": "bh1"}, "uni-p": {"corrector": False}}.items()}
    assert float((runs["bh2"] - runs["bh1"]).abs().max()) > 1e-2
    assert float((runs["bh2"] - runs["uni-p"]).abs().max()) > 1e-2


def test_scheduler_loop_equals_revsde_sample_on_its_grid():
    """``unipc`` stepped by the scheduler is ``revsde.sample`` on the scheduler's grid (final σ_min)."""
    pipe = tiny_ddpm_pipeline()
    rev = RevSDEScheduler.from_config(pipe.scheduler.config, sampler="unipc", order=3, final_sigmas_type="sigma_min")
    got = run_loop(rev, pipe.unet, steps=7)
    model = revsde.ScoreModel(lambda x, t: pipe.unet(x, t).sample, rev.sde, prediction="noise")
    x_init = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sol = revsde.sample(model, x_init=x_init, sampler="unipc", order=3, grid=rev._grid)
    assert sol.nfe == 7
    torch.testing.assert_close(got, sol.x.float(), rtol=1e-5, atol=1e-3)
