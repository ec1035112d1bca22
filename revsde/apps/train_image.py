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
WEIGHTINGS = ("constant", "debiased")
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
    from .image_data import DigitBatches, digits

    check_positive_ints(steps=steps, batch=batch, checkpoint_every=checkpoint_every, log_every=log_every)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)} (got {weighting!r})")
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


# --- export / load -------------------------------------------------------------------------------
def export_weights(checkpoint, path) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors with its config."""
    return export_ema(checkpoint, path, FORMAT, flat_keys=("weighting", "prediction", "arch", "unet", "schedule",
                                                           "trained_steps"))


def read_config(path) -> dict:
    """The config stored in an exported ``.safetensors`` file (``ValueError`` if it is not an image model)."""
    return read_export_config(path, FORMAT, "image model")


def load_unet(path) -> tuple[nn.Module, dict]:
    """``(UNet2DModel, config)`` of an exported file, the UNet in eval mode without gradients."""
    from ..nets.model_files import load_tensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image model weights {str(path)!r} are not a file")
    config = read_config(path)
    unet = build_unet(config["unet"])
    unet.load_state_dict(load_tensors(path))
    return unet.eval().requires_grad_(False), config


def load_weights(path) -> tuple[ScoreModel, dict]:
    """``(ScoreModel, config)`` of an exported file: ``revsde.sample(model, (n, 1, 16, 16), …)`` samples it."""
    unet, config = load_unet(path)
    return score_model(unet, build_sde(config["schedule"])), config


def export_diffusers(weights_path, folder) -> Path:
    """Write the exported model as a ``DDPMPipeline`` folder: ``model_index.json``, ``unet/`` (safetensors)
    and ``scheduler/`` (``DDPMScheduler`` of the training schedule, ε-prediction). Load it with
    ``DDPMPipeline.from_pretrained(folder)`` and swap in any scheduler via ``from_config``."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet, config = load_unet(weights_path)
    scheduler = DDPMScheduler(**config["schedule"], prediction_type="epsilon")
    folder = Path(folder)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    card = {k: config[k] for k in ("weighting", "trained_steps", "elapsed_s", "batch", "lr", "seed") if k in config}
    (folder / "revsde_training.json").write_text(json.dumps({"format": FORMAT, **card}, indent=1) + "\n")
    return folder
