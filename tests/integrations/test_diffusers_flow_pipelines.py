"""RevSDEScheduler inside flow-matching pipelines built offline (issue 22): tiny Stable Diffusion 3
(text-to-image and image-to-image) and Flux give FlowMatchEuler's images with ``mrs`` order 1 and
DPM-Solver++'s (flow sigmas, Sana-style) with ``mrs`` order 2; every steppable sampler runs there and
with a Wan-style UniPC flow config; ``UnconditionalPipeline`` runs flow schedulers; ``revsde sample
--diffusers`` samples a saved flow pipeline folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from revsde.cli import main  # noqa: E402
from revsde.integrations.diffusers import RevSDEScheduler  # noqa: E402
from revsde.integrations.pipelines import UnconditionalPipeline, load_pipeline  # noqa: E402

from fixtures import (count_unet_calls, flux_embeddings, tiny_flux_pipeline, tiny_sd3_pipeline,  # noqa: E402
                                 tiny_unet2d)
from fixtures import SANA, STEPPABLE, WAN  # noqa: E402

PROMPTS = ["a photo of a red cat", "a blue house"]
IMAGE = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))  # img2img input in [0, 1]


def run(pipe, steps: int = 4, seed: int = 0):
    """One call of ``pipe`` on two images, as tensors in [0, 1]."""
    kwargs = dict(num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="pt")
    if isinstance(pipe, diffusers.FluxPipeline):
        return pipe(**flux_embeddings(2), height=8, width=8, **kwargs).images
    if isinstance(pipe, diffusers.StableDiffusion3Img2ImgPipeline):
        kwargs.update(image=IMAGE, strength=0.6)
    return pipe(PROMPTS, guidance_scale=5.0, max_sequence_length=8, **kwargs).images


BUILDERS = {"sd3": tiny_sd3_pipeline, "sd3-img2img": lambda: tiny_sd3_pipeline(img2img=True),
            "flux": tiny_flux_pipeline}


@pytest.fixture(scope="module")
def pipelines():
    return {name: build() for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", BUILDERS)
def test_mrs_order_1_gives_flow_match_eulers_images(pipelines, name):
    pipe = pipelines[name]
    euler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    results = []
    for scheduler in (euler, RevSDEScheduler.from_config(euler.config, sampler="mrs", order=1)):
        pipe.scheduler = scheduler
        results.append(run(pipe, steps=5))
    pipe.scheduler = euler
    assert float((results[0] - results[0].mean()).abs().max()) > 0.05  # not a constant image
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["sd3"])  # DPMSolverMultistep has no scale_noise: not in SD3 img2img
@pytest.mark.parametrize("dpm_keys, options", [(dict(), dict(order=2, second_order="midpoint")),
                                               (dict(solver_order=3), dict(order=3, second_order="midpoint",
                                                                           third_order="dpm-solver"))],
                         ids=["2M", "3M"])
def test_mrs_gives_dpm_solver_multistep_flow_images(pipelines, name, dpm_keys, options):
    """Sana's scheduler config (DPM-Solver++ on flow sigmas with shift 3, integer timesteps)."""
    pipe = pipelines[name]
    dpm = diffusers.DPMSolverMultistepScheduler(**SANA, **dpm_keys)
    results = []
    for scheduler in (dpm, RevSDEScheduler.from_config(dpm.config, sampler="mrs", **options)):
        pipe.scheduler = scheduler
        results.append(run(pipe, steps=8))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("sampler", STEPPABLE)
def test_every_steppable_sampler_runs_in_flow_pipelines(pipelines, name, sampler):
    """A smoke test of the protocol in each pipeline (the numbers: test_diffusers_flow.py): finite images,
    one network call per timestep."""
    pipe = pipelines[name]
    flow_match = pipe.scheduler
    rev = RevSDEScheduler.from_config(flow_match.config, sampler=sampler)
    pipe.scheduler = rev
    with count_unet_calls(pipe) as calls:
        images = run(pipe, steps=3)
    pipe.scheduler = flow_match
    assert images.shape[:2] == (2, 3) and bool(torch.isfinite(images).all())
    assert calls.calls == rev.nfe > 0
    if name != "sd3-img2img":  # img2img runs the tail of the timesteps
        assert rev.nfe == len(rev.timesteps)


@pytest.mark.parametrize("name", ["sd3", "flux"])
@pytest.mark.parametrize("sampler, options", [("mrs", {}), ("mrs", {"stochastic": True}), ("ode_heun", {}),
                                              ("euler_maruyama", {})])
def test_wan_style_unipc_config_runs(pipelines, name, sampler, options):
    """Wan's UniPC flow config (flow_shift 5, integer timesteps) in place of the pipeline's scheduler."""
    pipe = pipelines[name]
    original = pipe.scheduler
    pipe.scheduler = RevSDEScheduler.from_config(diffusers.UniPCMultistepScheduler(**WAN).config, sampler=sampler,
                                                 **options)
    with count_unet_calls(pipe) as calls:
        images = run(pipe, steps=4)
    assert pipe.scheduler.timesteps.dtype == torch.int64 and calls.calls == len(pipe.scheduler.timesteps)
    pipe.scheduler = original
    assert bool(torch.isfinite(images).all())


# --- UnconditionalPipeline and revsde sample --diffusers ------------------------------------------------
def flow_unconditional_pipeline(scheduler=None) -> UnconditionalPipeline:
    """A tiny UNet called with σ · 1000, the layout of the built-in flow digits model's folder."""
    pipe = UnconditionalPipeline(unet=tiny_unet2d(), scheduler=scheduler or diffusers.FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("make", [
    lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0),
    lambda: diffusers.UniPCMultistepScheduler(**WAN), lambda: diffusers.DPMSolverMultistepScheduler(**SANA),
], ids=["flow-match", "unipc", "dpm"])
def test_unconditional_pipeline_runs_flow_schedulers(make):
    pipe = flow_unconditional_pipeline(make())
    gen = lambda: torch.Generator().manual_seed(0)
    plain = pipe(batch_size=2, num_inference_steps=6, generator=gen(), output_type="raw").images
    options = dict(order=1) if isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler) else \
        dict(order=2, second_order="midpoint")
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler="mrs", **options)
    rev = pipe(batch_size=2, num_inference_steps=6, generator=gen(), output_type="raw").images
    assert bool(torch.isfinite(plain).all())
    if not isinstance(make(), diffusers.UniPCMultistepScheduler):  # UniPC's own solver is not mrs
        torch.testing.assert_close(rev, plain, rtol=1e-5, atol=1e-5)


def test_unconditional_pipeline_passes_mu():
    pipe = flow_unconditional_pipeline(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    out = pipe(batch_size=1, num_inference_steps=3, output_type="raw", mu=0.7).images
    assert bool(torch.isfinite(out).all())


@pytest.fixture(scope="module")
def flow_folders(tmp_path_factory):
    sd3 = tmp_path_factory.mktemp("sd3")
    tiny_sd3_pipeline().save_pretrained(sd3)
    unconditional = tmp_path_factory.mktemp("unconditional-flow")
    flow_unconditional_pipeline(diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0)).save_pretrained(unconditional)
    return {"sd3": sd3, "unconditional": unconditional}


def test_cli_samples_a_saved_sd3_folder(flow_folders, tmp_path, capsys):
    """SD3 saved without T5 (``[null, null]`` in model_index.json) loads and samples with any sampler."""
    out = tmp_path / "out"
    code = main(["sample", "--diffusers", str(flow_folders["sd3"]), "--prompt", "a red cat", "--sampler", "mrs",
                 "--option", "order=1", "--steps", "3", "--n", "2", "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "StableDiffusion3Pipeline" in printed and "NFE: 3 in 3 steps" in printed
    meta = json.loads((out / "run.json").read_text())
    assert meta["scheduler"]["flow_schedule"] == "flow_match" and meta["scheduler"]["shift"] == 3.0
    # the same images as FlowMatchEuler in the loaded pipeline (mrs order 1 is its Euler step)
    pipe = load_pipeline(flow_folders["sd3"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red cat", num_inference_steps=3, num_images_per_prompt=2, output_type="np",
                    generator=[torch.Generator().manual_seed(b) for b in range(2)]).images
    got = np.stack([np.asarray(Image.open(out / f"sample_{b:03d}.png")) for b in range(2)])
    assert np.abs(got.astype(int) - (np.clip(expected, 0, 1) * 255).round().astype(int)).max() <= 1


def test_cli_samples_an_unconditional_flow_folder(flow_folders, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sample", "--diffusers", str(flow_folders["unconditional"]), "--sampler", "ode_heun", "--steps", "4",
                 "--n", "2", "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "UnconditionalPipeline" in printed and "NFE: 7 in 4 steps" in printed  # Heun, the last step Euler
    assert json.loads((out / "run.json").read_text())["scheduler"]["flow_schedule"] == "flow_match"
    # the folder's flow keys can be overridden like any other RevSDEScheduler key
    code = main(["sample", "--diffusers", str(flow_folders["unconditional"]), "--steps", "3", "--n", "1",
                 "--option", "shift=5.0", "-o", str(tmp_path / "shifted"), "--no-progress"])
    assert code == 0 and json.loads((tmp_path / "shifted" / "run.json").read_text())["scheduler"]["shift"] == 5.0
    code = main(["sample", "--diffusers", str(flow_folders["unconditional"]), "--steps", "3", "--grid", "karras",
                 "-o", str(tmp_path / "never"), "--no-progress"])
    assert code == 2 and "grid='discrete'" in capsys.readouterr().err
