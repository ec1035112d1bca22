"""Quality metrics. ``distributions``: distances between sample sets and Gaussians (FD, sliced W2);
``image``: PSNR and SSIM."""
from .distributions import frechet_distance, sample_moments, sliced_wasserstein
from .image import psnr, ssim

__all__ = ["frechet_distance", "sample_moments", "sliced_wasserstein", "psnr", "ssim"]
