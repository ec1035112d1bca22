"""Fréchet distance, KID and precision/recall between image sets in the feature space of a network.

The number is called **FID** only when the features are those of the FID Inception with the official
weights (``revsde.nets.fid_inception``); in any other feature space it is ``FD-<extractor name>``.
The name is the extractor's ``label`` property, carried by the statistics it produces, so a report
cannot call the distance of a project-trained classifier "FID".

``FeatureStats`` accumulates feature moments in float64 as sums (count, Σx, Σxxᵀ), which add across
batches, processes and files: ``tensors()`` / ``from_tensors`` hand them to ``torch.distributed.all_reduce``.
Reference statistics are ``.npz`` files with pytorch-fid's keys ``mu`` and ``sigma``.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .distributions import frechet_distance, sample_moments

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _features(x, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x))
    x = x.detach().to(torch.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be features of shape (N, D) (got {tuple(x.shape)})")
    return x


@dataclass(frozen=True, eq=False)
class Moments:
    """Mean ``(D,)`` and covariance ``(D, D)`` in float64; ``label`` names the feature space when known."""

    mean: torch.Tensor
    cov: torch.Tensor
    label: str | None = None


class FeatureStats:
    """Streaming mean and covariance of features: float64 sums that merge by addition.

    ``update(features)`` adds a batch ``(B, D)``; ``merge`` (or ``+``) combines two sets, so the stats of
    two halves merged equal those of the whole. The covariance is the unbiased one (``np.cov``, as
    pytorch-fid). ``label`` names the feature space ("FID" or "FD-…"); sets with different labels
    refuse to merge or be compared.
    """

    def __init__(self, dim: int | None = None, *, label: str | None = None):
        self.label = label
        self.count = 0
        self.total = None if dim is None else torch.zeros(dim, dtype=torch.float64)
        self.outer = None if dim is None else torch.zeros(dim, dim, dtype=torch.float64)

    @property
    def dim(self) -> int | None:
        return None if self.total is None else self.total.shape[0]

    def update(self, features) -> FeatureStats:
        x = _features(features, "features")
        if self.total is None:
            self.total = x.new_zeros(x.shape[1])
            self.outer = x.new_zeros(x.shape[1], x.shape[1])
        if x.shape[1] != self.dim:
            raise ValueError(f"features of dimension {x.shape[1]} do not add to stats of dimension {self.dim}")
        x = x.to(self.total.device)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """A new ``FeatureStats`` of the union of both sets."""
        _check_labels(self.label, other.label)
        if self.dim is not None and other.dim is not None and self.dim != other.dim:
            raise ValueError(f"cannot merge stats of dimensions {self.dim} and {other.dim}")
        merged = FeatureStats(label=self.label or other.label)
        merged.count = self.count + other.count
        parts = [s for s in (self, other) if s.total is not None]
        if parts:
            merged.total = sum(s.total.to(parts[0].total.device) for s in parts)
            merged.outer = sum(s.outer.to(parts[0].total.device) for s in parts)
        return merged

    __add__ = merge

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(count, Σx, Σxxᵀ)`` as float64 tensors (copies) to ``all_reduce`` with SUM across processes."""
        if self.total is None:
            raise ValueError("these stats hold no features yet")
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.total.device)
        return count, self.total.clone(), self.outer.clone()

    @classmethod
    def from_tensors(cls, count, total, outer, *, label: str | None = None) -> FeatureStats:
        stats = cls(label=label)
        stats.count = int(round(float(count.reshape(-1)[0])))
        stats.total, stats.outer = total.to(torch.float64), outer.to(torch.float64)
        return stats

    @property
    def mean(self) -> torch.Tensor:
        if self.count < 1:
            raise ValueError("the mean of an empty set of features is undefined")
        return self.total / self.count

    @property
    def cov(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors (got {self.count})")
        mean = self.mean
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return 0.5 * (cov + cov.T)

    def moments(self) -> Moments:
        return Moments(self.mean, self.cov, self.label)


def _check_labels(a: str | None, b: str | None) -> None:
    if a is not None and b is not None and a != b:
        raise ValueError(f"statistics from different feature spaces ({a} and {b}) cannot be combined or compared")


def _moments(stats, name: str) -> Moments:
    if isinstance(stats, FeatureStats):
        return stats.moments()
    if isinstance(stats, Moments):
        return stats
    if isinstance(stats, (tuple, list)) and len(stats) == 2:
        return Moments(*stats)
    raise ValueError(f"{name} must be FeatureStats, Moments or a (mu, sigma) pair (got {type(stats).__name__})")


def fid(stats_a, stats_b) -> float:
    """The Fréchet distance between two feature Gaussians (``FeatureStats``, ``Moments`` or ``(mu, sigma)``).

    It is FID when both come from the official FID Inception (their ``label`` says which); statistics
    labelled with different feature spaces are refused.
    """
    a, b = _moments(stats_a, "stats_a"), _moments(stats_b, "stats_b")
    _check_labels(a.label, b.label)
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def fid_from_features(features_a, features_b) -> float:
    """The Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)``, ``(M, D)``."""
    return frechet_distance(*sample_moments(_features(features_a, "features_a")),
                            *sample_moments(_features(features_b, "features_b")))


# ---------------------------------------------------------------- reference statistics files


def save_stats(path, mu, sigma, *, label: str | None = None) -> None:
    """``mu`` and ``sigma`` (float64) to ``path`` as pytorch-fid's ``.npz``, written atomically.

    ``label`` is stored as an extra key ``label`` that pytorch-fid, clean-fid and EDM ignore.
    """
    from ..files import atomic_output

    arrays = {"mu": np.asarray(torch.as_tensor(mu).detach().cpu(), dtype=np.float64),
              "sigma": np.asarray(torch.as_tensor(sigma).detach().cpu(), dtype=np.float64)}
    d = arrays["mu"].reshape(-1).shape[0]
    if arrays["mu"].ndim != 1 or arrays["sigma"].shape != (d, d):
        raise ValueError(f"mu must have shape (D,) and sigma (D, D) (got {arrays['mu'].shape} and "
                         f"{arrays['sigma'].shape})")
    if label is not None:
        arrays["label"] = np.array(str(label))
    with atomic_output(path) as file:
        np.savez_compressed(file, **arrays)


def load_stats(path) -> Moments:
    """The ``mu`` / ``sigma`` of a reference ``.npz`` (pytorch-fid's layout) as float64 ``Moments``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {str(path)!r} is not a file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files} if hasattr(data, "files") else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    missing = ["mu", "sigma"] if arrays is None else [k for k in ("mu", "sigma") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} array (keys: {', '.join(arrays or [])}); reference "
                         f"statistics are .npz files with 'mu' and 'sigma' as pytorch-fid writes them")
    mu, sigma = arrays["mu"], arrays["sigma"]
    label = str(arrays["label"]) if "label" in arrays else None
    d = mu.reshape(-1).shape[0]
    if sigma.shape != (d, d):
        raise ValueError(f"{path}: sigma has shape {sigma.shape}, expected ({d}, {d}) to match mu")
    return Moments(torch.from_numpy(mu.reshape(-1).astype(np.float64)),
                   torch.from_numpy(sigma.astype(np.float64)), label)


# ---------------------------------------------------------------- folders of images


def image_files(folder) -> list[Path]:
    """The image files directly in ``folder`` (not its subfolders), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(torch.float32) / 255


def extractor_label(extractor) -> str:
    """The name of the distance in ``extractor``'s feature space: its ``label`` ("FID" or "FD-…")."""
    label = getattr(extractor, "label", None)
    if not isinstance(label, str) or not (label == "FID" or label.startswith("FD-")):
        raise ValueError(f"a feature extractor must say what its distance is called: a `label` property "
                         f"'FID' or 'FD-<name>' (got {label!r} on {type(extractor).__name__})")
    return label


def stats_of_folder(folder, extractor, batch: int = 50, *, progress: bool = True) -> FeatureStats:
    """``FeatureStats`` of ``extractor``'s features of the PNG/JPEG images in ``folder``, labelled by it.

    Images are read as RGB in [0, 1] (as pytorch-fid's ``ToTensor``) and passed ``batch`` at a time;
    consecutive images of one size share a batch. The extractor maps ``(B, 3, H, W)`` to ``(B, D)``.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1 (got {batch!r})")
    from tqdm.auto import tqdm

    label = extractor_label(extractor)
    files = image_files(folder)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
    stats, pending = FeatureStats(label=label), []

    def flush():
        if pending:
            with torch.inference_mode():
                features = extractor(torch.stack(pending))
            stats.update(features)  # outside inference mode, so the sums stay ordinary tensors
            pending.clear()

    for path in tqdm(files, desc=f"{label} stats", unit="image", disable=not progress):
        try:
            image = _read_image(path)
        except OSError as error:
            raise ValueError(f"{path}: not a readable image ({error})") from None
        if pending and (len(pending) == batch or image.shape != pending[0].shape):
            flush()
        pending.append(image)
    flush()
    return stats


class FeatureExtractor(nn.Module):
    """A project network used as a feature extractor, named so its distances read ``FD-<name>``.

    ``features(images)`` maps images in [0, 1], ``(B, 3, H, W)``, to ``(B, D)`` (default: ``net`` itself).
    """

    def __init__(self, net: nn.Module, name: str, features=None):
        super().__init__()
        if not isinstance(name, str) or not name or name.lower().startswith(("fid", "inception-v3")):
            raise ValueError(f"an extractor name must be a non-empty string that does not claim to be the FID "
                             f"Inception (got {name!r}); the official network is revsde.nets.fid_inception")
        self.net, self.name, self._features = net, name, features

    @property
    def label(self) -> str:
        return f"FD-{self.name}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        param = next(self.net.parameters(), None)
        if param is not None:
            images = images.to(device=param.device, dtype=param.dtype)
        out = (self._features or self.net)(images)
        return out.flatten(1)


# ---------------------------------------------------------------- KID, precision and recall


def kid(features_a, features_b, subsets: int = 100, subset_size: int = 1000, *,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): mean and std over ``subsets`` of the unbiased MMD².

    Kernel ``k(x, y) = (x·y / D + 1)³``; each subset draws ``subset_size`` vectors of each set without
    replacement, as torch-fidelity. The estimator is unbiased, so it can be slightly negative.
    """
    x, y = _features(features_a, "features_a"), _features(features_b, "features_b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"the feature sets differ in dimension ({x.shape[1]} and {y.shape[1]})")
    for name, value in (("subsets", subsets), ("subset_size", subset_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "subset_size" else 1):
            raise ValueError(f"KID {name} must be an integer >= {2 if name == 'subset_size' else 1} (got {value!r})")
    if subset_size > min(len(x), len(y)):
        raise ValueError(f"KID subset_size {subset_size} exceeds the smaller set ({len(x)} and {len(y)} features)")
    y = y.to(x.device)
    m, d = subset_size, x.shape[1]
    mmds = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=generator)[:m].to(x.device)]
        b = y[torch.randperm(len(y), generator=generator)[:m].to(x.device)]
        k_aa, k_bb, k_ab = ((u @ v.T / d + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
        within = (k_aa.sum() - k_aa.diagonal().sum() + k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
        mmds.append(within - 2 * k_ab.sum() / (m * m))
    mmds = torch.stack(mmds)
    return float(mmds.mean()), float(mmds.std(unbiased=False))


def _knn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in its own set (itself excluded)."""
    return torch.cat([torch.cdist(part, x).kthvalue(k + 1, dim=1).values for part in x.split(chunk)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """The fraction of ``points`` inside at least one ball (centre, radius)."""
    inside = [(torch.cdist(part, centres) <= radii).any(dim=1) for part in points.split(chunk)]
    return float(torch.cat(inside).to(torch.float64).mean())


def precision_recall(real, fake, k: int = 3, *, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real`` features.

    Each set's manifold is the union of balls around its points, of radius the distance to the k-th
    nearest neighbour. Precision: the fraction of fake points on the real manifold; recall: the
    fraction of real points on the fake manifold. Distances are computed ``chunk`` rows at a time.
    """
    x, y = _features(real, "real"), _features(fake, "fake")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"the feature sets differ in dimension ({x.shape[1]} and {y.shape[1]})")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k >= min(len(x), len(y)):
        raise ValueError(f"k must be an integer in [1, {min(len(x), len(y)) - 1}] for sets of {len(x)} and "
                         f"{len(y)} features (got {k!r})")
    y = y.to(x.device)
    precision = _covered(y, x, _knn_radii(x, k, chunk), chunk)
    recall = _covered(x, y, _knn_radii(y, k, chunk), chunk)
    return precision, recall
