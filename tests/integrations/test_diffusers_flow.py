"""RevSDEScheduler on flow-matching configs (issue 22): diffusers' sigmas and timesteps reproduced for
every FlowMatch and ``use_flow_sigmas`` config, parity with FlowMatchEuler (mrs order 1), FlowMatchHeun
(ode_heun) and DPM-Solver++ with flow sigmas (mrs order 2 and 3) on a smooth stand-in network, the
scheduler loop equal to ``revsde.sample`` on RectifiedFlow for every steppable sampler, diffusers'
flow conventions (``scale_noise``, ``set_begin_index``, float timesteps), and the configs refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import revsde  # noqa: E402
from revsde.integrations.diffusers import RevSDEScheduler  # noqa: E402
from revsde.sde.flow import RectifiedFlow  # noqa: E402
from fixtures import steppable_samplers  # noqa: E402
from fixtures import SANA, STEPPABLE, WAN  # noqa: E402


SD3 = dict(shift=3.0)
FLUX = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
MU = 0.83

FLOW_MATCH_CONFIGS = {
    "default": {}, "sd3": SD3, "flux": FLUX, "flux-linear": dict(FLUX, time_shift_type="linear"),
    "terminal": dict(shift=3.0, shift_terminal=0.1), "karras": dict(shift=3.0, use_karras_sigmas=True),
    "exponential": dict(shift=3.0, use_exponential_sigmas=True), "beta": dict(shift=3.0, use_beta_sigmas=True),
    "dynamic-karras": dict(FLUX, use_karras_sigmas=True), "invert": dict(invert_sigmas=True),
}


def mu_for(config) -> dict:
    return {"mu": MU} if config.get("use_dynamic_shifting") else {}


# --- sigmas and timesteps --------------------------------------------------------------------------
@pytest.mark.parametrize("keys", FLOW_MATCH_CONFIGS.values(), ids=FLOW_MATCH_CONFIGS.keys())
@pytest.mark.parametrize("steps", [2, 7, 28])
@pytest.mark.parametrize("custom", [False, True], ids=["default-sigmas", "flux-sigmas"])
def test_flow_match_sigmas_and_timesteps_are_diffusers_bit_for_bit(keys, steps, custom):
    fm = diffusers.FlowMatchEulerDiscreteScheduler(**keys)
    rev = RevSDEScheduler.from_config(fm.config, sampler="mrs", order=1)
    assert rev.config.flow_schedule == "flow_match" and rev.config.prediction_type == "flow_prediction"
    assert isinstance(rev.sde, RectifiedFlow) and rev.alphas_cumprod is None
    sigmas = np.linspace(1.0, 1 / steps, steps) if custom else None  # what FluxPipeline passes
    fm.set_timesteps(steps, sigmas=sigmas, **mu_for(keys))
    rev.set_timesteps(steps, sigmas=sigmas, **mu_for(keys))
    assert rev.timesteps.dtype == torch.float32 and torch.equal(rev.timesteps, fm.timesteps)
    assert torch.equal(rev.sigmas, fm.sigmas)
    assert rev._grid[-1] == 0 and rev.num_inference_steps == steps


def test_flow_match_heun_timesteps():
    heun = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    rev = RevSDEScheduler.from_config(heun.config, sampler="ode_heun")
    heun.set_timesteps(6)
    rev.set_timesteps(6)
    assert rev.order == 2 and torch.equal(rev.timesteps, heun.timesteps)  # t0, t1, t1, …, t5, t5


MULTISTEP = [("DPMSolverMultistepScheduler", "dpm_solver", SANA),
             ("DPMSolverMultistepScheduler", "dpm_solver", dict(SANA, use_dynamic_shifting=True)),
             ("DPMSolverSinglestepScheduler", "dpm_solver", SANA), ("DEISMultistepScheduler", "dpm_solver", SANA),
             ("SASolverScheduler", "dpm_solver", SANA), ("UniPCMultistepScheduler", "unipc", WAN),
             ("UniPCMultistepScheduler", "unipc", dict(WAN, flow_shift=1.0)),
             ("UniPCMultistepScheduler", "unipc", dict(WAN, use_dynamic_shifting=True)),
             ("UniPCMultistepScheduler", "unipc", dict(WAN, shift_terminal=0.2)),
             ("UniPCMultistepScheduler", "unipc", dict(WAN, use_karras_sigmas=True))]


@pytest.mark.parametrize("source, family, keys", MULTISTEP,
                         ids=["dpm", "dpm-mu", "dpm-single", "deis", "sa-solver", "unipc", "unipc-1", "unipc-mu",
                              "unipc-terminal", "unipc-karras"])
@pytest.mark.parametrize("steps", [2, 9, 30])
def test_use_flow_sigmas_configs_reproduce_their_sigmas_and_integer_timesteps(source, family, keys, steps):
    """The multistep solvers' flow sigmas (each family its own), and the truncated integer timesteps
    their network sees; every grid ends at t = 0."""
    scheduler = getattr(diffusers, source)(**keys)
    rev = RevSDEScheduler.from_config(scheduler.config, sampler="mrs")
    assert rev.config.flow_schedule == family and isinstance(rev.sde, RectifiedFlow)
    scheduler.set_timesteps(steps, **mu_for(keys))
    rev.set_timesteps(steps, **mu_for(keys))
    assert rev.timesteps.dtype == torch.int64 and torch.equal(rev.timesteps, scheduler.timesteps)
    torch.testing.assert_close(rev._grid[:-1], scheduler.sigmas[:steps].double(), rtol=1e-6, atol=0)
    assert rev._grid[-1] == 0


def test_custom_timesteps_are_evaluated_as_given():
    """diffusers shifts the sigmas of custom timesteps but evaluates the network at the timesteps as
    given (and warns); here the grid is the timesteps' own σ."""
    rev = RevSDEScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(**SD3).config)
    rev.set_timesteps(timesteps=[1000.0, 750.0, 400.0, 100.0])
    assert rev.timesteps.tolist() == [1000.0, 750.0, 400.0, 100.0]
    assert rev._grid.tolist() == [1.0, 0.75, 0.4000000059604645, 0.10000000149011612, 0.0]  # float32 σ
    with pytest.raises(ValueError, match="not both"):
        rev.set_timesteps(sigmas=[1.0, 0.5], timesteps=[1000, 500])
    with pytest.raises(ValueError, match=r"num_inference_steps \(3\) must equal"):
        rev.set_timesteps(3, sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="not strictly decreasing"):
        rev.set_timesteps(sigmas=[0.5, 1.0])


# --- configs ---------------------------------------------------------------------------------------
def test_save_and_reload_keeps_the_flow_schedule(tmp_path):
    fm = diffusers.FlowMatchEulerDiscreteScheduler(**FLUX)
    rev = RevSDEScheduler.from_config(fm.config, sampler="mrs", order=2)
    rev.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["flow_schedule"] == "flow_match" and saved["use_dynamic_shifting"] is True
    assert saved["base_shift"] == 0.5  # the pipeline reads it from the config to compute mu
    back = RevSDEScheduler.from_pretrained(tmp_path)
    for s in (rev, back):
        s.set_timesteps(10, mu=MU)
    assert torch.equal(back.timesteps, rev.timesteps)
    # and back to the FlowMatch scheduler, its keys intact
    again = diffusers.FlowMatchEulerDiscreteScheduler.from_config(rev.config)
    assert again.config.use_dynamic_shifting is True and again.config.max_shift == 1.15
    again.set_timesteps(10, mu=MU)
    assert torch.equal(again.timesteps, rev.timesteps)


def test_direct_construction_and_pipeline_keys():
    rev = RevSDEScheduler(flow_schedule="flow_match", shift=3.0, prediction_type="flow_prediction", sampler="ode_euler")
    fm = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    rev.set_timesteps(5)
    fm.set_timesteps(5)
    assert torch.equal(rev.timesteps, fm.timesteps)
    assert rev.init_noise_sigma == 1.0 and len(rev) == 1000
    assert diffusers.FlowMatchEulerDiscreteScheduler in rev.compatibles
    rev.set_timesteps(5, mu=2.0)  # Flux passes mu whatever the config: ignored without dynamic shifting
    assert torch.equal(rev.timesteps, fm.timesteps)


@pytest.mark.parametrize("make, message", [
    (lambda: diffusers.EDMEulerScheduler().config, "neither a DDPM-style training table"),
    (lambda: diffusers.ScoreSdeVeScheduler().config, "neither a DDPM-style"),
    (lambda: diffusers.CMStochasticIterativeScheduler().config, "neither a DDPM-style"),
    (lambda: {**diffusers.FlowMatchEulerDiscreteScheduler().config, "_class_name": "FlowMapEulerDiscreteScheduler"},
     "FlowMapEulerDiscreteScheduler is a flow scheduler whose sigmas RevSDEScheduler does not reproduce"),
    (lambda: diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction").config,
     "flow_prediction' without use_flow_sigmas"),
    (lambda: diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, use_karras_sigmas=True).config,
     "use_flow_sigmas=True and use_karras_sigmas=True"),
    (lambda: diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, use_exponential_sigmas=True).config,
     "use_exponential_sigmas=True"),
    (lambda: diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="v_prediction").config,
     "prediction_type in .* for a flow schedule"),
])
def test_configs_that_are_neither_ddpm_style_nor_a_reproduced_flow_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        RevSDEScheduler.from_config(make(), sampler="mrs")


def test_saved_foreign_config_names_its_class(tmp_path):
    diffusers.EDMEulerScheduler().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"EDMEulerScheduler \(keys .*sigma_data.*\) is neither"):
        RevSDEScheduler.from_pretrained(tmp_path)


def test_stochastic_sampling_needs_a_named_sampler():
    config = diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True).config
    with pytest.raises(ValueError, match="stochastic_sampling=True, which re-noises"):
        RevSDEScheduler.from_config(config)
    rev = RevSDEScheduler.from_config(config, sampler="mrs", stochastic=True)
    assert rev.sampler.stochastic and rev.config.stochastic_sampling is True  # kept for the way back


@pytest.mark.parametrize("kwargs, message", [
    (dict(shift=3.0), "shift: flow-matching keys, which need a flow_schedule"),
    (dict(flow_schedule="flux"), "flow_schedule must be None or one of flow_match, dpm_solver, unipc"),
    (dict(flow_schedule="flow_match", flow_shift=3.0), "flow_schedule='flow_match' has no flow_shift"),
    (dict(flow_schedule="unipc", shift=3.0), "flow_schedule='unipc' has no shift"),
    (dict(flow_schedule="flow_match", prediction_type="v_prediction"), "for a flow schedule"),
    (dict(flow_schedule="flow_match", shift=-1.0), "shift must be a positive number"),
    (dict(flow_schedule="flow_match", shift_terminal=1.5), r"shift_terminal must be None or a number in \(0, 1\)"),
    (dict(flow_schedule="flow_match", use_karras_sigmas=True, use_beta_sigmas=True), "at most one of"),
    (dict(flow_schedule="flow_match", time_shift_type="cubic"), "time_shift_type must be one of"),
    (dict(flow_schedule="flow_match", grid="logsnr"), "grid='discrete'"),
])
def test_bad_flow_keys_are_refused(kwargs, message):
    if "flow_schedule" in kwargs:
        kwargs = {"prediction_type": "flow_prediction", **kwargs}
    with pytest.raises(ValueError, match=message):
        RevSDEScheduler(**kwargs)


def test_dynamic_shifting_needs_mu_and_ddpm_tables_take_no_sigmas():
    rev = RevSDEScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(**FLUX).config)
    with pytest.raises(ValueError, match="pass the pipeline's mu"):
        rev.set_timesteps(4)
    with pytest.raises(ValueError, match="sigmas and mu apply to flow-matching schedules"):
        RevSDEScheduler().set_timesteps(4, sigmas=[1.0, 0.5, 0.2, 0.1])
    with pytest.raises(ValueError, match="scale_noise is flow matching's forward process"):
        RevSDEScheduler().scale_noise(torch.zeros(1, 2), 999, torch.zeros(1, 2))


# --- stepping: parity with diffusers on a smooth network ------------------------------------------------
def velocity_net(seed: int = 0):
    """A smooth stand-in flow network of (x, timestep in model units): not a true flow, but every
    scheduler must integrate the same ODE through it."""
    weight = 0.3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))

    def net(x, timestep):
        s = torch.as_tensor(timestep, dtype=x.dtype) / 1000
        s = s.reshape(-1, *[1] * (x.ndim - 1)) if s.ndim else s
        return x @ weight.to(x.dtype) + torch.sin(3 * s) * x - 0.5 * torch.cos(x)
    return net


def loop(scheduler, x, steps, net=None, **set_kwargs):
    net = net or velocity_net()
    scheduler.set_timesteps(steps, **set_kwargs)
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t), t, x).prev_sample
    return x


X_INIT = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("keys", FLOW_MATCH_CONFIGS.values(), ids=FLOW_MATCH_CONFIGS.keys())
@pytest.mark.parametrize("steps", [1, 4, 25])
def test_mrs_order_1_is_flow_match_euler(keys, steps):
    if keys.get("shift_terminal") and steps == 1:
        pytest.skip("one step cannot end at shift_terminal (diffusers divides by zero)")
    fm = diffusers.FlowMatchEulerDiscreteScheduler(**keys)
    rev = RevSDEScheduler.from_config(fm.config, sampler="mrs", order=1)
    expected = loop(fm, X_INIT, steps, **mu_for(keys))
    got = loop(rev, X_INIT, steps, **mu_for(keys))
    assert rev.nfe == steps
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6)


def test_ode_heun_is_flow_match_heun():
    heun = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    rev = RevSDEScheduler.from_config(heun.config, sampler="ode_heun")
    torch.testing.assert_close(loop(rev, X_INIT, 8), loop(heun, X_INIT, 8), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("dpm_keys, options", [
    (dict(), dict(order=2, second_order="midpoint")),
    (dict(solver_type="heun"), dict(order=2)),
    (dict(solver_order=3), dict(order=3, second_order="midpoint", third_order="dpm-solver")),
    (dict(use_dynamic_shifting=True), dict(order=2, second_order="midpoint")),
], ids=["2M-midpoint", "2M-heun", "3M", "2M-mu"])
@pytest.mark.parametrize("steps", [1, 6, 20])
def test_mrs_is_dpm_solver_multistep_with_flow_sigmas(dpm_keys, options, steps):
    dpm = diffusers.DPMSolverMultistepScheduler(**SANA, **dpm_keys)
    rev = RevSDEScheduler.from_config(dpm.config, sampler="mrs", **options)
    torch.testing.assert_close(loop(rev, X_INIT, steps, **mu_for(dpm_keys)),
                               loop(dpm, X_INIT, steps, **mu_for(dpm_keys)), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("sampler", STEPPABLE)
@pytest.mark.parametrize("final", ["sigma_min", "zero"])
def test_scheduler_loop_equals_revsde_sample_on_rectified_flow(sampler, final):
    """Stepping through ``timesteps`` is ``revsde.sample`` with a flow ``ScoreModel`` on the same grid and
    generators (``"zero"``: n − 1 steps, then x̂₀ at the last time), for every steppable sampler."""
    rev = RevSDEScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(**SD3).config, sampler=sampler,
                                      final_sigmas_type=final)
    net = velocity_net()
    gens = lambda: [torch.Generator().manual_seed(10 + b) for b in range(X_INIT.shape[0])]
    x, generators = X_INIT.double(), gens()
    rev.set_timesteps(6)
    for t in rev.timesteps:
        x = rev.step(net(x, t), t, x, generator=generators).prev_sample
    assert rev.nfe == len(rev.timesteps)
    model = revsde.ScoreModel(net, rev.sde, prediction="flow")
    grid = rev._grid if final == "sigma_min" else rev._grid[:-1]
    sol = revsde.sample(model, x_init=X_INIT.double(), sampler=sampler, grid=grid, generator=gens())
    if final == "zero":
        if revsde.samplers.get(sampler).kind == "sde" or sampler in ("mrs", "unipc"):
            pytest.skip("n − 1 steps of a stochastic sampler end noise-free, and mrs and unipc lower their order "
                        "near the end")
        expected = model(sol.x, grid[-1].expand(X_INIT.shape[0])).data
    else:
        expected = sol.x
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)


def test_invert_sigmas_flips_the_networks_time_and_sign():
    """Mochi's convention: timesteps (1 − σ)·N and an output of −flow; mrs order 1 is still FlowMatch's Euler."""
    fm = diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    rev = RevSDEScheduler.from_config(fm.config, sampler="mrs", order=1)
    rev.set_timesteps(5)
    assert float(rev.timesteps[0]) == 0.0 and float(rev.sigmas[-1]) == 1.0
    torch.testing.assert_close(loop(rev, X_INIT, 5), loop(fm, X_INIT, 5), rtol=1e-5, atol=2e-6)


# --- diffusers' flow conventions ------------------------------------------------------------------------
def test_scale_noise_and_begin_index_follow_flow_match():
    """img2img: σ of timesteps[begin_index] before the run; inpainting: σ of the next evaluation during it."""
    fm = diffusers.FlowMatchEulerDiscreteScheduler(**SD3)
    rev = RevSDEScheduler.from_config(fm.config, sampler="mrs", order=1)
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    for s in (fm, rev):
        s.set_timesteps(10)
        s.set_begin_index(4)
    t_start = fm.timesteps[4:5].repeat(3)
    noised = rev.scale_noise(x0, t_start, noise)
    torch.testing.assert_close(noised, fm.scale_noise(x0, t_start, noise), rtol=0, atol=0)
    torch.testing.assert_close(rev.add_noise(x0, noise, t_start), noised, rtol=0, atol=0)
    net = velocity_net()
    runs = []
    for s in (fm, rev):
        x = noised
        for i, t in enumerate(s.timesteps[4:]):
            x = s.step(net(x, t), t, x).prev_sample
            if i == 1:  # mid-run, as SD3 inpainting re-noises the known region
                runs.append(s.scale_noise(x0, s.timesteps[4 + i + 1:4 + i + 2], noise))
        runs.append(x)
    torch.testing.assert_close(runs[2], runs[0], rtol=0, atol=0)
    torch.testing.assert_close(runs[3], runs[1], rtol=1e-5, atol=2e-6)
    # without a begin index, each timestep is looked up (or read as σ · N)
    rev.set_timesteps(10)
    t = torch.stack([rev.timesteps[2], torch.tensor(500.0)])
    torch.testing.assert_close(rev.scale_noise(x0[:2], t, noise[:2]),
                               torch.stack([rev.sigmas[2], torch.tensor(0.5)])[:, None] * (noise[:2] - x0[:2]) + x0[:2])


def test_step_takes_float_tensor_timesteps_and_checks_them():
    rev = RevSDEScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(**SD3).config, sampler="mrs")
    rev.set_timesteps(4)
    net = velocity_net()
    x = X_INIT
    t0 = rev.timesteps[0]
    x = rev.step(net(x, t0), t0.reshape(()), x).prev_sample
    with pytest.raises(ValueError, match="got timestep 1000 where the sampler evaluates at"):
        rev.step(net(x, t0), t0, x)
