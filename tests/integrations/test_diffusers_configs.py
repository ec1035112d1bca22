"""RevSDEScheduler with the configurations real pipelines hand it (issue 21, items 5–10): every
training index as a timestep, zero-terminal-SNR tables, learned variances and dynamic thresholding,
DiT's doubled guidance batch, flow-matching configs (read as rectified flow), and loading a saved
pipeline in a fresh process. Where DPMSolverMultistepScheduler runs the same configuration, the images agree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import revsde  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from revsde.integrations.diffusers import RevSDEScheduler  # noqa: E402
from revsde.integrations.mixture_unet import ExactMixtureUNet  # noqa: E402
from revsde.integrations.pipelines import UnconditionalPipeline, load_pipeline  # noqa: E402
from revsde.integrations.scheduler_config import discrete_timesteps, dynamic_threshold  # noqa: E402
from revsde.sde.vp import DiscreteVPSDE, ddpm_alphas_cumprod  # noqa: E402

from fixtures import (DIT_NULL_CLASS, count_unet_calls, tiny_ddpm_pipeline, tiny_dit_pipeline,  # noqa: E402
                                 tiny_unet2d)
from fixtures import gaussian  # noqa: E402
from fixtures import TESTS

# mrs options that make DPMSolverMultistepScheduler's dpmsolver++ (2M, midpoint) and its SDE variant
DPM_2M = dict(sampler="mrs", order=2, second_order="midpoint")
DPM_SDE_2M = dict(DPM_2M, stochastic=True)


def images(pipe, scheduler, steps=10, batch=2, seed=3):
    pipe.scheduler = scheduler
    return pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type="pt").images


def dpm_and_revsde(pipe, steps=10, **dpm_config):
    """The images of DPMSolverMultistep(``dpm_config``) and of RevSDEScheduler's mrs from its config (the
    SDE variant for ``algorithm_type="sde-dpmsolver++"``)."""
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDPMScheduler().config, **dpm_config)
    options = DPM_SDE_2M if dpm.config.algorithm_type == "sde-dpmsolver++" else DPM_2M
    return images(pipe, dpm, steps), images(pipe, RevSDEScheduler.from_config(dpm.config, **options), steps)


def exact_pipeline() -> diffusers.DDPMPipeline:
    """DDPMPipeline on the exact ε of a Gaussian mixture of 8 x 8 images: 1000 steps in about a second."""
    pipe = diffusers.DDPMPipeline(unet=ExactMixtureUNet.default(sample_size=8), scheduler=diffusers.DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- item 5: as many steps as training steps --------------------------------------------------------
@pytest.mark.parametrize("spacing, offset", [("linspace", 0), ("leading", 0), ("leading", 1), ("trailing", 0)])
def test_as_many_steps_as_training_steps_evaluate_every_index(spacing, offset):
    rev = RevSDEScheduler(timestep_spacing=spacing, steps_offset=offset)
    rev.set_timesteps(1000)
    assert rev.timesteps.tolist() == list(range(999, -1, -1)) and rev.num_inference_steps == 1000
    if (spacing, offset) != ("leading", 1):  # DDPMScheduler's leading + offset 1 starts at 1000, past the table
        ddpm = diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
        ddpm.set_timesteps(1000)
        assert torch.equal(rev.timesteps, ddpm.timesteps)
    assert discrete_timesteps(10, 10, spacing, offset, allow_zero=True).tolist() == list(range(9, -1, -1))


def test_a_timestep_at_index_0_needs_a_zero_final_sigma():
    rev = RevSDEScheduler(final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="final_sigmas_type='zero'"):
        rev.set_timesteps(1000)
    with pytest.raises(ValueError, match="final_sigmas_type='zero'"):
        rev.set_timesteps(timesteps=[999, 0])
    rev.set_timesteps(999)
    assert rev.timesteps[-1] == 1
    with pytest.raises(ValueError, match=r"integer in \[1, 1000\]"):
        RevSDEScheduler().set_timesteps(1001)


def test_the_last_evaluation_at_index_0_returns_its_denoised_estimate():
    """Custom timesteps ending at 0: the steps between them, then x̂₀ of the evaluation at index 0."""
    rev = RevSDEScheduler(sampler="ode_heun")
    rev.set_timesteps(timesteps=[999, 500, 0])
    assert rev.timesteps.tolist() == [999, 500, 500, 0, 0]
    mixture = gaussian()

    def net(x, timestep):
        t = torch.as_tensor(timestep, dtype=torch.float64).expand(x.shape[0]) / 999
        return mixture.noise(rev.sde, x.double(), t).to(x.dtype)

    x_init = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x_init
    for t in rev.timesteps:
        x = rev.step(net(x, t), t, x).prev_sample
    model = revsde.ScoreModel(net, rev.sde, prediction="noise")
    grid = torch.tensor([999.0, 500, 0], dtype=torch.float64) / 999
    sol = revsde.sample(model, x_init=x_init, sampler="ode_heun", grid=grid)
    assert rev.nfe == sol.nfe + 1 == 5
    torch.testing.assert_close(x, model(sol.x, torch.zeros(5, dtype=torch.float64)).data)


def test_ddpm_pipeline_runs_its_default_1000_steps():
    """``DDPMPipeline(...)()`` with its default 1000 steps and DDPMScheduler's config (leading spacing).
    A smoke test of the call; the next test checks the numbers."""
    pipe = exact_pipeline()
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler="mrs")
    with count_unet_calls(pipe) as calls:
        out = pipe(generator=torch.Generator().manual_seed(0), output_type="np").images
    assert calls.calls == pipe.scheduler.nfe == 1000 and np.isfinite(out).all()


@pytest.mark.parametrize("dpm_config", [{}, {"algorithm_type": "sde-dpmsolver++"}], ids=["2M", "sde-2M"])
def test_1000_steps_match_dpm_solver_multistep(dpm_config):
    """DPMSolverMultistep with trailing spacing also evaluates 999..0 (then σ = 0): the same images."""
    pipe = exact_pipeline()
    dpm, rev = dpm_and_revsde(pipe, steps=1000, timestep_spacing="trailing", **dpm_config)
    assert pipe.scheduler.timesteps.tolist() == list(range(999, -1, -1))
    torch.testing.assert_close(rev, dpm, rtol=1e-5, atol=1e-5)


# --- item 6: zero terminal SNR -----------------------------------------------------------------------
def test_zero_snr_table_starts_at_diffusers_end():
    """A linear table rescaled to zero terminal SNR: diffusers' last ᾱ (2⁻²⁴) lies above the three before
    it; λ keeps the end and every point above it, and decreases strictly."""
    table = ddpm_alphas_cumprod(rescale_betas_zero_snr=True).double()
    assert table[-1] == 2**-24 and bool((table[-4:-1] < table[-1]).all())
    with pytest.raises(ValueError, match="zero_snr=True"):
        DiscreteVPSDE(table)
    sde = DiscreteVPSDE.from_schedule(rescale_betas_zero_snr=True)
    assert torch.equal(sde.alphas_cumprod, table)
    t = torch.arange(1000, dtype=torch.float64) / 999
    lam = sde.log_snr(t)
    assert bool(torch.isfinite(lam).all()) and bool((lam[1:] < lam[:-1]).all())
    table_lam = 0.5 * torch.log(table / (1 - table))
    torch.testing.assert_close(lam[:996], table_lam[:996], rtol=0, atol=1e-12)
    torch.testing.assert_close(lam[-1], table_lam[-1], rtol=0, atol=1e-12)
    assert float(sde.alpha(t[-1])) == pytest.approx(2**-12)
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=0, atol=1e-9)
    # a table already below its end keeps every point
    sd = DiscreteVPSDE.from_schedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                     rescale_betas_zero_snr=True)
    torch.testing.assert_close(sd.log_snr(t), 0.5 * torch.log(sd.alphas_cumprod / (1 - sd.alphas_cumprod)),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_zero_snr_sigmas_are_dpm_solvers(schedule, spacing):
    dpm = diffusers.DPMSolverMultistepScheduler(rescale_betas_zero_snr=True, beta_schedule=schedule,
                                                timestep_spacing=spacing, prediction_type="v_prediction")
    rev = RevSDEScheduler.from_config(dpm.config)
    assert torch.equal(rev.alphas_cumprod, dpm.alphas_cumprod)
    for steps in (10, 25):
        dpm.set_timesteps(steps)
        rev.set_timesteps(steps)
        assert torch.equal(rev.timesteps, dpm.timesteps)
        t = rev._grid[:-1]
        torch.testing.assert_close((rev.sde.sigma(t) / rev.sde.alpha(t)).float(), dpm.sigmas[:-1], rtol=1e-6, atol=0)
        assert float(dpm.sigmas[0]) == pytest.approx(4096, rel=1e-6)


@pytest.mark.parametrize("dpm_config", [{}, {"algorithm_type": "sde-dpmsolver++"}], ids=["2M", "sde-2M"])
def test_zero_snr_pipeline_matches_dpm_solver_multistep(dpm_config):
    pipe = tiny_ddpm_pipeline()
    dpm, rev = dpm_and_revsde(pipe, rescale_betas_zero_snr=True, prediction_type="v_prediction", **dpm_config)
    assert float((dpm - dpm.mean()).abs().max()) > 0.05
    torch.testing.assert_close(rev, dpm, rtol=1e-5, atol=1e-5)


# --- item 7: learned variance, dynamic thresholding ----------------------------------------------------
@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance_output_is_split_as_dpm_solver_does(variance_type):
    """An improved-DDPM UNet outputs 2C channels (ε, then the variance): DDPMPipeline hands all of them
    to the scheduler."""
    pipe = diffusers.DDPMPipeline(unet=tiny_unet2d(out_channels=6), scheduler=diffusers.DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    dpm, rev = dpm_and_revsde(pipe, variance_type=variance_type)
    assert float((dpm - dpm.mean()).abs().max()) > 0.05
    torch.testing.assert_close(rev, dpm, rtol=1e-5, atol=1e-4)
    pipe.scheduler = RevSDEScheduler(variance_type=variance_type)
    pipe.scheduler.set_timesteps(3)
    with pytest.raises(ValueError, match=r"2 × 3 channels"):
        pipe.scheduler.step(torch.zeros(1, 3, 4, 4), 999, torch.zeros(1, 3, 4, 4))


def test_dynamic_threshold_is_diffusers_threshold_sample():
    scales = torch.tensor([0.3, 1, 3, 10]).reshape(4, 1, 1, 1)  # from no clipping to a large threshold
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * scales
    for ratio, max_value in [(0.995, 1.0), (0.9, 1.5), (0.6, 4.0)]:
        ddpm = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
        for dtype in (torch.float32, torch.float64, torch.float16):
            x = x0.to(dtype)
            expected = ddpm._threshold_sample(x)
            torch.testing.assert_close(dynamic_threshold(x, ratio, max_value), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dpm_config", [{}, {"algorithm_type": "sde-dpmsolver++"}], ids=["2M", "sde-2M"])
def test_thresholding_matches_dpm_solver_multistep(dpm_config):
    """The untrained UNet's x̂₀ lies far outside [−1.5, 1.5], so the threshold acts."""
    pipe = tiny_ddpm_pipeline()
    keys = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    dpm, rev = dpm_and_revsde(pipe, **keys, **dpm_config)
    torch.testing.assert_close(rev, dpm, rtol=1e-5, atol=1e-5)
    plain, _ = dpm_and_revsde(pipe, **dpm_config)
    assert float((plain - dpm).abs().max()) > 0.05  # the thresholding changed the images


@pytest.mark.parametrize("keys, message", [
    (dict(variance_type="learned_small"), "variance_type in"),
    (dict(thresholding="yes"), "thresholding must be True or False"),
    (dict(thresholding=True, dynamic_thresholding_ratio=1.5), r"dynamic_thresholding_ratio must be a number in \(0"),
    (dict(thresholding=True, sample_max_value=0.5), "sample_max_value must be a number >= 1"),
])
def test_bad_output_keys_are_refused(keys, message):
    with pytest.raises(ValueError, match=message):
        RevSDEScheduler(**keys)


def test_ddpm_fixed_variance_types_are_accepted():
    for variance_type in ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"):
        rev = RevSDEScheduler.from_config(diffusers.DDPMScheduler(variance_type=variance_type).config)
        assert rev.config.variance_type == variance_type


# --- item 8: DiT's doubled guidance batch ---------------------------------------------------------------
def dit_reference(pipe, labels, guidance_scale, seed, global_seed, sampler, options):
    """What a DiT run should give: ``revsde.sample`` on the guided transformer (ε channels), from the
    pipeline's latents, with the per-sample Philox streams the scheduler keys from a seed of the global
    generator (``seed=`` that seed)."""
    transformer, vae, rev = pipe.transformer, pipe.vae, pipe.scheduler
    channels = transformer.config.in_channels

    def net(x, t, class_labels):
        return transformer(x, timestep=t, class_labels=class_labels).sample[:, :channels]

    batch = len(labels)
    model = revsde.ScoreModel(net, rev.sde, "noise", guidance_scale=guidance_scale,
                              uncond={"class_labels": torch.full((batch,), DIT_NULL_CLASS)})
    size = transformer.config.sample_size
    x_init = randn_tensor((batch, channels, size, size), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(global_seed)
    noise_seed = int(torch.randint(2**31, ()))
    with torch.no_grad():
        sol = revsde.sample(model, x_init=x_init, sampler=sampler, grid=rev._grid, **options,
                            seed=noise_seed,
                            cond={"class_labels": torch.tensor(labels)})
        return (vae.decode(sol.x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("sampler, options", [("mrs", {"stochastic": True}), ("euler_maruyama", {}), ("pc", {}),
                                              ("ancestral", {})])
def test_dit_guidance_runs_stochastic_samplers(sampler, options):
    """DiTPipeline with guidance steps a doubled batch and copies its first half over the second between
    steps: the first half is the run, the same as revsde.sample on the guided model."""
    pipe = tiny_dit_pipeline()
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler=sampler, final_sigmas_type="sigma_min",
                                                 **options)
    labels, steps = [1, 2], 6
    torch.manual_seed(11)
    got = pipe(class_labels=labels, guidance_scale=4.0, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    expected = dit_reference(pipe, labels, 4.0, seed=0, global_seed=11, sampler=sampler, options=options)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    other_noise = dit_reference(pipe, labels, 4.0, seed=0, global_seed=12, sampler=sampler, options=options)
    assert float((other_noise - expected).abs().max()) > 1e-3  # the step noise shows in the images


def test_dit_guidance_matches_dpm_solver_multistep():
    """dpmsolver++ (2M) in the same doubled-batch loop gives the same images."""
    pipe = tiny_dit_pipeline()
    results = []
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    for scheduler in (dpm, RevSDEScheduler.from_config(dpm.config, **DPM_2M)):
        pipe.scheduler = scheduler
        results.append(pipe(class_labels=[5, 7], guidance_scale=3.0, num_inference_steps=8,
                            generator=torch.Generator().manual_seed(1), output_type="pt").images)
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)


def test_only_the_mirrored_second_half_is_accepted_as_an_edit():
    """Copying the first half over the second is the one edit accepted; others (4-channel inpainting's
    blending, a reordered batch) are refused as before."""
    rev = RevSDEScheduler(sampler="euler_maruyama")
    mixture = gaussian()

    def net(x, timestep):
        t = torch.as_tensor(timestep, dtype=torch.float64).expand(x.shape[0]) / 999
        return mixture.noise(rev.sde, x.double(), t).to(x.dtype)

    def first_step():
        rev.set_timesteps(5)
        x = torch.randn(2, 2, generator=torch.Generator().manual_seed(0)).repeat(2, 1)
        x = rev.step(net(x, 999), 999, x, generator=torch.Generator().manual_seed(1)).prev_sample
        assert not torch.equal(x[:2], x[2:])  # each half drew its own noise
        return x

    x = first_step()
    t = rev.timesteps[1]
    for edited in (torch.cat([x[:2], x[:2] + 1]), torch.cat([x[:2] + 1, x[:2] + 1]), x[[1, 0, 3, 2]]):
        with pytest.raises(ValueError, match="differs from the prev_sample it returned"):
            rev.step(net(edited, t), t, edited)
        x = first_step()
    mirrored = torch.cat([x[:2], x[:2]])
    out = rev.step(net(mirrored, t), t, mirrored)
    assert torch.equal(out.prev_sample[:2], out.prev_sample[2:])
    assert torch.equal(out.pred_original_sample[:2], out.pred_original_sample[2:])
    with pytest.raises(ValueError, match="differs from the prev_sample it returned"):  # still guarded
        rev.step(net(out.prev_sample, rev.timesteps[2]), rev.timesteps[2], out.prev_sample + 1)


# --- item 9: flow matching (tests/integrations/test_diffusers_flow.py covers it; issue 22) -------------------------------
@pytest.mark.parametrize("source, keys, family", [
    ("FlowMatchEulerDiscreteScheduler", {}, "flow_match"),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "use_dynamic_shifting": True}, "flow_match"),
    ("FlowMatchHeunDiscreteScheduler", {}, "flow_match"),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, "unipc"),
    ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "flow_shift": 3.0}, "dpm_solver"),
])
def test_flow_matching_configs_sample_rectified_flow(source, keys, family, tmp_path):
    """Made in memory (no class name) or saved (a pipeline folder's), a flow config gets its family."""
    scheduler = getattr(diffusers, source)(**keys)
    scheduler.save_pretrained(tmp_path)
    for rev in (RevSDEScheduler.from_config(scheduler.config, sampler="mrs"), RevSDEScheduler.from_pretrained(tmp_path)):
        assert rev.config.flow_schedule == family and isinstance(rev.sde, revsde.sde.RectifiedFlow)


def test_flow_keys_given_as_arguments_make_a_flow_schedule():
    rev = RevSDEScheduler.from_config(diffusers.DPMSolverMultistepScheduler().config, use_flow_sigmas=True)
    assert rev.config.flow_schedule == "dpm_solver" and rev.config.prediction_type == "epsilon"


@pytest.mark.parametrize("source", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
                                    "SASolverScheduler"])
def test_vp_configs_of_flow_capable_schedulers_are_accepted(source):
    config = getattr(diffusers, source)().config
    assert config.get("use_flow_sigmas") is False
    rev = RevSDEScheduler.from_config(config)
    assert torch.equal(rev.alphas_cumprod, getattr(diffusers, source)().alphas_cumprod)


# --- item 10: loading a saved pipeline in a fresh process ----------------------------------------------------
FRESH_LOAD = """
import json, sys
from diffusers import DiffusionPipeline
try:
    DiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)
    plain = "loaded"
except ValueError as err:
    plain = str(err)
from revsde.integrations.pipelines import load_pipeline
pipe = load_pipeline(sys.argv[1], local_files_only=True)
scheduler = type(pipe.scheduler)
print(json.dumps({"plain": plain, "pipeline": type(pipe).__name__,
                  "scheduler": scheduler.__module__ + "." + scheduler.__name__,
                  "config": {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}}))
"""


def test_saved_pipeline_loads_in_a_fresh_process(tmp_path):
    pipe = tiny_ddpm_pipeline()
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler="pc", snr=0.12, grid="logsnr")
    pipe.save_pretrained(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=TESTS, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # diffusers imports no module a folder names: without revsde imported, from_pretrained refuses it
    assert result["plain"] != "loaded" and "revsde.integrations.diffusers" in result["plain"]
    assert result["pipeline"] == "DDPMPipeline"
    assert result["scheduler"] == "revsde.integrations.diffusers.RevSDEScheduler"
    public = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    assert result["config"] == json.loads(json.dumps(public))


def test_load_pipeline_picks_revsdes_own_pipeline_class(tmp_path):
    pipe = UnconditionalPipeline(unet=tiny_unet2d(), scheduler=RevSDEScheduler(sampler="ode_heun"))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    back = load_pipeline(tmp_path, local_files_only=True)
    back.set_progress_bar_config(disable=True)
    assert type(back) is UnconditionalPipeline and isinstance(back.scheduler, RevSDEScheduler)
    run = lambda p: p(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="pt").images
    torch.testing.assert_close(run(back), run(pipe), rtol=0, atol=0)
