"""Training data and training loop of the built-in MR-diffusion restoration models (fast: tiny nets)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from revsde.apps.restore import data as D
from revsde.apps.restore import eval as E
from revsde.apps.restore import train as T
from revsde.apps.restore import model as M
from revsde.cli import train as train_cli
from revsde.apps.trainer import load_checkpoint
from revsde.sde import MRSDE

from fixtures import assert_same_weights


class TinyNet(nn.Module):
    """A stand-in restoration net with ConditionalUNet's call signature ``net(x, time, mu) -> ε``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 3, 3, padding=1)
        self.time = nn.Linear(1, 3)

    def forward(self, x, time, mu):
        t = torch.as_tensor(time, dtype=x.dtype).reshape(-1, 1) / 100
        return self.conv(torch.cat([x - mu, mu], 1)) + self.time(t)[:, :, None, None]


def tiny_images(n=3, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size + 8, generator=g) for _ in range(n)]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- data -------------------------------------------------------------------------------------------
def test_splits_are_disjoint_fixed_and_share_no_picture():
    train, test = D.split_names("train"), D.split_names("test")
    assert test == D.HELD_OUT == ("chelsea", "camera", "coffee", "flower")
    assert not set(train) & set(test)
    assert D.split_names("train") == train  # a fixed order
    assert len(train) >= 15
    train_images, test_images = D.load_split("train"), D.load_split("test")
    for im in list(train_images.values()) + list(test_images.values()):
        assert im.dtype == torch.float32 and im.ndim == 3 and im.shape[0] == 3
        assert float(im.min()) >= 0 and float(im.max()) <= 1
    # no training photo is a held-out photo under another name (skimage's cat is chelsea)
    for name, im in train_images.items():
        for other, ref in test_images.items():
            assert not (im.shape == ref.shape and torch.equal(im, ref)), f"{name} is {other}"
    cam = test_images["camera"]  # grayscale, replicated
    assert torch.equal(cam[0], cam[1]) and torch.equal(cam[1], cam[2])
    with pytest.raises(ValueError, match="train, test"):
        D.split_names("val")


@pytest.mark.parametrize("task", list(D.DEGRADATIONS))
def test_degradations_are_deterministic_by_generator(task):
    x0 = torch.rand(2, 3, 48, 56, generator=gen(0))
    a, b, c = (D.DEGRADATIONS[task](x0, gen(s)) for s in (1, 1, 2))
    assert a.shape == x0.shape and a.dtype == x0.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(D.degrade(task, x0[0], seed=5), D.degrade(task, x0[:1], seed=5)[0])


def test_noise_std_and_no_clipping():
    x0 = torch.full((1, 3, 256, 256), 0.9)
    mu = D.DEGRADATIONS["denoise"](x0, gen(0))
    r = mu - x0
    # std of 196608 normals: relative standard error 1/sqrt(2n) = 0.16 %
    assert abs(float(r.std()) / (25 / 255) - 1) < 0.01
    assert abs(float(r.mean())) < 4 * (25 / 255) / math.sqrt(r.numel())
    assert float(mu.max()) > 1.2  # not clipped


def test_blur_kernels_and_constant_images():
    r = torch.arange(D.BLUR_KERNEL, dtype=torch.float64) - D.BLUR_KERNEL // 2
    for kernels in (D.gaussian_blur_kernels, D.motion_blur_kernels):
        k = kernels(64, gen(0))
        assert k.shape == (64, D.BLUR_KERNEL, D.BLUR_KERNEL)
        torch.testing.assert_close(k.sum((1, 2)), torch.ones(64, dtype=k.dtype))
        # every kernel is centred: blur moves no edge
        assert float((k.sum(1) * r).sum(-1).abs().max()) < 1e-9 and float((k.sum(2) * r).sum(-1).abs().max()) < 1e-9
    # the Gaussian kernels' variance per axis is σ² with σ in [1.5, 2.5]
    g = D.gaussian_blur_kernels(64, gen(0))
    var = (g.sum(1) * r**2).sum(-1)
    assert float(var.min()) > 1.5**2 - 0.01 and float(var.max()) < 2.5**2 + 0.05
    # a horizontal motion streak of length L has variance L²/12 along x (plus the splatting's)
    m = D.motion_kernel(torch.tensor([12.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))[0]
    var_x = float((m.sum(0) * r**2).sum())
    assert abs(var_x - 12**2 / 12) < 1.0 and float((m.sum(1) * r**2).sum()) < 1e-9
    const = torch.full((2, 3, 30, 30), 0.25)
    torch.testing.assert_close(D.convolve(const, k[:2]), const)
    for task in ("deblur", "motion_deblur"):
        mu = D.DEGRADATIONS[task](const, gen(1))
        assert abs(float((mu - const).std()) - 1 / 255) < 0.1 / 255


def test_inpaint_masks_cover_15_to_30_percent():
    x0 = torch.rand(16, 3, 64, 64, generator=gen(0)) * 0.9  # below the fill value 1.0
    mu = D.DEGRADATIONS["inpaint"](x0, gen(3))
    hole = mu == D.INPAINT_FILL
    assert torch.equal(mu[~hole], x0[~hole])
    assert torch.equal(hole[:, 0], hole[:, 1])  # a mask covers all channels
    coverage = hole[:, 0].float().mean((1, 2))
    assert float(coverage.min()) >= 0.15 and float(coverage.max()) <= 0.45  # ≤ 30 % target + the last shape


@pytest.mark.parametrize("task", list(D.DEGRADATIONS))
def test_patch_sampler_shapes_determinism_and_alignment(task):
    images = tiny_images(size=64)
    a = D.PatchSampler(images, patch=16, batch=4, task=task, generator=gen(0))
    x0, mu = next(a)
    assert x0.shape == mu.shape == (4, 3, 16, 16)
    x1, mu1 = next(D.PatchSampler(images, patch=16, batch=4, task=task, generator=gen(0)))
    assert torch.equal(x0, x1) and torch.equal(mu, mu1)
    x2, _ = next(a)
    assert not torch.equal(x0, x2)
    if task == "denoise":  # μ is x0 plus noise of the stated std, pixel for pixel
        assert abs(float((mu - x0).std()) - 25 / 255) < 0.01


def test_patch_sampler_refuses_too_small_images():
    with pytest.raises(ValueError, match="at least"):
        D.PatchSampler([torch.rand(3, 20, 20)], patch=16, task="deblur")  # 16 + 2·10 margin
    with pytest.raises(ValueError, match="denoise, deblur, motion_deblur, inpaint"):
        D.PatchSampler(tiny_images(), task="derain")


# --- the loss ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("convention", ["mrs", "irsde"])
def test_matching_loss_equals_irsde_formula(convention):
    """With ε̂ = the true noise z, the loss is IR-SDE's §3.4 written out in its own index units:
    Euler ``x_t − [θ dt (μ − x_t) + g² dt ε̂/σ̄_t]`` vs posterior mean with A = α_t/α_{t−1}, B = α_t, C = α_{t−1}."""
    sde = MRSDE(convention=convention)
    n = sde.steps
    g = gen(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)
    mu = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 50, 99, 100], dtype=torch.float64) / n
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = sde.perturb(x0, t, z, mu)

    def col(v):
        return v.reshape(-1, 1, 1, 1)

    A, B, C = sde.alpha(t) / sde.alpha(t - 1 / n), sde.alpha(t), sde.alpha(t - 1 / n)
    optimum = mu + col(A * (1 - C**2) / (1 - B**2)) * (x_t - mu) + col(C * (1 - A**2) / (1 - B**2)) * (x0 - mu)
    theta_dt, g2_dt = -sde.f(t) / n, sde.g2(t) / n
    euler = x_t - (col(theta_dt) * (mu - x_t) + col(g2_dt / sde.sigma(t)) * z)
    expected = (euler - optimum).abs().mean()
    got = T.matching_loss(sde, z, x_t, x0, mu, t, 1 / n)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    # the true noise is far closer to the optimum path than a zero prediction
    assert float(got) < 0.1 * float(T.matching_loss(sde, torch.zeros_like(z), x_t, x0, mu, t, 1 / n))


def test_data_loss_is_l1_of_the_clean_estimate():
    """``data``: ``mean |x̂₀ − x₀|`` with x̂₀ from the net's output (here an oracle data predictor: zero loss,
    and an offset of 0.1 everywhere gives exactly 0.1)."""
    g = gen(3)
    x0 = torch.rand(5, 3, 4, 4, generator=g, dtype=torch.float64)
    mu = x0 + 0.1

    class Oracle(torch.nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.offset = offset

        def forward(self, x, time, mu):
            return x0 + self.offset

    sde = MRSDE()
    assert float(T.training_loss(M.score_model(Oracle(0.0), sde, "data"), x0, mu, gen(4), "data")) < 1e-12
    got = T.training_loss(M.score_model(Oracle(0.1), sde, "data"), x0, mu, gen(4), "data")
    assert float(got) == pytest.approx(0.1, rel=1e-9)


def test_training_loss_draws_integer_indices():
    seen = []

    class Spy(TinyNet):
        def forward(self, x, time, mu):
            seen.append(time.clone())
            return super().forward(x, time, mu)

    sde = MRSDE()
    model = M.score_model(Spy(), sde)
    x0 = torch.rand(64, 3, 4, 4, generator=gen(0))
    for loss in T.LOSSES:
        value = T.training_loss(model, x0, x0 + 0.1, gen(1), loss)
        assert value.ndim == 0 and torch.isfinite(value)
    times = torch.cat(seen)
    torch.testing.assert_close(times, times.round(), rtol=0, atol=1e-4)  # IR-SDE index k = t·T
    assert float(times.min()) >= 1 and float(times.max()) <= sde.steps


# --- the loop -------------------------------------------------------------------------------------
def _train(tmp_path, name, **kw):
    torch.manual_seed(0)
    args = dict(net=TinyNet(), images=tiny_images(), steps=6, batch=2, patch=16, checkpoint_every=2, log_every=1,
                progress=False, threads=None, lr=1e-3)
    args.update(kw)
    return T.train_restore("denoise", tmp_path / name, **args)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = _train(tmp_path, "full")
    part = _train(tmp_path, "split", stop_at=3)  # stops at 3 with a checkpoint, off the checkpoint_every grid
    assert part.interrupted and part.step == 3
    rest = _train(tmp_path, "split")
    assert not full.interrupted and not rest.interrupted and rest.step == full.step == 6
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(rest.checkpoint)
    assert_same_weights(a, b)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][k][n]) for n, v in state.items())
    assert a["scheduler"] == b["scheduler"]
    log = [json.loads(line) for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    ref = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in ref]
    assert not [p for p in (tmp_path / "split").iterdir() if p.name.endswith(".tmp")]  # atomic writes
    assert a["rng"]["generator"].dtype == torch.uint8 and a["config"]["steps"] == 6


def test_resume_refuses_other_settings(tmp_path):
    _train(tmp_path, "run", steps=2)
    with pytest.raises(ValueError, match="other settings"):
        _train(tmp_path, "run", steps=2, lr=5e-4)
    again = _train(tmp_path, "run", steps=2, lr=5e-4, resume=False)  # afresh
    assert again.step == 2


def test_the_lr_decays_and_the_loss_is_finite(tmp_path):
    result = _train(tmp_path, "lr", steps=4, loss="noise")
    log = [json.loads(line) for line in (tmp_path / "lr" / "train_log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(1e-6)
    assert all(math.isfinite(r["loss"]) for r in log) and result.loss is not None


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="denoise, deblur, motion_deblur, inpaint"):
        T.train_restore("derain", tmp_path, 1, net=TinyNet())
    with pytest.raises(ValueError, match="matching, noise"):
        T.train_restore("denoise", tmp_path, 1, loss="l2", net=TinyNet())
    with pytest.raises(ValueError, match="steps"):
        T.train_restore("denoise", tmp_path, 0, net=TinyNet())


def test_export_load_round_trip(tmp_path):
    result = T.train_restore("denoise", tmp_path / "unet", steps=1, batch=2, patch=16, nf=4, depth=1,
                             images=tiny_images(), progress=False, threads=None)
    path = M.export_weights(result.checkpoint, tmp_path / "w.safetensors")
    config = M.read_config(path)
    assert (config["task"], config["nf"], config["depth"], config["loss"], config["trained_steps"]) == \
        ("denoise", 4, 1, "matching", 1)
    net, sde, _ = M.load_weights(path)
    assert type(net).__name__ == "ConditionalUNet" and not net.training
    assert sde.config() == MRSDE().config()
    ema = load_checkpoint(result.checkpoint)["ema"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ema.items())
    # the stand-in net's export loads into a given net
    tiny = _train(tmp_path, "tiny", steps=1)
    tiny_path = M.export_weights(tiny.checkpoint, tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match="TinyNet"):
        M.load_weights(tiny_path)
    net, _, _ = M.load_weights(tiny_path, net=TinyNet())
    assert torch.equal(net.conv.weight, load_checkpoint(tiny.checkpoint)["ema"]["conv.weight"])
    (tmp_path / "bad.safetensors").write_bytes(__import__("safetensors.torch").torch.save({"a": torch.zeros(1)}))
    with pytest.raises(ValueError, match="not a revsde restoration model"):
        M.read_config(tmp_path / "bad.safetensors")


def test_metrics_against_closed_forms():
    x = torch.rand(3, 32, 32, generator=gen(0))
    assert E.psnr(x, x) == math.inf and E.ssim(x, x) == pytest.approx(1.0)
    y = x + 0.01
    assert E.psnr(y, x) == pytest.approx(40.0, abs=1e-4)  # 10·log10(1/1e-4)


def test_evaluate_restore_smoke():
    """Smoke test (shapes and bookkeeping only): two small images, a stand-in net, 2 NFE."""
    images = {"a": torch.rand(3, 24, 40, generator=gen(0)), "b": torch.rand(3, 32, 32, generator=gen(1))}
    ev = E.evaluate_restore(TinyNet(), "denoise", nfe=2, images=images, return_images=True)
    assert ev["nfe"] == 2 and [r["image"] for r in ev["rows"]] == ["a", "b"]
    shown, restored = ev["images"]["a"]
    assert shown.shape == restored.shape == (3, 24, 40) and float(restored.min()) >= 0
    again = E.evaluate_restore(TinyNet(), "denoise", nfe=2, images={"a": images["a"]})
    assert again["rows"][0]["psnr_in"] == ev["rows"][0]["psnr_in"]  # the degradation is fixed per name
    assert 20 < ev["mean"]["psnr_in"] < 23  # σ = 25/255 is 20.2 dB, a little more after clipping


def test_cli_parser():
    from revsde.cli import Parser  # the CLI's parser class: `train` adds its arguments when it is parsed

    parser = Parser()
    train_cli.add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "restore", "--steps", "5", "-o", "out/x", "--no-resume"])
    assert (args.what, args.task, args.steps, args.output, args.resume) == ("restore", "denoise", 5, "out/x", False)
    assert (args.nf, args.depth, args.batch, args.patch, args.loss, args.threads) == (16, 3, 8, 64, "matching", 1)
    assert args.run is train_cli._run_restore


@pytest.mark.parametrize("prediction", ["velocity", "data"])
def test_noise_output_is_the_exact_conversion(prediction):
    sde = MRSDE()
    torch.manual_seed(0)
    net = TinyNet()
    x = torch.rand(4, 3, 8, 8, generator=gen(0), dtype=torch.float64)
    mu = x + 0.1
    t = torch.tensor([0.01, 0.3, 0.7, 1.0], dtype=torch.float64)
    net = net.double()
    direct = M.score_model(net, sde, prediction)(x, t, mu)
    wrapped = M.score_model(M.NoiseOutput(net, sde, prediction), sde)(x, t, mu)
    torch.testing.assert_close(wrapped.noise, direct.noise, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wrapped.data, direct.data, rtol=1e-9, atol=1e-9)


def test_a_velocity_model_exports_as_an_eps_predictor(tmp_path):
    run = _train(tmp_path, "v", steps=1, prediction="velocity")
    path = M.export_weights(run.checkpoint, tmp_path / "v.safetensors")
    net, sde, config = M.load_weights(path, net=TinyNet())
    assert config["prediction"] == "velocity" and isinstance(net, M.NoiseOutput)
    ref = TinyNet()
    ref.load_state_dict(load_checkpoint(run.checkpoint)["ema"])
    x, mu, t = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.tensor([0.2, 0.9], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(M.score_model(net, sde)(x, t, mu).noise,
                                   M.score_model(ref, sde, "velocity")(x, t, mu).noise)
    with pytest.raises(ValueError, match="noise, velocity, data"):
        _train(tmp_path, "bad", prediction="score")


def test_checkpoints_without_a_prediction_key_resume_as_noise(tmp_path):
    run = _train(tmp_path, "old", steps=2)
    state = load_checkpoint(run.checkpoint)
    del state["config"]["prediction"]  # as written before the key existed
    torch.save(state, run.checkpoint)
    assert M.read_config(M.export_weights(state, tmp_path / "o.safetensors"))["prediction"] == "noise"
    assert _train(tmp_path, "old", steps=3).step == 3
