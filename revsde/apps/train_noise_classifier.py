"""Training the noise-level classifier that Denoising MCMC (``sampler="dmcmc"``) needs for the built-in
image model: ``p(level | x)`` over K noise levels of that model's SDE.

Data: the built-in image model's, ``image_data.digits(16)`` (1797 digits in [−1, 1]) in random batches
with ±1 px horizontal shifts (``DigitBatches``). SDE: the model's, the discrete VP SDE of diffusers'
default DDPM table (``train_image.SCHEDULE``). Levels: ``noise_levels(sde, K)``, K times uniform in
half log-SNR from ``t_max`` down to one step above ``t_min`` (geometric in ``σ/α``, the reference's
geometric σ grid). Per example ``k ~ U{0..K−1}``, ``x_k = α_k x_0 + σ_k z`` and the loss is the
cross-entropy of k (``noise_level_loss``), the reference's ``sample_joint`` objective, so the
classifier learns the posterior under a uniform prior over the levels.

Network: ``NoiseLevelClassifier`` (the reference's ``SimpleCNN``: ReLU convolutions 32-64-128-256 with
average pooling, a linear layer to K logits). Adam (the reference's optimiser, learning rate 1e-3,
batch 100), cosine-decayed, no gradient clipping, EMA of the weights; ``trainer.fit`` gives atomic
resumable checkpoints in ``out_dir/last.pt``. ``export_weights`` writes the EMA weights as safetensors
with the levels in the metadata; ``load_weights`` rebuilds the classifier (eval mode).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..nets.noise_classifier import NoiseLevelClassifier, check_levels, noise_level_loss, noise_levels
from .trainer import TrainResult, check_positive_ints, export_ema, fit, read_export_config

FORMAT = "revsde.noise_classifier/1"
#: the committed classifier of the built-in digits model
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "noise_classifier_digits.safetensors"
#: config keys a resumed run must share with its checkpoint (``steps`` may grow)
RESUME_KEYS = ("levels", "width", "batch", "shift", "lr", "ema", "seed", "sde", "size", "data")


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
    from .image_data import DigitBatches

    check_positive_ints(steps=steps, batch=batch, width=width, size=size)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if sde is None:
        from .train_image import SCHEDULE, build_sde

        sde, sde_desc = build_sde(), {"class": "DiscreteVPSDE", "schedule": SCHEDULE}
    else:
        sde_desc = {"class": type(sde).__name__, **sde.config()}
    times = noise_levels(sde, levels) if isinstance(levels, int) else check_levels(levels, sde)
    if data is None:
        from .image_data import digits

        data, data_desc = digits(size), f"digits:{size}"
    else:
        data_desc = f"custom:{tuple(data.shape)}"
    torch.manual_seed(seed)  # the network's initialisation
    net = NoiseLevelClassifier(data.shape[1], data.shape[-1], times, width=width)
    config = {"format": FORMAT, **net.config(), "batch": batch, "shift": shift, "lr": lr, "lr_floor": lr_floor,
              "ema": ema, "seed": seed, "steps": steps, "sde": sde_desc, "data": data_desc}
    generator = torch.Generator().manual_seed(seed)
    batches = DigitBatches(data, batch, generator, shift=shift)

    def batch_loss():
        return noise_level_loss(net, sde, next(batches), generator)

    return fit(net, batch_loss, config, out_dir, steps, generator=generator, lr=lr, lr_floor=lr_floor, ema=ema,
               optimizer="adam", clip=None, checkpoint_every=checkpoint_every, log_every=log_every,
               progress=progress, resume=resume, resume_keys=RESUME_KEYS, stop_at=stop_at,
               desc="train noise classifier")


def export_weights(checkpoint, path) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors with its config."""
    return export_ema(checkpoint, path, FORMAT, flat_keys=("in_channels", "size", "width", "sde", "trained_steps"))


def read_config(path) -> dict:
    """The config stored in an exported ``.safetensors`` file (``ValueError`` if it is not ours)."""
    return read_export_config(path, FORMAT, "noise-level classifier")


def load_weights(path=None) -> NoiseLevelClassifier:
    """The classifier in ``path`` (default: the committed one of the built-in digits model), in eval mode;
    its ``levels`` are times of the SDE it was trained on (``read_config(path)["sde"]``)."""
    from ..nets.model_files import load_tensors

    path = Path(DEFAULT_WEIGHTS if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(f"noise-classifier weights {str(path)!r} are not a file "
                                "(train them with `revsde train noise-classifier`)")
    config = read_config(path)
    net = NoiseLevelClassifier(config["in_channels"], config["size"], config["levels"], width=config["width"])
    net.load_state_dict(load_tensors(path))
    return net.eval().requires_grad_(False)
