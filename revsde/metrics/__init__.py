"""Quality metrics. ``distributions``: distances between sample sets and Gaussians (FD, sliced W2)."""
from .distributions import frechet_distance, sample_moments, sliced_wasserstein

__all__ = ["frechet_distance", "sample_moments", "sliced_wasserstein"]
