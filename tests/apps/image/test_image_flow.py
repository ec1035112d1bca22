"""The built-in rectified-flow digits model: its objective written out by hand, one training step, the
exports (a flow file no DDPM loader takes, a diffusers folder with a FlowMatch scheduler), the shipped
weights sampled in a few steps, and the flow configurations of ``revsde bench image``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from revsde.apps.image import bench as B
from revsde.apps.image import runners as R
from revsde.apps.image import configs as C
from revsde.apps.image import train as T
from revsde.apps.image import model as M
from fixtures import ROOT

ROOT = ROOT
WEIGHTS = ROOT / "revsde" / "weights"
#: a UNet2DModel small enough for tests, the built-in model's 16×16 single-channel interface
TINY_UNET = {"sample_size": 16, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
             "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8}


def gen(seed):
    return torch.Generator().manual_seed(seed)


class Recorder(nn.Module):
    """Returns ``out(x, time)`` and keeps what it was called with."""

    def __init__(self, out):
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, x, time):
        self.calls.append((x.clone(), torch.as_tensor(time).clone()))
        return self.out(x, time)


# --- the objective ----------------------------------------------------------------------------------
def test_flow_loss_is_the_velocity_error_on_the_straight_path():
    """``x_t = (1 − t) x_0 + t ε`` at ``unet`` time 1000 t, target ``ε − x_0``: redrawn here from the same
    generator, a network returning exactly that target has loss 0 and one returning 0 has ``mean (ε − x_0)²``."""
    x0 = torch.rand(6, 1, 4, 4, generator=gen(1)) * 2 - 1
    g = gen(7)
    t = torch.rand(6, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * eps

    zero = Recorder(lambda x, time: torch.zeros_like(x))
    loss = T.flow_loss(zero, x0, gen(7))
    torch.testing.assert_close(loss, (eps - x0).pow(2).mean())
    x_seen, time_seen = zero.calls[0]
    torch.testing.assert_close(x_seen, x_t)
    torch.testing.assert_close(time_seen, 1000 * t)
    exact = Recorder(lambda x, time: eps - x0)
    assert float(T.flow_loss(exact, x0, gen(7))) == 0.0


def test_logit_normal_times_are_sigmoids_of_normals_and_bad_samplings_are_refused():
    t = T.flow_times(5, gen(3), "logit_normal")
    torch.testing.assert_close(t, torch.sigmoid(torch.randn(5, generator=gen(3))))
    assert torch.equal(T.flow_times(5, gen(3)), torch.rand(5, generator=gen(3)))
    with pytest.raises(ValueError, match="time_sampling must be one of uniform, logit_normal"):
        T.flow_times(5, gen(3), "cosine")
    with pytest.raises(ValueError, match="time_sampling must be one of"):
        T.train_image_flow("unused", 1, time_sampling="lognorm")


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory):
    """Two training steps of a tiny flow model on 20 digits, exported both ways."""
    from revsde.apps.image.data import digits

    out = tmp_path_factory.mktemp("flow")
    result = T.train_image_flow(out / "run", 2, unet_config=TINY_UNET, data=digits(16)[:20], batch=4,
                                progress=False, threads=None, log_every=1)
    path = M.export_weights(result.checkpoint, out / "tiny_flow.safetensors")
    return result, path, M.export_diffusers(path, out / "tiny_flow_diffusers")


def test_one_training_step_runs_and_exports_a_flow_model(tiny_flow):
    result, path, _ = tiny_flow
    assert result.step == 2 and not result.interrupted
    log = [json.loads(line) for line in (result.checkpoint.parent / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    model, config = M.load_weights(path)
    assert config["format"] == M.FLOW_FORMAT and config["objective"] == "flow" and config["trained_steps"] == 2
    assert type(model.sde).__name__ == "RectifiedFlow" and model.sde.time_scale == 1000.0
    assert model.prediction == "flow"
    assert M.objective_of(path) == "flow"


def test_a_flow_file_is_refused_as_a_ddpm_model_and_the_reverse(tiny_flow):
    _, path, _ = tiny_flow
    for load in (M.read_config, M.load_unet, lambda p: M.load_weights(p, "ddpm")):
        with pytest.raises(ValueError, match="is a revsde rectified-flow image model.*not a DDPM"):
            load(path)
    with pytest.raises(ValueError, match="is a revsde DDPM .*not a rectified-flow image model"):
        M.load_weights(WEIGHTS / "image_digits.safetensors", "flow")


def test_the_diffusers_folder_names_the_unconditional_pipeline_and_a_flowmatch_scheduler(tiny_flow):
    _, _, folder = tiny_flow
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "UnconditionalPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["num_train_timesteps"] == 1000 and scheduler["shift"] == 1.0
    assert json.loads((folder / "revsde_training.json").read_text())["format"] == M.FLOW_FORMAT
    assert R.is_flow_model(str(folder)) and not R.is_flow_model("builtin")


# --- the shipped model ------------------------------------------------------------------------------
@pytest.mark.skipif(not (WEIGHTS / "image_digits_flow.safetensors").is_file(), reason="flow model not trained")
def test_the_shipped_flow_model_samples_digits_in_a_few_steps():
    """Smoke test of the shipped weights: 4 NFE of mrs 2 from the flow model land near [−1, 1], mostly
    background (the digits are ~60 % pixels at −1), and the file agrees with its diffusers folder."""
    import revsde
    from revsde.nets.model_files import load_tensors

    model, config = M.load_weights(WEIGHTS / "image_digits_flow.safetensors")
    assert config["trained_steps"] == 6000 and config["unet"] == M.SMALL_UNET
    x = revsde.sample(model, (8, 1, 16, 16), sampler="mrs", order=2, steps=4, seed=0, progress=False).x
    assert x.shape == (8, 1, 16, 16) and bool(torch.isfinite(x).all())
    assert -1.5 < float(x.min()) and float(x.max()) < 1.5 and float(x.mean()) < -0.2
    folder = WEIGHTS / "image_digits_flow_diffusers"
    assert R.is_flow_model("builtin-flow") and R.model_folder("builtin-flow") == folder
    unet_file = next((folder / "unet").glob("*.safetensors"))
    from safetensors.torch import load_file

    shipped, exported = load_tensors(WEIGHTS / "image_digits_flow.safetensors"), load_file(unet_file)
    assert shipped.keys() == exported.keys() and all(torch.equal(shipped[k], exported[k]) for k in shipped)


# --- the bench ----------------------------------------------------------------------------------------
def test_flow_bench_configurations_are_diffusers_flow_schedulers_and_revsde_samplers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    configs = C.default_configs(flow=True)
    labels = [c.label for c in configs]
    assert len(set(labels)) == len(labels)
    diffusers = {c.label: c for c in configs if C.family_of(c) == "diffusers"}
    assert {c.scheduler for c in diffusers.values()} == {
        "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler"}
    assert all(c.scheduler in (C.NATIVE, "RevSDEScheduler") for c in configs if C.family_of(c) == "revsde")
    assert set(C.QUICK_FLOW["labels"]) <= set(labels)
    base = R.base_config({**FlowMatchEulerDiscreteScheduler().config,
                          "_class_name": "FlowMatchEulerDiscreteScheduler"})
    assert R.is_flow(base) and base["num_train_timesteps"] == 1000 and base["shift"] == 1.0
    for config in diffusers.values():
        scheduler = config.make(base)
        scheduler.set_timesteps(5)
        sigmas = scheduler.sigmas.double()
        # every one runs on flow sigmas from (near) 1 to 0 and reads the network's output as the flow
        assert 0.99 <= float(sigmas[0]) <= 1.0 and float(sigmas[-1]) == 0.0, config.label
        assert scheduler.config.get("prediction_type", "flow_prediction") == "flow_prediction", config.label


def test_cli_benches_a_flow_folder_with_the_flow_configurations(tiny_flow, tmp_path, capsys):
    """Smoke test: ``revsde bench image`` on a flow folder runs the flow set (a native revsde row and a
    diffusers flow scheduler in the pipeline) and writes ``bench_image_flow.*``."""
    from revsde.cli import main

    _, _, folder = tiny_flow
    assert B.stem_of(str(folder)) == "bench_image_flow" and B.stem_of("builtin") == "bench_image"
    argv = ["bench", "image", "--model", str(folder), "--n", "16", "--nfe", "3", "--only", "mrs 2 shift 1.5",
            "--only", "diffusers UniPC flow", "-o", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert "| FD-digits | NFE 3 |" in capsys.readouterr().out
    data = json.loads((tmp_path / "bench_image_flow.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["mrs 2 shift 1.5", "diffusers UniPC flow"]
    assert all(r["nfe"] == 3 and r["fd"] > 0 for r in data["rows"])
    assert (tmp_path / "bench_image_flow.png").is_file() and not (tmp_path / "bench_image.json").exists()


def test_cli_trains_and_exports_the_flow_objective(tmp_path, capsys):
    from revsde.cli import main

    out, export, folder = tmp_path / "run", tmp_path / "flow.safetensors", tmp_path / "pipe"
    args = ["train", "image", "--objective", "flow", "-o", str(out), "--steps", "1", "--batch", "2",
            "--threads", "1", "--no-progress", "--export", str(export), "--diffusers-folder", str(folder)]
    with torch.random.fork_rng(devices=[]):
        assert main(args) == 0
    assert M.read_config(export, "flow")["time_sampling"] == "uniform"
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "UnconditionalPipeline"
    assert main(["train", "image", "--objective", "flow", "--weighting", "debiased", "-o", str(out),
                 "--steps", "1"]) == 2
    assert "--weighting does not apply to --objective flow" in capsys.readouterr().err
