"""Image quality: PSNR and SSIM on images in [0, 1] (``(H, W)`` or ``(H, W, C)`` arrays)."""
from __future__ import annotations

import numpy as np


def psnr(x: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    x, reference = np.asarray(x, np.float64), np.asarray(reference, np.float64)
    if x.shape != reference.shape:
        raise ValueError(f"psnr needs images of one shape (got {x.shape} and {reference.shape})")
    mse = float(np.mean((x - reference) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def ssim(x: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004, scikit-image's implementation: 7×7 uniform window),
    averaged over channels for colour images."""
    from skimage.metrics import structural_similarity

    x, reference = np.asarray(x, np.float64), np.asarray(reference, np.float64)
    if x.shape != reference.shape:
        raise ValueError(f"ssim needs images of one shape (got {x.shape} and {reference.shape})")
    channel_axis = 2 if x.ndim == 3 else None
    return float(structural_similarity(x, reference, data_range=data_range, channel_axis=channel_axis))
