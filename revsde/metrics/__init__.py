"""Quality metrics. ``distributions``: distances between sample sets and Gaussians (FD, sliced W2);
``image``: PSNR and SSIM; ``speech``: wide-band PESQ, ESTOI, SI-SDR/SIR/SAR as SGMSE's calc_metrics;
``fid``: FID (with the official Inception weights) or FD-<extractor>, KID, precision/recall."""
from .distributions import frechet_distance, sample_moments, sliced_wasserstein
from .fid import (FeatureExtractor, FeatureStats, Moments, fid, fid_from_features, kid, load_stats,
                  precision_recall, save_stats, stats_of_folder)
from .image import psnr, ssim
from .speech import EnergyRatios, energy_ratios, estoi, mean_std, pesq_wb, si_sdr

__all__ = ["frechet_distance", "sample_moments", "sliced_wasserstein", "psnr", "ssim",
           "FeatureExtractor", "FeatureStats", "Moments", "fid", "fid_from_features", "kid", "load_stats",
           "precision_recall", "save_stats", "stats_of_folder",
           "EnergyRatios", "energy_ratios", "estoi", "mean_std", "pesq_wb", "si_sdr"]
