"""The noise-level classifier that Denoising MCMC (``sampler="dmcmc"``) needs for the built-in image
model, as a file: ``p(level | x)`` over K noise levels of that model's SDE (``NoiseLevelClassifier``, the
reference's ``SimpleCNN``). ``export_weights`` writes a training checkpoint's EMA weights as safetensors
with the levels in the metadata; ``load_weights`` rebuilds the classifier (eval mode). Training:
``train.train_noise_classifier``.
"""
from __future__ import annotations

from pathlib import Path

from revsde.apps.exports import export_ema, read_export_config
from revsde.nets.noise_classifier import NoiseLevelClassifier

FORMAT = "revsde.noise_classifier/1"
#: the committed classifier of the built-in digits model
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "noise_classifier_digits.safetensors"


def export_weights(checkpoint, path) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors with its config."""
    return export_ema(checkpoint, path, FORMAT, flat_keys=("in_channels", "size", "width", "sde", "trained_steps"))


def read_config(path) -> dict:
    """The config stored in an exported ``.safetensors`` file (``ValueError`` if it is not ours)."""
    return read_export_config(path, FORMAT, "noise-level classifier")


def load_weights(path=None) -> NoiseLevelClassifier:
    """The classifier in ``path`` (default: the committed one of the built-in digits model), in eval mode;
    its ``levels`` are times of the SDE it was trained on (``read_config(path)["sde"]``)."""
    from revsde.nets.model_files import load_tensors

    path = Path(DEFAULT_WEIGHTS if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(f"noise-classifier weights {str(path)!r} are not a file "
                                "(train them with `revsde train noise-classifier`)")
    config = read_config(path)
    net = NoiseLevelClassifier(config["in_channels"], config["size"], config["levels"], width=config["width"])
    net.load_state_dict(load_tensors(path))
    return net.eval().requires_grad_(False)
