"""The built-in unconditional digits models as networks and files: a diffusers ``UNet2DModel``
(``SMALL_UNET``) that predicts ε on diffusers' default DDPM schedule (``SCHEDULE``; ``FORMAT``), or the
rectified-flow velocity ``ε − x₀`` with time input ``1000 t`` (``FLOW_FORMAT``). ``export_weights``
writes a training checkpoint's EMA weights (key for key as diffusers names them) with their config;
``load_weights`` rebuilds the ``ScoreModel`` (``DiscreteVPSDE`` of the table, or ``RectifiedFlow``);
``export_diffusers`` writes a pipeline folder. Sampling and benchmarks read the models here and never
import training (``train``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from revsde.apps.exports import export_ema, read_export_config
from revsde.model import ScoreModel
from revsde.sde.vp import DiscreteVPSDE

FORMAT = "revsde.image/1"
FLOW_FORMAT = "revsde.image_flow/1"
#: each training objective's file format
FORMATS = {"ddpm": FORMAT, "flow": FLOW_FORMAT}
#: the flow network's time input per unit t: diffusers' FlowMatch timestep σ · num_train_timesteps
FLOW_TIME_SCALE = 1000.0
#: diffusers' default DDPM training schedule (``DDPMScheduler()``), which the model is trained on
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
#: the built-in network (1.11 M parameters): ~5 training steps/s at batch 64 on one idle CPU thread
SMALL_UNET = {"sample_size": 16, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
              "block_out_channels": [32, 64, 64],
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
              "norm_num_groups": 8, "attention_head_dim": 32}


def build_sde(schedule: dict | None = None) -> DiscreteVPSDE:
    """The discrete VP SDE of a DDPM schedule (default ``SCHEDULE``), computed as diffusers does."""
    return DiscreteVPSDE.from_schedule(**(schedule or SCHEDULE))


def build_unet(config: dict | None = None) -> nn.Module:
    """A ``diffusers.UNet2DModel`` of ``config`` (default ``SMALL_UNET``), freshly initialised."""
    from diffusers import UNet2DModel

    config = dict(SMALL_UNET if config is None else config)
    return UNet2DModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


class UNetNet(nn.Module):
    """A diffusers ``UNet2DModel`` called the revsde way: ``net(x, time) = unet(x, time).sample``, ``time``
    being the SDE's ``model_time`` (the DDPM index, a float between table points)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, time) -> torch.Tensor:
        t = torch.as_tensor(time, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        return self.unet(x, t).sample


def score_model(unet: nn.Module, sde: DiscreteVPSDE) -> ScoreModel:
    """The ``ScoreModel`` of an ε-predicting ``UNet2DModel`` on ``sde``."""
    return ScoreModel(UNetNet(unet), sde, prediction="noise")


def export_weights(checkpoint, path) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors with its config, in the
    format of its objective (``FORMAT`` for the DDPM model, ``FLOW_FORMAT`` for the flow model)."""
    from revsde.apps.exports import load_checkpoint

    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    if state["config"].get("objective") == "flow":
        return export_ema(state, path, FLOW_FORMAT, flat_keys=("objective", "prediction", "time_sampling",
                                                              "time_scale", "arch", "unet", "trained_steps"))
    return export_ema(state, path, FORMAT, flat_keys=("weighting", "prediction", "arch", "unet", "schedule",
                                                      "trained_steps"))


def objective_of(path) -> str:
    """``"ddpm"`` or ``"flow"``: the training objective of an exported file (``ValueError`` if it is neither)."""
    from revsde.nets.model_files import read_metadata

    found = read_metadata(path).get("format")
    for objective, fmt in FORMATS.items():
        if found == fmt:
            return objective
    read_config(path)  # raises, naming what the file is instead
    raise AssertionError("unreachable")


def read_config(path, objective: str = "ddpm") -> dict:
    """The config stored in an exported ``.safetensors`` file of ``objective`` (``"ddpm"``, the default, or
    ``"flow"``); ``ValueError`` if it is not an image model of that objective."""
    from revsde.nets.model_files import read_metadata

    if objective not in FORMATS:
        raise ValueError(f"objective must be one of {', '.join(FORMATS)} (got {objective!r})")
    kind = "image model"
    if read_metadata(path).get("format") in FORMATS.values():  # the other objective's: say which is which
        kind = "DDPM (ε-prediction) image model" if objective == "ddpm" else "rectified-flow image model"
    return read_export_config(path, FORMATS[objective], kind)


def load_unet(path, objective: str | None = "ddpm") -> tuple[nn.Module, dict]:
    """``(UNet2DModel, config)`` of an exported file of ``objective`` (``None``: whichever it is), the UNet in
    eval mode without gradients."""
    from revsde.nets.model_files import load_tensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image model weights {str(path)!r} are not a file")
    config = read_config(path, objective_of(path) if objective is None else objective)
    unet = build_unet(config["unet"])
    unet.load_state_dict(load_tensors(path))
    return unet.eval().requires_grad_(False), config


def flow_score_model(unet: nn.Module, time_scale: float = FLOW_TIME_SCALE) -> ScoreModel:
    """The ``ScoreModel`` of a velocity-predicting (``ε − x_0``) ``UNet2DModel`` on ``RectifiedFlow``."""
    from revsde.sde.flow import RectifiedFlow

    return ScoreModel(UNetNet(unet), RectifiedFlow(time_scale=time_scale), prediction="flow")


def load_weights(path, objective: str | None = None) -> tuple[ScoreModel, dict]:
    """``(ScoreModel, config)`` of an exported file: ``revsde.sample(model, (n, 1, 16, 16), …)`` samples it.

    A DDPM file gives ε-prediction on its ``DiscreteVPSDE``, a flow file flow prediction on
    ``RectifiedFlow(time_scale=1000)``; ``objective`` (``"ddpm"`` or ``"flow"``) refuses the other kind."""
    unet, config = load_unet(path, objective)
    if config["format"] == FLOW_FORMAT:
        return flow_score_model(unet, config["time_scale"]), config
    return score_model(unet, build_sde(config["schedule"])), config


def flow_scheduler_config(shift: float = 1.0) -> dict:
    """The ``FlowMatchEulerDiscreteScheduler`` arguments of the flow model (1000 training steps, ``shift``)."""
    return {"num_train_timesteps": int(FLOW_TIME_SCALE), "shift": shift}


def export_diffusers(weights_path, folder) -> Path:
    """Write the exported model as a diffusers pipeline folder: ``model_index.json``, ``unet/`` (safetensors)
    and ``scheduler/``. A DDPM model becomes a ``DDPMPipeline`` with the ``DDPMScheduler`` of its training
    schedule (ε-prediction; ``DDPMPipeline.from_pretrained(folder)``, any scheduler via ``from_config``); a
    flow model an ``UnconditionalPipeline`` (``revsde.integrations.pipelines``) with a
    ``FlowMatchEulerDiscreteScheduler`` (``load_pipeline(folder)``)."""
    from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    unet, config = load_unet(weights_path, None)
    folder = Path(folder)
    if config["format"] == FLOW_FORMAT:
        from revsde.integrations.pipelines import UnconditionalPipeline

        scheduler = FlowMatchEulerDiscreteScheduler(**flow_scheduler_config())
        UnconditionalPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
        keys = ("objective", "time_sampling", "time_scale", "trained_steps", "elapsed_s", "batch", "lr", "seed")
    else:
        scheduler = DDPMScheduler(**config["schedule"], prediction_type="epsilon")
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
        keys = ("weighting", "trained_steps", "elapsed_s", "batch", "lr", "seed")
    card = {k: config[k] for k in keys if k in config}
    (folder / "revsde_training.json").write_text(json.dumps({"format": config["format"], **card}, indent=1) + "\n")
    return folder
