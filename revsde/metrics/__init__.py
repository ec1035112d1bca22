"""Quality metrics. ``distributions``: distances between sample sets and Gaussians (FD, sliced W2);
``image``: PSNR and SSIM; ``speech``: wide-band PESQ, ESTOI, SI-SDR/SIR/SAR as SGMSE's calc_metrics."""
from .distributions import frechet_distance, sample_moments, sliced_wasserstein
from .image import psnr, ssim
from .speech import EnergyRatios, energy_ratios, estoi, mean_std, pesq_wb, si_sdr

__all__ = ["frechet_distance", "sample_moments", "sliced_wasserstein", "psnr", "ssim",
           "EnergyRatios", "energy_ratios", "estoi", "mean_std", "pesq_wb", "si_sdr"]
