"""RevSDEScheduler: the diffusers protocol, inside real (tiny, offline) pipelines, and parity with
``revsde.sample`` and with diffusers' own DPM-Solver++."""
from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import revsde  # noqa: E402
from revsde.integrations.diffusers import RevSDEScheduler, discrete_timesteps  # noqa: E402

from fixtures import count_unet_calls, tiny_ddpm_pipeline, tiny_sd_pipeline  # noqa: E402
from fixtures import gaussian  # noqa: E402
from fixtures import steppable_samplers  # noqa: E402

SD_KEYS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
               timestep_spacing="leading")
SOURCE_SCHEDULERS = ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                     "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler",
                     "LMSDiscreteScheduler"]


STEPPABLE = steppable_samplers()


def test_steppable_samplers_are_all_but_the_adaptive_ones():
    # adaptive, levels chosen at run time, or going back up the grid (restart)
    assert set(revsde.samplers.available()) - set(STEPPABLE) == {"ode_rk45", "torchsde", "dmcmc", "restart"}


# --- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", SOURCE_SCHEDULERS)
@pytest.mark.parametrize("keys", [{}, SD_KEYS, {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}],
                         ids=["default", "sd", "cosine-v"])
def test_from_config_of_diffusers_schedulers(source, keys):
    original = getattr(diffusers, source)(**keys)
    rev = RevSDEScheduler.from_config(original.config, sampler="mrs", order=2)
    assert rev.config.sampler == "mrs" and rev.config.order == 2
    assert rev.sampler.solver_order == 2
    assert rev.config.prediction_type == original.config.prediction_type
    assert rev.config.timestep_spacing == original.config.timestep_spacing
    # the same training table, bit for bit
    assert torch.equal(rev.alphas_cumprod, original.alphas_cumprod)


def test_save_pretrained_round_trip(tmp_path):
    rev = RevSDEScheduler.from_config(diffusers.DDIMScheduler(**SD_KEYS).config, sampler="pc", corrector="ald",
                                      snr=0.2, grid="karras", noise="brownian")
    rev.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "RevSDEScheduler" and saved["sampler"] == "pc" and saved["snr"] == 0.2
    back = RevSDEScheduler.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
    assert public(back.config) == public(rev.config)
    assert back.sampler.options() == rev.sampler.options()
    rev.set_timesteps(7)
    back.set_timesteps(7)
    assert torch.equal(rev.timesteps, back.timesteps)


def test_naming_another_sampler_drops_the_old_samplers_options():
    mrs = RevSDEScheduler(sampler="mrs", order=3, third_order="dpm-solver", beta_schedule="scaled_linear")
    pc = RevSDEScheduler.from_config(mrs.config, sampler="pc", snr=0.1)
    assert pc.config.order is None and pc.sampler.snr == 0.1
    assert pc.config.beta_schedule == "scaled_linear"
    with pytest.raises(ValueError, match="sampler 'pc' has no option 'order'"):
        RevSDEScheduler(sampler="pc", order=2)


def test_back_to_a_diffusers_scheduler_keeps_its_hidden_config():
    ddpm = diffusers.DDPMScheduler(variance_type="fixed_large", clip_sample=False, beta_schedule="scaled_linear")
    rev = RevSDEScheduler.from_config(ddpm.config, sampler="ode_heun")
    again = diffusers.DDPMScheduler.from_config(rev.config)
    assert again.config.variance_type == "fixed_large" and again.config.clip_sample is False
    assert again.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("kwargs, message", [
    (dict(sampler="ode_rk45"), "chooses its steps as it goes"),
    (dict(sampler="torchsde"), "chooses its steps as it goes"),
    (dict(sampler="mrs", warmup="midpoint", order=3), "cannot drive this sampler.*midpoint"),
    (dict(sampler="nope"), "unknown sampler 'nope'"),
    (dict(grid="cosine"), "grid must be 'discrete' or one of"),
    (dict(prediction_type="flow_prediction"), "prediction_type in"),
    (dict(final_sigmas_type="sigma_max"), "final_sigmas_type in"),
    (dict(timestep_spacing="uniform"), "timestep_spacing in"),
    (dict(beta_schedule="sigmoid"), "beta_schedule must be one of"),
    (dict(noise="pink"), "noise in"),
])
def test_bad_configs_are_refused_with_the_valid_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RevSDEScheduler(**kwargs)


# --- timesteps -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing, offset", [("linspace", 0), ("leading", 1), ("trailing", 0)])
@pytest.mark.parametrize("n", [1, 7, 25, 50, 999])
def test_discrete_grid_reproduces_dpm_solver_timesteps(spacing, offset, n):
    dpm = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing, steps_offset=offset)
    rev = RevSDEScheduler(timestep_spacing=spacing, steps_offset=offset)
    if n == 999 and spacing == "leading":  # offset 1 puts the first timestep at 1000, past the table
        with pytest.raises(ValueError, match="not distinct"):
            rev.set_timesteps(n)
        return
    dpm.set_timesteps(n)
    rev.set_timesteps(n)
    assert rev.timesteps.dtype == torch.int64
    assert torch.equal(rev.timesteps, dpm.timesteps)
    # trailing with 999 steps ends on index 0: its x̂₀ is the result (final_sigmas_type="zero" only)
    assert torch.equal(torch.from_numpy(discrete_timesteps(1000, n, spacing, offset, allow_zero=True)),
                       dpm.timesteps)


def test_multi_evaluation_samplers_repeat_timesteps_like_diffusers_heun():
    rev = RevSDEScheduler(sampler="ode_heun")
    assert rev.order == 2
    rev.set_timesteps(4)
    t = [999, 749, 500, 250]
    # Heun: t_i then t_{i+1} each step; the last step goes to σ = 0 with its first evaluation only
    assert rev.timesteps.tolist() == [t[0], t[1], t[1], t[2], t[2], t[3], t[3]]
    pc = RevSDEScheduler(sampler="pc", corrector_steps=2, final_sigmas_type="sigma_min")
    assert pc.order == 3
    pc.set_timesteps(3)
    assert pc.timesteps.tolist() == [999] * 3 + [666] * 3 + [333] * 3


@pytest.mark.parametrize("grid", ["logsnr", "karras", "uniform_t", "quadratic"])
def test_continuous_grids_span_the_table(grid):
    rev = RevSDEScheduler(grid=grid, final_sigmas_type="sigma_min")
    rev.set_timesteps(10)
    assert rev.timesteps.shape == (10,) and rev.timesteps.dtype == torch.float32
    assert float(rev.timesteps[0]) == pytest.approx(999.0)
    assert bool((rev.timesteps[1:] < rev.timesteps[:-1]).all()) and float(rev.timesteps[-1]) > 0


def test_custom_timesteps_and_device():
    rev = RevSDEScheduler(sampler="ode_euler")
    rev.set_timesteps(timesteps=[900, 500, 120], device="cpu")
    assert rev.timesteps.tolist() == [900, 500, 120] and rev.num_inference_steps == 3
    with pytest.raises(ValueError, match="strictly decreasing"):
        rev.set_timesteps(timesteps=[500, 900])
    with pytest.raises(ValueError, match="exactly one of"):
        rev.set_timesteps(5, timesteps=[3, 2])


# --- stepping with an exact model ------------------------------------------------------------------
def exact_eps(rev, mixture):
    """The exact ε-prediction of ``mixture`` at DDPM index ``timestep``, as a pipeline's network."""
    def net(x, timestep):
        t = torch.as_tensor(timestep, dtype=torch.float64).expand(x.shape[0]) / (rev.config.num_train_timesteps - 1)
        return mixture.noise(rev.sde, x.double(), t).to(x.dtype)
    return net


def loop(scheduler, net, x, generator=None, output_dtype=None, return_dict=True):
    for t in scheduler.timesteps:
        out = net(x, t)
        if output_dtype is not None:
            out = out.to(output_dtype)
        result = scheduler.step(out, t, x, generator=generator, return_dict=return_dict)
        x = result.prev_sample if return_dict else result[0]
    return x


def as_model(rev, net):
    return revsde.ScoreModel(lambda x, time: net(x, time), rev.sde, prediction="noise")


@pytest.mark.parametrize("sampler", STEPPABLE)
@pytest.mark.parametrize("final", ["sigma_min", "zero"])
def test_scheduler_loop_equals_revsde_sample(sampler, final):
    """Stepping through ``timesteps`` is ``revsde.sample`` on the same grid and generators; with
    ``final_sigmas_type="zero"`` the last step is x̂₀ of its first evaluation."""
    rev = RevSDEScheduler(sampler=sampler, final_sigmas_type=final)
    rev.set_timesteps(6)
    net = exact_eps(rev, gaussian())
    gens = lambda: [torch.Generator().manual_seed(10 + b) for b in range(5)]
    x_init = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    got = loop(rev, net, x_init, generator=gens())
    assert rev.nfe == len(rev.timesteps)
    model = as_model(rev, net)
    if final == "sigma_min":
        sol = revsde.sample(model, x_init=x_init, sampler=sampler, grid=rev._grid, generator=gens())
        expected, nfe = sol.x, sol.nfe
    else:  # one-step ODE solvers: the first n − 1 steps, then x̂₀ at t_{n−1}
        if revsde.samplers.get(sampler).kind == "sde" or sampler in ("mrs", "unipc"):
            pytest.skip("n − 1 steps of a stochastic sampler end noise-free, and mrs and unipc lower their order "
                        "near the end (test_zero_final_mrs_equals_denoise_last covers mrs)")
        sol = revsde.sample(model, x_init=x_init, sampler=sampler, grid=rev._grid[:-1], generator=gens())
        expected, nfe = model(sol.x, rev._grid[-2].expand(5)).data, sol.nfe + 1
    assert rev.nfe == nfe
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)


def test_zero_final_mrs_equals_denoise_last():
    rev = RevSDEScheduler(sampler="mrs", order=3)
    rev.set_timesteps(8)
    net = exact_eps(rev, gaussian())
    x_init = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    got = loop(rev, net, x_init)
    sol = revsde.sample(as_model(rev, net), x_init=x_init, sampler="mrs", order=3, denoise_last=True, grid=rev._grid)
    assert sol.nfe == rev.nfe == 8
    torch.testing.assert_close(got, sol.x)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_prediction_types(prediction_type):
    """x₀- and v-prediction networks give the ε-network's result (exact conversions)."""
    mixture = gaussian()
    eps_rev = RevSDEScheduler(sampler="ode_heun")
    rev = RevSDEScheduler(sampler="ode_heun", prediction_type=prediction_type)
    eps_net = exact_eps(rev, mixture)

    def net(x, timestep):
        t = torch.as_tensor(timestep, dtype=torch.float64) / 999
        a, s = rev.sde.alpha(t), rev.sde.sigma(t)
        eps = eps_net(x.double(), timestep)
        x0 = (x - s * eps) / a
        return (x0 if prediction_type == "sample" else a * eps - s * x0).to(x.dtype)

    x_init = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for s in (eps_rev, rev):
        s.set_timesteps(10)
    torch.testing.assert_close(loop(rev, net, x_init), loop(eps_rev, eps_net, x_init), rtol=1e-10, atol=1e-10)


def test_tuple_and_output_agree_and_carry_the_denoised_estimate():
    runs = []
    for return_dict in (True, False):
        rev = RevSDEScheduler(sampler="euler_maruyama")
        rev.set_timesteps(5)
        net = exact_eps(rev, gaussian())
        x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
        out = rev.step(net(x, rev.timesteps[0]), rev.timesteps[0], x, generator=torch.Generator().manual_seed(1),
                       return_dict=return_dict)
        runs.append((out.prev_sample, out.pred_original_sample) if return_dict else out)
    assert isinstance(runs[1], tuple)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)


def test_fp16_model_outputs_keep_an_fp32_state():
    """The pipeline's latents and the network are fp16; the solver state stays fp32 throughout."""
    mixture = gaussian()
    rev32, rev16 = RevSDEScheduler(sampler="mrs", order=3), RevSDEScheduler(sampler="mrs", order=3)
    net = exact_eps(rev32, mixture)
    x_init = torch.randn(256, 2, generator=torch.Generator().manual_seed(3))
    rev32.set_timesteps(20)
    rev16.set_timesteps(20)
    reference = loop(rev32, net, x_init)
    x = x_init.half()
    for t in rev16.timesteps:
        out = rev16.step(net(x, t).half(), t, x)
        assert rev16._done or rev16._query.x.dtype == torch.float32  # the state the sampler holds
        assert out.prev_sample.dtype == torch.float16
        x = out.prev_sample
    err16 = (x.float() - reference).abs().max()
    # an fp16 state would accumulate ~20 roundings of 2^-11; fp32 keeps only the outputs' rounding
    assert err16 < 5e-3
    assert (x.float() - reference).abs().mean() < 1e-3


def test_generator_list_gives_each_sample_its_own_noise():
    mixture = gaussian()
    runs = []
    for batch in ([0, 1, 2], [1]):
        rev = RevSDEScheduler(sampler="euler_maruyama")
        rev.set_timesteps(12)
        net = exact_eps(rev, mixture)
        x = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(100 + b)) for b in batch])
        runs.append(loop(rev, net, x, generator=[torch.Generator().manual_seed(b) for b in batch]))
    torch.testing.assert_close(runs[0][1:2], runs[1], rtol=0, atol=0)
    rev = RevSDEScheduler(sampler="euler_maruyama")
    rev.set_timesteps(3)
    with pytest.raises(ValueError, match="list of 2 for a batch of 3"):
        rev.step(torch.zeros(3, 2), rev.timesteps[0], torch.zeros(3, 2), generator=[torch.Generator()] * 2)


def test_no_generator_follows_the_global_seed():
    def run():
        rev = RevSDEScheduler(sampler="ancestral")
        rev.set_timesteps(5)
        return loop(rev, exact_eps(rev, gaussian()), torch.ones(2, 2))
    torch.manual_seed(5)
    a = run()
    torch.manual_seed(5)
    torch.testing.assert_close(run(), a, rtol=0, atol=0)


@pytest.mark.parametrize("noise", ["gaussian", "brownian"])
def test_stochastic_runs_are_reproducible(noise):
    outs = []
    for _ in range(2):
        rev = RevSDEScheduler(sampler="mrs", stochastic=True, noise=noise)
        rev.set_timesteps(6)
        outs.append(loop(rev, exact_eps(rev, gaussian()), torch.ones(3, 2), generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_begin_index_and_add_noise_run_the_tail_of_the_grid():
    """img2img: noise x₀ to timesteps[k·order] with add_noise, then step from there."""
    mixture = gaussian()
    rev = RevSDEScheduler(sampler="ode_heun", final_sigmas_type="sigma_min")
    rev.set_timesteps(8)
    start = 3 * rev.order
    rev.set_begin_index(start)
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    t_start = rev.timesteps[start:start + 1].repeat(4)
    x = rev.add_noise(x0, eps, t_start)
    a, s = rev.sde.alpha(rev._grid[3]), rev.sde.sigma(rev._grid[3])
    torch.testing.assert_close(x, (a * x0 + s * eps).float())
    net = exact_eps(rev, mixture)
    for t in rev.timesteps[start:]:
        x = rev.step(net(x, t), t, x).prev_sample
    sol = revsde.sample(as_model(rev, net), x_init=rev.add_noise(x0, eps, t_start), sampler="ode_heun",
                        grid=rev._grid[3:])
    torch.testing.assert_close(x, sol.x)
    torch.testing.assert_close(rev.get_velocity(x0, eps, t_start), (a * eps - s * x0).float())


def test_misuse_is_reported():
    rev = RevSDEScheduler(sampler="mrs")
    with pytest.raises(ValueError, match="call set_timesteps"):
        rev.step(torch.zeros(2, 2), 999, torch.zeros(2, 2))
    rev.set_timesteps(3)
    net = exact_eps(rev, gaussian())
    x = torch.ones(2, 2)
    x = rev.step(net(x, 999), 999, x).prev_sample
    with pytest.raises(ValueError, match="got timestep 999 where the sampler evaluates at 666"):
        rev.step(net(x, 999), 999, x)
    with pytest.raises(ValueError, match="differs from the prev_sample it returned"):
        rev.step(net(x, 666), 666, x + 1)
    for t in rev.timesteps[1:]:
        x = rev.step(net(x, t), t, x).prev_sample
    with pytest.raises(ValueError, match="this run has ended"):
        rev.step(net(x, 333), 333, x)
    rev.set_timesteps(3)  # a new run
    assert rev.step(net(x, 999), 999, x).prev_sample.shape == x.shape


# --- inside pipelines ------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", STEPPABLE)
def test_every_steppable_sampler_runs_in_ddpm_pipeline(sampler):
    pipe = tiny_ddpm_pipeline()
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler=sampler)
    with count_unet_calls(pipe) as calls:
        images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (2, 16, 16, 3) and bool(torch.isfinite(torch.from_numpy(images)).all())
    assert calls.calls == len(pipe.scheduler.timesteps) == pipe.scheduler.nfe


@pytest.mark.parametrize("sampler", STEPPABLE)
def test_every_steppable_sampler_runs_in_stable_diffusion_pipeline(sampler):
    pipe = tiny_sd_pipeline()
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler=sampler)
    with count_unet_calls(pipe) as calls:
        images = pipe(["a photo of a red cat", "a blue house"], num_inference_steps=3, guidance_scale=7.5,
                      generator=[torch.Generator().manual_seed(s) for s in (0, 1)], output_type="np").images
    assert images.shape == (2, 16, 16, 3) and bool(torch.isfinite(torch.from_numpy(images)).all())
    assert calls.calls == len(pipe.scheduler.timesteps)


@pytest.mark.parametrize("sampler, options", [("mrs", {"order": 3}), ("pc", {}), ("euler_maruyama", {}),
                                              ("ode_rk4", {})])
def test_pipeline_equals_revsde_sample_on_the_same_network(sampler, options):
    pipe = tiny_ddpm_pipeline()
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler=sampler, final_sigmas_type="sigma_min",
                                                 **options)
    gens = lambda: [torch.Generator().manual_seed(7 + b) for b in range(3)]
    images = pipe(batch_size=3, num_inference_steps=5, generator=gens(), output_type="pt").images
    model = revsde.ScoreModel(lambda x, t: pipe.unet(x, t).sample, pipe.scheduler.sde, prediction="noise")
    with torch.no_grad():
        sol = revsde.sample(model, (3, 3, 16, 16), sampler=sampler, grid=pipe.scheduler._grid, generator=gens(),
                            **options)
    torch.testing.assert_close(images, (sol.x / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config, options", [
    (dict(), dict(order=2, second_order="midpoint")),
    (dict(solver_type="heun"), dict(order=2)),
    (dict(solver_order=3), dict(order=3, second_order="midpoint", third_order="dpm-solver")),
    (dict(timestep_spacing="trailing", solver_order=3, solver_type="heun"), dict(order=3, third_order="dpm-solver")),
    (dict(algorithm_type="sde-dpmsolver++"), dict(order=2, second_order="midpoint", stochastic=True)),
], ids=["2M-midpoint", "2M-heun", "3M", "3M-heun-trailing", "sde-2M"])
def test_ddpm_pipeline_matches_dpm_solver_multistep(config, options):
    """The issue's parity: `mrs` (data prediction) in DDPMPipeline gives DPMSolverMultistepScheduler's
    images (dpmsolver++, final σ = 0, lower_order_final) — the SDE variant draw for draw."""
    pipe = tiny_ddpm_pipeline()
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, **config)
    results = []
    for scheduler in (dpm, RevSDEScheduler.from_config(dpm.config, sampler="mrs", **options)):
        pipe.scheduler = scheduler
        results.append(pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(3),
                            output_type="pt").images)
    assert float((results[0] - results[0].mean()).abs().max()) > 0.05  # not a constant image
    # the untrained UNet drives the state to |x| ~ 600 before the clamp: float32 there is ~6e-5
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-4)


def test_pipeline_save_and_reload_keeps_the_scheduler(tmp_path):
    """In this process revsde.integrations.diffusers is imported, which is what diffusers' loader needs; a
    fresh process loads with ``load_pipeline`` (test_diffusers_configs.py)."""
    pipe = tiny_ddpm_pipeline()
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler="pc", snr=0.12, grid="logsnr")
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["revsde.integrations.diffusers", "RevSDEScheduler"]
    back = diffusers.DDPMPipeline.from_pretrained(tmp_path, local_files_only=True)
    back.set_progress_bar_config(disable=True)
    assert isinstance(back.scheduler, RevSDEScheduler) and back.scheduler.sampler.snr == 0.12
    run = lambda p: p(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="pt").images
    torch.testing.assert_close(run(back), run(pipe), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", ["ddpm", "sd"])
def test_graph_unet_keeps_the_pipeline_output(build):
    """``graph_unet`` swaps the UNet's forward for the graphed path; off CUDA the images are the same
    bit for bit (on CUDA: to float tolerance, tests/core/test_graphs.py)."""
    from revsde.integrations.diffusers import graph_unet

    def images(graphed):
        pipe = tiny_ddpm_pipeline() if build == "ddpm" else tiny_sd_pipeline()
        pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler="mrs")
        if graphed:
            assert graph_unet(pipe.unet) is pipe.unet and graph_unet(pipe.unet) is pipe.unet
            assert pipe.unet.revsde_graphed.captures == 0
        kwargs = {"batch_size": 2} if build == "ddpm" else {"prompt": ["a red cat", "a tree"]}
        return pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt",
                    **kwargs).images
    torch.testing.assert_close(images(True), images(False), rtol=0, atol=0)
