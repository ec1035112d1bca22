"""The built-in image model: its data, both loss weightings written out by hand against diffusers'
own schedule, resuming bit for bit, the exports (revsde safetensors and a diffusers DDPMPipeline
folder that runs with other schedulers), argument errors and ``revsde train image``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import revsde
from revsde.apps.image import data as D
from revsde.apps.image import train as T
from revsde.apps.image import model as M
from revsde.apps.trainer import load_checkpoint
from revsde.cli import main
from revsde.model import ScoreModel
from revsde.sde.vp import DiscreteVPSDE

from fixtures import assert_same_weights

#: a UNet2DModel small enough for tests (≈ 30 k parameters), same 16×16 single-channel interface
TINY_UNET = {"sample_size": 16, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
             "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8}


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- the data -----------------------------------------------------------------------------------
def test_digits_are_sklearns_scaled_to_plus_minus_one_and_bicubic_upsampled():
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).double().unsqueeze(1)  # 0..16
    small = D.digits(8)
    assert small.dtype == torch.float32 and small.shape == (1797, 1, 8, 8)
    torch.testing.assert_close(small.double(), raw / 8 - 1, rtol=0, atol=0)  # k/8 − 1 is exact in float32
    x = D.digits(16)
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    expected = F.interpolate(raw / 8 - 1, size=(16, 16), mode="bicubic", align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-7)
    assert torch.equal(D.digits(16), x)  # deterministic
    assert D.digit_labels().shape == (1797,) and D.digit_labels()[:10].tolist() == list(range(10))


@pytest.mark.parametrize("size", [7, 16.0, True])
def test_bad_sizes_are_refused(size):
    with pytest.raises(ValueError, match="size must be an integer >= 8"):
        D.digits(size)


def test_shift_columns_moves_images_and_fills_with_background():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    out = D.shift_columns(x, torch.tensor([1, -2]))
    assert torch.equal(out[0, 0, :, 0], torch.full((3,), -1.0)) and torch.equal(out[0, 0, :, 1:], x[0, 0, :, :3])
    assert torch.equal(out[1, 0, :, :2], x[1, 0, :, 2:]) and torch.equal(out[1, 0, :, 2:], torch.full((3, 2), -1.0))
    assert torch.equal(D.shift_columns(x, torch.tensor([0, 0])), x)


def test_batches_are_digits_shifted_at_most_one_column_and_reproducible():
    data = D.digits(16)
    x = D.DigitBatches(data, 256, gen(0), shift=1)()
    assert x.shape == (256, 1, 16, 16) and torch.equal(D.DigitBatches(data, 256, gen(0), shift=1)(), x)
    # every image is some digit, unflipped, moved by −1, 0 or +1 columns: find it among all (shift, index)
    candidates = torch.stack([D.shift_columns(data, torch.full((len(data),), s)) for s in (-1, 0, 1)])
    found = [torch.nonzero((candidates - image).abs().amax((2, 3, 4)) == 0) for image in x]
    assert all(len(f) > 0 for f in found)
    assert {int(f[0, 0]) for f in found} == {0, 1, 2}  # all three shifts occur in 256 draws
    assert torch.equal(D.DigitBatches(data, 4, gen(1), shift=0)(), data[torch.randint(1797, (4,), generator=gen(1))])


def test_batch_sampler_refuses_bad_arguments():
    data = D.digits(16)
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        D.DigitBatches(data, 0, gen(0))
    with pytest.raises(ValueError, match="shift must be an integer in"):
        D.DigitBatches(data, 2, gen(0), shift=16)


# --- the losses ---------------------------------------------------------------------------------
class StandIn(nn.Module):
    """``unet(x, t).sample`` with an output depending on both x and the time it is given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t)
        out = 0.7 * x + 0.001 * t.reshape(-1, 1, 1, 1) - 0.1
        return type("Out", (), {"sample": out})()


def diffusers_alphas_cumprod():
    from diffusers import DDPMScheduler

    return DDPMScheduler().alphas_cumprod.double()  # the default schedule, as diffusers computes it


def test_the_schedule_is_diffusers_default_ddpm_table():
    sde = M.build_sde()
    assert isinstance(sde, DiscreteVPSDE) and sde.num_train_timesteps == 1000
    torch.testing.assert_close(sde.alphas_cumprod, diffusers_alphas_cumprod(), rtol=0, atol=0)


def test_loss_weights_constant_and_debiased():
    sde = M.build_sde()
    assert torch.equal(T.loss_weights(sde, "constant"), torch.ones(1000, dtype=torch.float64))
    ac = diffusers_alphas_cumprod()
    snr = ac / (1 - ac)
    w = T.loss_weights(sde, "debiased")
    expected = snr.rsqrt() / snr.rsqrt().mean()
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=0)
    assert abs(float(w.mean()) - 1) < 1e-12 and w[0] < 1e-3 and w[-1] > 8  # little noise weighs little


@pytest.mark.parametrize("weighting", ["constant", "debiased"])
def test_eps_loss_is_the_weighted_ddpm_loss(weighting):
    from diffusers import DDPMScheduler

    x0 = torch.rand(6, 1, 16, 16, generator=gen(3)) * 2 - 1
    net = StandIn()
    got = T.eps_loss(M.score_model(net, M.build_sde()), x0, gen(5), weighting)
    # by hand: the same draws, diffusers' add_noise, diffengine's DeBiasEstimationLoss weight 1/sqrt(SNR)
    g = gen(5)
    k = torch.randint(1000, (6,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = DDPMScheduler().add_noise(x0, eps, k)
    mse = ((0.7 * x_t + 0.001 * k.float().reshape(-1, 1, 1, 1) - 0.1 - eps) ** 2).mean((1, 2, 3))
    ac = diffusers_alphas_cumprod()[k]
    w = torch.ones(6) if weighting == "constant" else (((1 - ac) / ac).sqrt() / (
        (1 - diffusers_alphas_cumprod()) / diffusers_alphas_cumprod()).sqrt().mean()).float()
    torch.testing.assert_close(got, (w * mse).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(net.seen[0].double(), k.double(), rtol=0, atol=1e-3)  # the net sees the index k


def test_eps_loss_vanishes_for_the_true_noise():
    class Oracle(nn.Module):  # knows x0, so ε = (x_t − sqrt(ᾱ) x0) / sqrt(1 − ᾱ)
        def forward(self, x, t):
            ac = M.build_sde().alphas_cumprod[t.round().long()].float().reshape(-1, 1, 1, 1)
            return type("Out", (), {"sample": (x - ac.sqrt() * x0) / (1 - ac).sqrt()})()

    x0 = torch.rand(8, 1, 16, 16, generator=gen(0)) * 2 - 1
    for weighting in T.WEIGHTINGS:
        assert float(T.eps_loss(M.score_model(Oracle(), M.build_sde()), x0, gen(1), weighting)) < 1e-6


def test_an_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="weighting must be one of constant, debiased"):
        T.loss_weights(M.build_sde(), "min_snr")


# --- the loop -----------------------------------------------------------------------------------
def _train(tmp_path, name, **kw):
    args = dict(steps=4, batch=3, unet_config=TINY_UNET, checkpoint_every=2, log_every=1, progress=False,
                threads=None)
    args.update(kw)
    with torch.random.fork_rng(devices=[]):
        return T.train_image(tmp_path / name, **args)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = _train(tmp_path, "full", weighting="debiased")
    part = _train(tmp_path, "split", weighting="debiased", stop_at=3)  # off the checkpoint_every grid
    assert part.interrupted and part.step == 3
    rest = _train(tmp_path, "split", weighting="debiased")
    assert not rest.interrupted and rest.step == full.step == 4
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(rest.checkpoint)
    assert_same_weights(a, b)
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    log = [json.loads(line) for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and [r["loss"] for r in log] == [r["loss"] for r in ref]
    assert all(math.isfinite(r["loss"]) for r in log)
    # the other weighting trains on the same draws but to other weights
    other = load_checkpoint(_train(tmp_path, "constant", weighting="constant").checkpoint)
    assert any(not torch.equal(other["model"][k], a["model"][k]) for k in a["model"])


def test_resume_refuses_other_settings(tmp_path):
    _train(tmp_path, "run", steps=1)
    for change in ({"weighting": "debiased"}, {"lr": 1e-3}, {"batch": 2}, {"shift": 0},
                   {"unet_config": {**TINY_UNET, "block_out_channels": [8, 8]}}):
        with pytest.raises(ValueError, match="was trained with other settings"):
            _train(tmp_path, "run", steps=2, **change)
    again = _train(tmp_path, "run", steps=1, weighting="debiased", resume=False)
    assert again.step == 1 and load_checkpoint(again.checkpoint)["config"]["weighting"] == "debiased"


@pytest.mark.parametrize("kwargs, message", [
    ({"weighting": "snr"}, "weighting must be one of constant, debiased"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"batch": 2.5}, "batch must be a positive integer"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"ema": 1.0}, r"ema must lie in \[0, 1\)"),
    ({"shift": -1}, "shift must be an integer >= 0"),
    ({"data": torch.zeros(4, 3, 16, 16)}, r"data must be images \(N, 1, 16, 16\)"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, message):
    args = {"steps": 1, "progress": False, "threads": None, "unet_config": TINY_UNET, **kwargs}
    with pytest.raises(ValueError, match=message):
        T.train_image(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


# --- export, load, diffusers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model trained 3 steps and exported, with its diffusers folder."""
    root = tmp_path_factory.mktemp("image_export")
    with torch.random.fork_rng(devices=[]):
        result = T.train_image(root / "run", 3, batch=2, unet_config=TINY_UNET, progress=False, threads=None,
                               weighting="debiased")
    path = M.export_weights(result.checkpoint, root / "image.safetensors")
    folder = M.export_diffusers(path, root / "pipe")
    return result, path, folder


def test_export_load_gives_the_ema_unet(exported):
    from safetensors.torch import load_file

    result, path, _ = exported
    model, config = M.load_weights(path)
    assert isinstance(model, ScoreModel) and model.prediction == "noise" and isinstance(model.sde, DiscreteVPSDE)
    assert config["weighting"] == "debiased" and config["trained_steps"] == 3 and config["unet"] == TINY_UNET
    ema = load_checkpoint(result.checkpoint)["ema"]
    unet = model.net.unet
    assert not unet.training and set(load_file(str(path))) == set(unet.state_dict()) == set(ema)
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in ema.items())
    # the ScoreModel calls unet(x, k) with the DDPM index k = t (N − 1)
    x = torch.randn(2, 1, 16, 16, generator=gen(0))
    k = torch.tensor([17.0, 640.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, k.double() / 999).noise, unet(x, k).sample, rtol=1e-5, atol=1e-6)


def test_exported_model_samples_with_revsde(exported):
    from revsde import sample

    model, _ = M.load_weights(exported[1])
    with torch.no_grad():
        sol = sample(model, shape=(2, 1, 16, 16), sampler="mrs", order=2, steps=3, seed=0)
    assert sol.nfe == 3 and sol.x.shape == (2, 1, 16, 16) and torch.isfinite(sol.x).all()  # smoke test


def test_diffusers_folder_runs_in_ddpm_pipeline_with_another_scheduler(exported):
    from diffusers import DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler

    _, path, folder = exported
    assert {p.name for p in folder.iterdir()} >= {"model_index.json", "unet", "scheduler"}
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = DDPMPipeline.from_pretrained(folder, local_files_only=True)
    assert isinstance(pipe.scheduler, DDPMScheduler) and pipe.scheduler.config.prediction_type == "epsilon"
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod.double(), M.build_sde().alphas_cumprod, rtol=0, atol=0)
    model, _ = M.load_weights(path)
    x = torch.randn(2, 1, 16, 16, generator=gen(1))
    with torch.no_grad():
        assert torch.equal(pipe.unet(x, 300).sample, model.net.unet(x, 300).sample)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=gen(0), output_type="np").images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()  # smoke test
    assert json.loads((folder / "revsde_training.json").read_text())["weighting"] == "debiased"


def test_diffusers_folder_runs_under_revsde_scheduler(exported):
    from revsde.apps.sample_diffusers import sample_diffusers

    out = sample_diffusers(exported[2], sampler="mrs", steps=2, n=2, options={"order": 2})
    assert out.pipeline == "DDPMPipeline" and out.nfe == 2 and out.images.shape == (2, 16, 16, 1)  # smoke test


def test_read_config_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="is not a revsde image model"):
        M.read_config(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError, match="are not a file"):
        M.load_weights(tmp_path / "missing.safetensors")


# --- the command line ---------------------------------------------------------------------------
def test_cli_trains_resumes_and_exports_both_formats(tmp_path, capsys):
    out, export, folder = tmp_path / "run", tmp_path / "digits.safetensors", tmp_path / "pipe"
    args = ["train", "image", "-o", str(out), "--weighting", "debiased", "--batch", "2", "--threads", "1",
            "--no-progress", "--export", str(export), "--diffusers-folder", str(folder)]
    with torch.random.fork_rng(devices=[]):
        assert main([*args, "--steps", "1"]) == 0
        printed = capsys.readouterr().out
        assert "finished at step 1/1" in printed and f"wrote {export}" in printed and f"wrote {folder}" in printed
        assert main([*args, "--steps", "2"]) == 0  # the same folder resumes
    assert "finished at step 2/2" in capsys.readouterr().out
    _, config = M.load_weights(export)
    assert config["trained_steps"] == 2 and config["weighting"] == "debiased" and config["unet"] == M.SMALL_UNET
    assert (folder / "model_index.json").is_file()


def test_cli_bad_arguments(tmp_path, capsys):
    base = ["train", "image", "--steps", "1", "-o", str(tmp_path / "run"), "--no-progress"]
    assert main([*base, "--diffusers-folder", str(tmp_path / "pipe")]) == 2
    assert "--diffusers-folder needs --export" in capsys.readouterr().err
    assert main([*base, "--batch", "0"]) == 2
    assert "batch must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's choices
        main([*base, "--weighting", "snr"])
    assert "invalid choice: 'snr'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- the committed model ------------------------------------------------------------------------
def test_committed_model_draws_digits_and_its_diffusers_folder_holds_the_same_unet():
    """16 samples at 10 NFE: the FD-digits classifier reads each as a digit with confidence (noise,
    blobs or a broken time input give flat class probabilities)."""
    from pathlib import Path

    from diffusers import UNet2DModel

    from revsde import sample
    from revsde.nets.digits_classifier import load_classifier

    weights = Path(revsde.__file__).resolve().parent / "weights"
    model, config = M.load_weights(weights / "image_digits.safetensors")
    assert config["trained_steps"] >= 1000 and config["unet"] == M.SMALL_UNET
    with torch.no_grad():
        x = sample(model, shape=(16, 1, 16, 16), sampler="mrs", order=2, steps=10, seed=0).x
        confidence = load_classifier()(x.clamp(-1, 1)).softmax(1).amax(1)
    assert float(confidence.median()) > 0.95, confidence  # random-init net: 0.78, pure noise: 0.72
    unet = UNet2DModel.from_pretrained(weights / "image_digits_diffusers" / "unet")
    state = model.net.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in unet.state_dict().items())
