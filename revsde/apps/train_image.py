"""Training the built-in unconditional image model: a small DDPM on scikit-learn's digits at 16×16.

Data: ``image_data.digits(16)`` (1797 digits in [−1, 1]) in random batches with ±1 px horizontal
shifts (``DigitBatches``). Network: a diffusers ``UNet2DModel`` (``SMALL_UNET``: 16×16, one channel,
widths 32-64-64, one res-block per level, self-attention at 8×8 and in the 4×4 middle block) that
predicts ε on diffusers' default DDPM schedule (1000 steps, β linear from 1e-4 to 0.02, ``SCHEDULE``),
so the same weights run in ``revsde.sample`` (``DiscreteVPSDE`` of the table; the network sees the
DDPM index ``model_time``) and in ``diffusers.DDPMPipeline`` with any scheduler.

Per example ``k ~ U{0..999}``, ``x_k = sqrt(ᾱ_k) x_0 + sqrt(1 − ᾱ_k) ε`` (diffusers' ``add_noise``) and
the loss is ``w_k · mean_pixels (ε̂ − ε)²``, averaged over the batch, with the ``weighting``:

- ``"constant"``: ``w_k = 1``, DDPM's simple loss;
- ``"debiased"``: ``w_k = SNR_k^{−1/2} / mean_j SNR_j^{−1/2}``, ``SNR_k = ᾱ_k / (1 − ᾱ_k)``: the debiased
  estimation loss of Yu et al., "Debias the Training of Diffusion Models" (arXiv 2310.08442), as
  diffengine's ``DeBiasEstimationLoss`` (``1/sqrt(SNR)`` on the per-example ε-MSE). Dividing by the
  mean weight over the 1000 steps keeps the loss (and so the gradient-clipping threshold and the
  learning rate) on the constant weighting's scale; a constant factor does not move the optimum.

AdamW with cosine decay, gradient clipping at 1.0 and an EMA of the weights (``trainer.fit``: atomic
resumable checkpoints in ``out_dir/last.pt``). ``export_weights`` writes the EMA weights (the
``UNet2DModel`` state dict, key for key as diffusers names it) as safetensors with their config;
``load_weights`` rebuilds the ``ScoreModel``; ``export_diffusers`` writes a ``DDPMPipeline`` folder.

``train_image_flow`` trains the same network, on the same data and budget, with the rectified-flow
objective (Liu et al., "Flow Straight and Fast", arXiv 2209.03003; the SD3 convention of Esser et al.,
arXiv 2403.03206): per example ``t ~ p(t)`` on [0, 1], ``x_t = (1 − t) x_0 + t ε``, the network called as
``unet(x_t, 1000 t)`` (diffusers' flow timestep σ · num_train_timesteps) predicts the velocity
``v = dx_t/dt = ε − x_0`` (diffusers' ``"flow_prediction"``) and the loss is ``mean (v̂ − v)²``. Its files
have their own format (``FLOW_FORMAT``), so no DDPM loader takes one for an ε-model; ``load_weights``
returns it as ``ScoreModel(net, RectifiedFlow(time_scale=1000), prediction="flow")`` and
``export_flow_diffusers`` writes it with a ``FlowMatchEulerDiscreteScheduler``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..model import ScoreModel
from ..sde.vp import DiscreteVPSDE
from ..tensors import bcast
from .trainer import TrainResult, check_positive_ints, export_ema, fit, read_export_config

FORMAT = "revsde.image/1"
FLOW_FORMAT = "revsde.image_flow/1"
#: each training objective's file format
FORMATS = {"ddpm": FORMAT, "flow": FLOW_FORMAT}
WEIGHTINGS = ("constant", "debiased")
#: the flow objective's distributions of t (``flow_times``)
TIME_SAMPLINGS = ("uniform", "logit_normal")
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
#: config keys a resumed run must share with its checkpoint (``steps`` may grow)
RESUME_KEYS = ("weighting", "unet", "batch", "shift", "lr", "ema", "seed", "schedule", "size")
FLOW_RESUME_KEYS = ("objective", "time_sampling", "time_scale", "unet", "batch", "shift", "lr", "ema", "seed", "size")


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


def loss_weights(sde: DiscreteVPSDE, weighting: str) -> torch.Tensor:
    """``w_k`` (float64, ``(N,)``) of each DDPM index for ``weighting`` (see the module docstring)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)} (got {weighting!r})")
    ac = sde.alphas_cumprod
    if weighting == "constant":
        return torch.ones_like(ac)
    inv_sqrt_snr = torch.sqrt((1 - ac) / ac)
    return inv_sqrt_snr / inv_sqrt_snr.mean()


def eps_loss(model: ScoreModel, x0: torch.Tensor, generator: torch.Generator,
             weighting: str = "constant") -> torch.Tensor:
    """One batch's loss ``mean_b w_k · mean_pixels (ε̂ − ε)²`` at ``k ~ U{0..N−1}`` per example."""
    weights = loss_weights(model.sde, weighting)
    sde, b = model.sde, x0.shape[0]
    n = sde.num_train_timesteps
    k = torch.randint(n, (b,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    ac = sde.alphas_cumprod[k]
    x_t = bcast(ac.sqrt(), x0) * x0 + bcast((1 - ac).sqrt(), x0) * eps
    pred = model(x_t, k.to(torch.float64) / (n - 1))  # model_time = the index k
    per_example = (pred.noise - eps).pow(2).reshape(b, -1).mean(1)
    return (weights[k].to(per_example.dtype) * per_example).mean()


def train_image(out_dir="out/train/image_digits", steps: int = 6000, *, weighting: str = "constant",
                batch: int = 64, lr: float = 5e-4, lr_floor: float = 1e-6, ema: float = 0.999, shift: int = 1,
                threads: int | None = 1, checkpoint_every: int = 500, log_every: int = 50, seed: int = 0,
                progress: bool = True, resume: bool = True, stop_at: int | None = None,
                unet_config: dict | None = None, data: torch.Tensor | None = None) -> TrainResult:
    """Train (or resume) the digits model for ``steps`` steps in total; see the module docstring.

    ``unet_config`` are ``UNet2DModel`` arguments (default ``SMALL_UNET``; its ``sample_size`` sets the
    image size); ``data`` replaces the digits (``(N, C, H, W)`` in [−1, 1] matching the config).
    ``stop_at`` stops (with a checkpoint) at that step, for a later call to resume.
    """
    from .image_data import DigitBatches

    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)} (got {weighting!r})")
    unet_config, size, data, data_name = _checked_setup(steps, batch, lr, ema, shift, checkpoint_every, log_every,
                                                        unet_config, data)
    if threads is not None:
        torch.set_num_threads(int(threads))
    sde = build_sde()
    torch.manual_seed(seed)  # the network's initialisation
    unet = build_unet(unet_config)
    config = {"format": FORMAT, "weighting": weighting, "prediction": "noise", "arch": "UNet2DModel",
              "unet": unet_config, "schedule": dict(SCHEDULE), "batch": batch, "shift": shift, "lr": lr,
              "lr_floor": lr_floor, "ema": ema, "seed": seed, "steps": steps, "size": size,
              "data": data_name,
              "n_params": sum(p.numel() for p in unet.parameters())}
    generator = torch.Generator().manual_seed(seed)
    batches = DigitBatches(data, batch, generator, shift=shift)
    model = score_model(unet, sde)

    def batch_loss():
        return eps_loss(model, batches(), generator, weighting)

    return fit(unet, batch_loss, config, out_dir, steps, generator=generator, lr=lr, lr_floor=lr_floor, ema=ema,
               checkpoint_every=checkpoint_every, log_every=log_every, progress=progress, resume=resume,
               resume_keys=RESUME_KEYS, stop_at=stop_at, desc=f"train image ({weighting})")


def _checked_setup(steps, batch, lr, ema, shift, checkpoint_every, log_every, unet_config, data):
    """The settings both objectives share, checked: ``(unet_config, size, data, data_name)``."""
    from .image_data import digits

    check_positive_ints(steps=steps, batch=batch, checkpoint_every=checkpoint_every, log_every=log_every)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number (got {lr!r})")
    if not 0 <= ema < 1:
        raise ValueError(f"ema must lie in [0, 1) (got {ema!r})")
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be an integer >= 0 pixels (got {shift!r})")
    unet_config = {k: list(v) if isinstance(v, tuple) else v
                   for k, v in (SMALL_UNET if unet_config is None else unet_config).items()}
    size = unet_config.get("sample_size", 16)
    data_name = "sklearn digits" if data is None else f"custom:{len(data)}"
    if data is None:
        data = digits(size)
    elif data.ndim != 4 or tuple(data.shape[1:]) != (unet_config.get("in_channels", 3), size, size):
        raise ValueError(f"data must be images (N, {unet_config.get('in_channels', 3)}, {size}, {size}) for "
                         f"the UNet config (got shape {tuple(data.shape)})")
    return unet_config, size, data, data_name


# --- the rectified-flow objective ----------------------------------------------------------------
def flow_times(n: int, generator: torch.Generator, sampling: str = "uniform") -> torch.Tensor:
    """``n`` training times in (0, 1) (float32): ``"uniform"``, or ``"logit_normal"`` (SD3's: sigmoid of a
    standard normal, which puts most examples near t = 1/2 and few near either end)."""
    if sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {', '.join(TIME_SAMPLINGS)} (got {sampling!r})")
    if sampling == "uniform":
        return torch.rand(n, generator=generator)
    return torch.sigmoid(torch.randn(n, generator=generator))


def flow_loss(net: nn.Module, x0: torch.Tensor, generator: torch.Generator,
              time_sampling: str = "uniform", time_scale: float = FLOW_TIME_SCALE) -> torch.Tensor:
    """One batch's rectified-flow loss ``mean (v̂ − v)²``: ``x_t = (1 − t) x_0 + t ε``, target ``v = ε − x_0``,
    ``v̂ = net(x_t, time_scale · t)`` (``net`` a ``UNetNet``)."""
    t = flow_times(x0.shape[0], generator, time_sampling).to(x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_t = bcast(1 - t, x0) * x0 + bcast(t, x0) * eps
    return (net(x_t, time_scale * t) - (eps - x0)).pow(2).mean()


def train_image_flow(out_dir="out/train/image_digits_flow", steps: int = 6000, *, time_sampling: str = "uniform",
                     batch: int = 64, lr: float = 5e-4, lr_floor: float = 1e-6, ema: float = 0.999, shift: int = 1,
                     threads: int | None = 1, checkpoint_every: int = 500, log_every: int = 50, seed: int = 0,
                     progress: bool = True, resume: bool = True, stop_at: int | None = None,
                     unet_config: dict | None = None, data: torch.Tensor | None = None) -> TrainResult:
    """Train (or resume) the digits network with the rectified-flow objective (``flow_loss``) for ``steps``
    steps in total: the same data, batches, network, optimiser, schedule and EMA as ``train_image``."""
    from .image_data import DigitBatches

    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {', '.join(TIME_SAMPLINGS)} (got {time_sampling!r})")
    unet_config, size, data, data_name = _checked_setup(steps, batch, lr, ema, shift, checkpoint_every, log_every,
                                                        unet_config, data)
    if threads is not None:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)  # the network's initialisation: the DDPM model's
    unet = build_unet(unet_config)
    config = {"format": FLOW_FORMAT, "objective": "flow", "prediction": "flow", "time_sampling": time_sampling,
              "time_scale": FLOW_TIME_SCALE, "arch": "UNet2DModel", "unet": unet_config, "batch": batch,
              "shift": shift, "lr": lr, "lr_floor": lr_floor, "ema": ema, "seed": seed, "steps": steps,
              "size": size, "data": data_name, "n_params": sum(p.numel() for p in unet.parameters())}
    generator = torch.Generator().manual_seed(seed)
    batches = DigitBatches(data, batch, generator, shift=shift)
    net = UNetNet(unet)

    def batch_loss():
        return flow_loss(net, batches(), generator, time_sampling)

    return fit(unet, batch_loss, config, out_dir, steps, generator=generator, lr=lr, lr_floor=lr_floor, ema=ema,
               checkpoint_every=checkpoint_every, log_every=log_every, progress=progress, resume=resume,
               resume_keys=FLOW_RESUME_KEYS, stop_at=stop_at, desc=f"train image flow ({time_sampling})")


# --- export / load -------------------------------------------------------------------------------
def export_weights(checkpoint, path) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors with its config, in the
    format of its objective (``FORMAT`` for the DDPM model, ``FLOW_FORMAT`` for the flow model)."""
    from .trainer import load_checkpoint

    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    if state["config"].get("objective") == "flow":
        return export_ema(state, path, FLOW_FORMAT, flat_keys=("objective", "prediction", "time_sampling",
                                                              "time_scale", "arch", "unet", "trained_steps"))
    return export_ema(state, path, FORMAT, flat_keys=("weighting", "prediction", "arch", "unet", "schedule",
                                                      "trained_steps"))


def objective_of(path) -> str:
    """``"ddpm"`` or ``"flow"``: the training objective of an exported file (``ValueError`` if it is neither)."""
    from ..nets.model_files import read_metadata

    found = read_metadata(path).get("format")
    for objective, fmt in FORMATS.items():
        if found == fmt:
            return objective
    read_config(path)  # raises, naming what the file is instead
    raise AssertionError("unreachable")


def read_config(path, objective: str = "ddpm") -> dict:
    """The config stored in an exported ``.safetensors`` file of ``objective`` (``"ddpm"``, the default, or
    ``"flow"``); ``ValueError`` if it is not an image model of that objective."""
    from ..nets.model_files import read_metadata

    if objective not in FORMATS:
        raise ValueError(f"objective must be one of {', '.join(FORMATS)} (got {objective!r})")
    kind = "image model"
    if read_metadata(path).get("format") in FORMATS.values():  # the other objective's: say which is which
        kind = "DDPM (ε-prediction) image model" if objective == "ddpm" else "rectified-flow image model"
    return read_export_config(path, FORMATS[objective], kind)


def load_unet(path, objective: str | None = "ddpm") -> tuple[nn.Module, dict]:
    """``(UNet2DModel, config)`` of an exported file of ``objective`` (``None``: whichever it is), the UNet in
    eval mode without gradients."""
    from ..nets.model_files import load_tensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image model weights {str(path)!r} are not a file")
    config = read_config(path, objective_of(path) if objective is None else objective)
    unet = build_unet(config["unet"])
    unet.load_state_dict(load_tensors(path))
    return unet.eval().requires_grad_(False), config


def flow_score_model(unet: nn.Module, time_scale: float = FLOW_TIME_SCALE) -> ScoreModel:
    """The ``ScoreModel`` of a velocity-predicting (``ε − x_0``) ``UNet2DModel`` on ``RectifiedFlow``."""
    from ..sde.flow import RectifiedFlow

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
        from ..integrations.pipelines import UnconditionalPipeline

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
