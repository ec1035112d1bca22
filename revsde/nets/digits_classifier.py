"""The FD-digits feature extractor: a small CNN classifier of scikit-learn's digits at 16×16.

``DigitsClassifier`` maps images ``(B, 1, 16, 16)`` in [−1, 1] (``revsde.apps.image.data.digits``)
to 10 class logits through two conv stages (32 then 64 channels, each two 3×3 convs + ReLU and a 2×2
max-pool) and a linear layer to ``FEATURE_DIM`` = 64 features, then ReLU and a linear classifier.
``features(x)`` are those 64 pre-activation values (the penultimate layer; pre-activation so no
feature is a point mass at 0, which a Gaussian fit handles badly), standardised per dimension by the
mean and std they have over all 1797 real digits (buffers set by the training script): the space in
which the Fréchet distance "FD-digits" of generated digits is measured, in units of the real
digits' own spread, which also keeps KID's cubic kernel on an O(1) scale.

``load_fd_extractor(path=None)`` loads the committed weights (``revsde/weights/fd_digits.safetensors``,
trained by ``scripts/train_fd_extractor.py``) as a ``revsde.metrics.fid.FeatureExtractor`` named
``"digits"``, whose label is ``FD-digits``. Its input may be

- the model space: ``(B, 1, H, W)`` in [−1, 1] (what the image model samples), or
- images as ``stats_of_folder`` reads files: ``(B, 3, H, W)`` RGB in [0, 1], turned to grey (the
  channel mean) and mapped to [−1, 1];

any other size is resized to 16×16 (bilinear, antialiased). So 1 channel means [−1, 1] and 3 channels
mean [0, 1]: the convention of the two callers, stated here because the values alone cannot tell.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SIZE = 16
FEATURE_DIM = 64
CLASSES = 10
FORMAT = "revsde.fd_digits/1"
NAME = "digits"
#: the committed weights
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "fd_digits.safetensors"
DEFAULT_REFERENCE = DEFAULT_WEIGHTS.with_name("fd_digits_ref.npz")


class DigitsClassifier(nn.Module):
    """A CNN for 16×16 digits in [−1, 1]: ``forward`` gives logits ``(B, 10)``, ``features`` ``(B, 64)``."""

    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM):
        super().__init__()

        def stage(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(stage(1, width), stage(width, 2 * width), nn.Flatten(),
                                  nn.Linear(2 * width * (SIZE // 4) ** 2, feature_dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, CLASSES))
        # Set after training to the features' mean and std over the real digits, so that FD-digits
        # and KID are measured in units of the digits' own spread.
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer's pre-activations, standardised by ``feature_mean`` and ``feature_std``."""
        return (self.body(x) - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """Extractor input to the classifier's ``(B, 1, 16, 16)`` in [−1, 1] (see the module docstring)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"FD-digits takes images (B, 1, H, W) in [-1, 1] or (B, 3, H, W) RGB in [0, 1] "
                         f"(got shape {tuple(images.shape)})")
    x = images
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True) * 2 - 1
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


def load_classifier(path=None) -> DigitsClassifier:
    """The classifier with the weights in ``path`` (default: the committed ``fd_digits.safetensors``), in eval mode."""
    from .model_files import load_tensors, read_metadata

    path = Path(DEFAULT_WEIGHTS if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(f"FD-digits weights {str(path)!r} are not a file "
                                "(train them with scripts/train_fd_extractor.py)")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an FD-digits classifier (metadata format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    net = DigitsClassifier(width=int(meta.get("width", 32)), feature_dim=int(meta.get("feature_dim", FEATURE_DIM)))
    net.load_state_dict(load_tensors(path))
    return net.eval().requires_grad_(False)


def load_fd_extractor(path=None):
    """The FD-digits ``FeatureExtractor`` (``name`` "digits", ``label`` "FD-digits"): images → ``(B, 64)``."""
    from ..metrics.fid import FeatureExtractor

    net = load_classifier(path)
    return FeatureExtractor(net, NAME, features=lambda images: net.features(to_model_space(images))).eval()
