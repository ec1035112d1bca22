"""The exact-mixture UNet, the SD-style unconditional pipeline, and the diffusers pipeline bench."""
from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from revsde.apps.mixture import pipeline_bench as pb  # noqa: E402
from revsde.integrations.mixture_unet import ExactMixtureUNet  # noqa: E402
from revsde.integrations.pipelines import UnconditionalPipeline  # noqa: E402
from revsde.metrics import frechet_distance, sample_moments  # noqa: E402


def _single_gaussian(schedule="linear"):
    """One Gaussian with a per-coordinate std on 2×2×2 images."""
    gen = torch.Generator().manual_seed(0)
    mean = (torch.rand(8, generator=gen, dtype=torch.float64) - 0.5).tolist()
    std = (0.05 + 0.2 * torch.rand(8, generator=gen, dtype=torch.float64)).tolist()
    kwargs = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    unet = ExactMixtureUNet(sample_size=2, in_channels=2, means=[mean], stds=[std], weights=[1.0],
                            beta_schedule=schedule, **kwargs)
    scheduler = diffusers.DDPMScheduler(beta_schedule=schedule, **kwargs)
    return unet, torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64), scheduler


def _closed_form_eps(x, timestep, mean, std, alphas_cumprod):
    """``E[ε | x_τ]`` for x₀ ~ N(m, diag s²): ``σ (x − α m) / (α² s² + σ²)``, with ᾱ at a fractional index
    τ = k + f from the log-SNR interpolated linearly between diffusers' table points k and k + 1."""
    ac = alphas_cumprod.double()
    lam = 0.5 * (torch.log(ac) - torch.log1p(-ac))
    k = min(int(timestep), len(ac) - 2)
    f = timestep - k
    abar = torch.sigmoid(2 * ((1 - f) * lam[k] + f * lam[k + 1]))
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    flat = x.reshape(x.shape[0], -1)
    return (sigma * (flat - alpha * mean) / (alpha**2 * std**2 + sigma**2)).reshape(x.shape)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("timestep", [0, 137, 999, 137.25, 998.5])
def test_exact_eps_of_a_single_gaussian(schedule, timestep):
    unet, mean, std, scheduler = _single_gaussian(schedule)
    x = torch.randn(5, 2, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = _closed_form_eps(x, timestep, mean, std, scheduler.alphas_cumprod)
    for t in (timestep, torch.tensor(timestep), torch.full((5,), float(timestep))):  # scalar, 0-d, (B,)
        eps = unet(x, t).sample
        assert eps.dtype == torch.float64 and eps.shape == x.shape
        torch.testing.assert_close(eps, expected, rtol=1e-10, atol=1e-12)
    assert unet(x.float(), timestep).sample.dtype == torch.float32
    assert unet(x, timestep, return_dict=False)[0].shape == x.shape


def test_per_sample_timesteps_and_the_revsde_reference_agree():
    """The batched (one-time, matrix-product) path and the per-sample path give the revsde reference
    ``GaussianMixture.noise`` on the default 6-component problem."""
    unet = ExactMixtureUNet.default(sample_size=4)
    mixture = unet.mixture()
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.5
    ts = torch.tensor([0.0, 3.5, 40.0, 250.25, 600.0, 999.0], dtype=torch.float64)
    per_sample = unet(x, ts).sample
    for i, t in enumerate(ts):
        one = unet(x[i:i + 1], t).sample
        reference = mixture.noise(unet.sde, x[i:i + 1], t / 999)
        torch.testing.assert_close(one, reference, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(per_sample[i:i + 1], reference, rtol=1e-9, atol=1e-11)


def test_default_problem_and_bad_arguments():
    unet = ExactMixtureUNet.default(sample_size=8)
    mixture = unet.mixture()
    assert unet.config.sample_size == 8 and unet.config.in_channels == 3 and mixture.dim == 192
    assert 4 <= mixture.weights.numel() <= 8 and float(mixture.means.abs().max()) <= 0.7 + 1e-12
    assert unet.dtype == torch.float32 and unet.device.type == "cpu"
    with pytest.raises(ValueError, match="stds must be one number"):
        ExactMixtureUNet(sample_size=2, in_channels=1, means=[[0.0] * 4], stds=[[0.1] * 3])
    with pytest.raises(ValueError, match="means must be K flattened images of 4 values"):
        ExactMixtureUNet(sample_size=2, in_channels=1, means=[[0.0] * 5])
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        ExactMixtureUNet(sample_size=2, in_channels=1, means=[[0.0] * 4], beta_schedule="cubic")
    with pytest.raises(ValueError, match="the sample has 12"):
        ExactMixtureUNet(sample_size=2, in_channels=1, means=[[0.0] * 4])(torch.zeros(1, 3, 2, 2), 10)


def _fd(x, mixture):
    return frechet_distance(*sample_moments(x.reshape(x.shape[0], -1)), mixture.mean(), mixture.cov())


def test_ddim_in_the_pipeline_converges_to_the_mixture():
    """DDIM's own scheduler in the SD-style loop on the exact model: 50 steps score within a few times
    what exact samples of the same size score; 2 steps (one jump from t = 999 to x̂₀, the posterior
    mean) collapse the spread and are far off."""
    unet = ExactMixtureUNet.default(sample_size=8)
    mixture = unet.mixture()
    pipe = UnconditionalPipeline(unet, diffusers.DDIMScheduler.from_config(pb.base_scheduler_config(unet)))
    pipe.set_progress_bar_config(disable=True)
    n = 4000
    floor = _fd(mixture.sample(n, torch.Generator().manual_seed(1)), mixture)
    fine = _fd(pipe(n, 50, generator=torch.Generator().manual_seed(0), output_type="raw").images, mixture)
    coarse = _fd(pipe(n, 2, generator=torch.Generator().manual_seed(0), output_type="raw").images, mixture)
    assert fine < 4 * floor, (fine, floor)
    assert coarse > 100 * floor, (coarse, floor)


def test_output_types_and_the_generator_only_where_step_takes_it():
    """Heun's and UniPC's step() take no generator (DDPMPipeline would fail on them); raw is the state,
    the image types are (x/2 + 1/2) clamped, as DDPMPipeline makes them."""
    unet = ExactMixtureUNet.default(sample_size=4)
    for cls in (diffusers.HeunDiscreteScheduler, diffusers.UniPCMultistepScheduler, diffusers.DDPMScheduler):
        pipe = UnconditionalPipeline(unet, cls.from_config(pb.base_scheduler_config(unet)))
        pipe.set_progress_bar_config(disable=True)
        run = lambda kind: pipe(3, 4, generator=torch.Generator().manual_seed(0), output_type=kind).images
        raw, pt, np_images, pil = run("raw"), run("pt"), run("np"), run("pil")
        torch.testing.assert_close(pt, (raw / 2 + 0.5).clamp(0, 1))
        assert np_images.shape == (3, 4, 4, 3) and len(pil) == 3 and pil[0].size == (4, 4)
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe(output_type="latent")


def test_pipeline_save_and_load_round_trip(tmp_path):
    from revsde.integrations.diffusers import RevSDEScheduler

    unet = ExactMixtureUNet.default(sample_size=4)
    base = pb.base_scheduler_config(unet)
    for k, scheduler in enumerate([diffusers.DPMSolverMultistepScheduler.from_config(base, solver_order=3),
                                   RevSDEScheduler.from_config(base, sampler="mrs", order=2, grid="logsnr")]):
        pipe = UnconditionalPipeline(unet, scheduler)
        pipe.set_progress_bar_config(disable=True)
        folder = tmp_path / f"pipe{k}"
        pipe.save_pretrained(folder)
        index = json.loads((folder / "model_index.json").read_text())
        assert index["unet"] == ["revsde.integrations.mixture_unet", "ExactMixtureUNet"]
        loaded = UnconditionalPipeline.from_pretrained(folder)
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded.unet) is ExactMixtureUNet and type(loaded.scheduler) is type(scheduler)
        assert loaded.unet.config.means == unet.config.means and loaded.unet.config.stds == unet.config.stds
        assert {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")} == \
               {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
        a = pipe(4, 6, generator=torch.Generator().manual_seed(3), output_type="raw").images
        b = loaded(4, 6, generator=torch.Generator().manual_seed(3), output_type="raw").images
        assert torch.equal(a, b)


def test_steps_for_nfe_counts_the_network_calls():
    """Heun makes 2n − 1 evaluations for n steps: NFE 10 is out of reach (9 or 11; the tie goes to 9),
    and the count comes from the network, whatever the scheduler says."""
    unet = ExactMixtureUNet.default(sample_size=2)
    heun = UnconditionalPipeline(unet, diffusers.HeunDiscreteScheduler.from_config(pb.base_scheduler_config(unet)))
    heun.set_progress_bar_config(disable=True)
    assert pb.steps_for_nfe(heun, 10) == (5, 9)
    assert pb.steps_for_nfe(heun, 11) == (6, 11)
    assert pb.steps_for_nfe(heun, 1) == (1, 1)


def test_bench_on_a_tiny_problem(tmp_path):
    configs = [c for c in pb.diffusers_configs() if c.label in ("DDIM", "Heun", "DPM-Solver++ 2M")]
    configs += [c for c in pb.revsde_configs() if c.label in ("revsde mrs 2", "revsde ode_heun")]
    configs.append(pb.SchedulerConfig("broken", "NoSuchScheduler"))
    result = pb.run_pipeline_bench(configs, nfes=(4, 10), n_samples=300, unet=ExactMixtureUNet.default(sample_size=4))
    cell = {(r["label"], r["target_nfe"]): r for r in result.rows}
    assert len(result.rows) == 10
    assert all(r["fd"] >= 0 and r["fd"] < float("inf") and r["swd"] > 0 for r in result.rows)
    assert cell[("DDIM", 10)]["nfe"] == 10 and cell[("Heun", 10)]["nfe"] == 9 and cell[("Heun", 4)]["nfe"] == 3
    assert cell[("revsde mrs 2", 10)]["nfe"] == 10 and cell[("revsde ode_heun", 10)]["nfe"] in (9, 11)
    assert cell[("DPM-Solver++ 2M", 10)]["fd"] < cell[("DPM-Solver++ 2M", 4)]["fd"]
    assert result.floor["fd"] > 0 and [f["label"] for f in result.failures] == ["broken", "broken"]
    text = result.markdown()
    assert "| Heun | HeunDiscreteScheduler |" in text and "(9)" in text and "NoSuchScheduler" in text
    paths = pb.write(result, tmp_path)
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    again = pb.load(paths["json"])
    assert again.rows == result.rows and again.floor == result.floor and again.nfes == (4, 10)
    with pytest.raises(ValueError, match="nfes must be integers"):
        pb.run_pipeline_bench(configs, nfes=(0,))
