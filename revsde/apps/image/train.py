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

``train_noise_classifier`` trains the noise-level classifier that Denoising MCMC (``sampler="dmcmc"``)
needs: ``p(level | x)`` over K noise levels of the DDPM model's SDE (``model.SCHEDULE``), on the same
digits and batches. Levels: ``noise_levels(sde, K)``, K times uniform in half log-SNR from ``t_max``
down to one step above ``t_min`` (the reference's geometric σ grid). Per example ``k ~ U{0..K−1}``,
``x_k = α_k x_0 + σ_k z`` and the loss is the cross-entropy of k (``noise_level_loss``, the reference's
``sample_joint`` objective), so the classifier learns the posterior under a uniform prior over the
levels. Network: ``NoiseLevelClassifier`` (the reference's ``SimpleCNN``); Adam (learning rate 1e-3,
batch 100, the reference's), cosine-decayed, no gradient clipping, EMA of the weights.
"""
from __future__ import annotations

import torch
from torch import nn

from revsde.model import ScoreModel
from revsde.sde.vp import DiscreteVPSDE
from revsde.tensors import bcast
from revsde.apps.image.model import (FLOW_FORMAT, FLOW_TIME_SCALE, FORMAT, SCHEDULE, SMALL_UNET, UNetNet, build_sde,
                                     build_unet, score_model)
from revsde.apps.image.noise_classifier import FORMAT as CLASSIFIER_FORMAT
from revsde.apps.trainer import TrainResult, check_positive_ints, fit
from revsde.nets.noise_classifier import NoiseLevelClassifier, check_levels, noise_level_loss, noise_levels

WEIGHTINGS = ("constant", "debiased")
#: the flow objective's distributions of t (``flow_times``)
TIME_SAMPLINGS = ("uniform", "logit_normal")
#: config keys a resumed run must share with its checkpoint (``steps`` may grow)
RESUME_KEYS = ("weighting", "unet", "batch", "shift", "lr", "ema", "seed", "schedule", "size")
FLOW_RESUME_KEYS = ("objective", "time_sampling", "time_scale", "unet", "batch", "shift", "lr", "ema", "seed", "size")


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
    from revsde.apps.image.data import DigitBatches

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
    from revsde.apps.image.data import digits

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
    from revsde.apps.image.data import DigitBatches

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


# --- the noise-level classifier for dmcmc ---------------------------------------------------------
#: the noise classifier's config keys a resumed run must share with its checkpoint
CLASSIFIER_RESUME_KEYS = ("levels", "width", "batch", "shift", "lr", "ema", "seed", "sde", "size", "data")


def train_noise_classifier(out_dir="out/train/noise_classifier", steps: int = 4000, *, levels: int = 100,
                           batch: int = 100, lr: float = 1e-3, lr_floor: float = 1e-6, width: int = 32,
                           size: int = 16, shift: int = 1, ema: float = 0.999, threads: int | None = 1,
                           checkpoint_every: int = 500, log_every: int = 50, seed: int = 0, progress: bool = True,
                           resume: bool = True, stop_at: int | None = None, data: torch.Tensor | None = None,
                           sde=None) -> TrainResult:
    """Train (or resume) the classifier for ``steps`` steps in total; see the module docstring.

    ``levels``: their number K, or the level times themselves. ``data`` (``(N, C, H, W)``) replaces the
    digits at ``size``; ``sde`` replaces the built-in image model's SDE.
    """
    from revsde.apps.image.data import DigitBatches

    check_positive_ints(steps=steps, batch=batch, width=width, size=size)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if sde is None:
        from revsde.apps.image.model import SCHEDULE, build_sde

        sde, sde_desc = build_sde(), {"class": "DiscreteVPSDE", "schedule": SCHEDULE}
    else:
        sde_desc = {"class": type(sde).__name__, **sde.config()}
    times = noise_levels(sde, levels) if isinstance(levels, int) else check_levels(levels, sde)
    if data is None:
        from revsde.apps.image.data import digits

        data, data_desc = digits(size), f"digits:{size}"
    else:
        data_desc = f"custom:{tuple(data.shape)}"
    torch.manual_seed(seed)  # the network's initialisation
    net = NoiseLevelClassifier(data.shape[1], data.shape[-1], times, width=width)
    config = {"format": CLASSIFIER_FORMAT, **net.config(), "batch": batch, "shift": shift, "lr": lr, "lr_floor": lr_floor,
              "ema": ema, "seed": seed, "steps": steps, "sde": sde_desc, "data": data_desc}
    generator = torch.Generator().manual_seed(seed)
    batches = DigitBatches(data, batch, generator, shift=shift)

    def batch_loss():
        return noise_level_loss(net, sde, next(batches), generator)

    return fit(net, batch_loss, config, out_dir, steps, generator=generator, lr=lr, lr_floor=lr_floor, ema=ema,
               optimizer="adam", clip=None, checkpoint_every=checkpoint_every, log_every=log_every,
               progress=progress, resume=resume, resume_keys=CLASSIFIER_RESUME_KEYS, stop_at=stop_at,
               desc="train noise classifier")
