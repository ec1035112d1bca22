"""The feature spaces ``revsde bench image`` scores samples in: FD-digits (the project's digit
classifier against the scikit-learn digits) or the FID Inception (with the user's weights file, against
an ``.npz`` of reference statistics, a folder of images, or the digits), and ``score``: FD / FID, KID and
precision/recall of a set of samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class FeatureSpace:
    """Extractor + reference: ``label`` ("FID" / "FD-…"), ``extract(x01)`` for images in [0, 1] ``(B, C, H, W)``,
    the reference moments and, when known, the reference features (for KID and precision/recall)."""

    label: str
    extract: object
    ref_mean: torch.Tensor
    ref_cov: torch.Tensor
    ref_features: torch.Tensor | None
    reference: str

    def features(self, x01: torch.Tensor, batch: int = 500) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([self.extract(part).to(torch.float64) for part in x01.split(batch)])


def digits_space(size: int, channels: int) -> FeatureSpace:
    from revsde.nets.digits_classifier import load_fd_extractor
    from revsde.apps.image.data import digits

    if channels != 1:
        raise ValueError(f"FD-digits scores grey 1-channel images; this model makes {channels} channels: "
                         "give --inception-weights (FID) instead")
    extractor = load_fd_extractor()  # grey images in [-1, 1]
    space = FeatureSpace(_label(extractor), lambda x01: extractor(x01 * 2 - 1), None, None, None,
                         f"the 1797 scikit-learn digits at {size}×{size}")
    return _with_reference(space, (digits(size) + 1) / 2)


def _with_reference(space: FeatureSpace, images: torch.Tensor, batch: int = 500) -> FeatureSpace:
    """``space`` with the reference features of ``images`` (kept, not just their moments, for KID and
    precision/recall) and their mean and unbiased covariance."""
    from revsde.metrics.fid import FeatureStats

    feats = space.features(images, batch)
    stats = FeatureStats(label=space.label).update(feats)
    space.ref_features, space.ref_mean, space.ref_cov = feats, stats.mean, stats.cov
    return space


def _label(extractor) -> str:
    from revsde.metrics.fid import extractor_label

    return extractor_label(extractor)


def inception_space(weights, ref_stats, size: int, channels: int) -> FeatureSpace:
    """The FID Inception on RGB images in [0, 1]; reference from an ``.npz``, a folder, or the digits."""
    from revsde.metrics.fid import load_stats
    from revsde.nets.fid_inception import load_fid_inception

    net = load_fid_inception(weights)
    label = _label(net)

    def extract(x01):
        return net(x01.expand(-1, 3, -1, -1) if x01.shape[1] == 1 else x01)

    if ref_stats is not None and Path(ref_stats).is_file():
        moments = load_stats(ref_stats)
        return FeatureSpace(label, extract, moments.mean, moments.cov, None, f"`{Path(ref_stats).name}`")
    if ref_stats is not None:
        from revsde.metrics.fid import _read_image, image_files

        images = torch.stack([_read_image(p) for p in image_files(ref_stats)])
        space = FeatureSpace(label, extract, None, None, None, f"the {len(images)} images in `{Path(ref_stats).name}`")
    else:
        from revsde.apps.image.data import digits

        if channels != 1:
            raise ValueError("--ref-stats is needed for a model that does not make grey digits")
        images = (digits(size) + 1) / 2
        space = FeatureSpace(label, extract, None, None, None, f"the 1797 scikit-learn digits at {size}×{size}")
    return _with_reference(space, images, batch=50)


def score(space: FeatureSpace, x: torch.Tensor, seed: int) -> dict:
    """FD/FID, KID (mean ± std) and precision/recall of raw samples ``x`` (``[-1, 1]`` scale)."""
    from revsde.metrics.distributions import frechet_distance, sample_moments
    from revsde.metrics.fid import kid, precision_recall

    if not bool(torch.isfinite(x).all()):
        return {"fd": math.inf, "kid": None, "kid_std": None, "precision": None, "recall": None, "diverged": True}
    feats = space.features(((x.to(torch.float32) + 1) / 2).clamp(0, 1))
    out = {"fd": frechet_distance(*sample_moments(feats), space.ref_mean, space.ref_cov), "diverged": False}
    if space.ref_features is not None:
        m = min(1000, len(feats), len(space.ref_features))
        k_mean, k_std = kid(feats, space.ref_features, subsets=50, subset_size=m,
                            generator=torch.Generator().manual_seed(seed))
        precision, recall = precision_recall(space.ref_features, feats, k=3)
        out.update(kid=k_mean, kid_std=k_std, precision=precision, recall=recall)
    return out
