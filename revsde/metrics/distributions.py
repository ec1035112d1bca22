"""Distances between distributions given by moments or by samples, computed in float64.

``frechet_distance`` is the closed-form 2-Wasserstein distance squared between two Gaussians (the FD of
FID, without the network); ``sample_moments`` gives the Gaussian to feed it from samples;
``sliced_wasserstein`` compares two sample sets directly, through 1-D projections.
"""
from __future__ import annotations

import torch


def _f64(value, name: str) -> torch.Tensor:
    """``value`` (tensor, array or number) as a float64 tensor on its device (CPU for non-tensors)."""
    if torch.is_tensor(value):
        return value.detach().to(torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a tensor or array of numbers ({error})") from None


def _gaussian(mean, cov, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    mean = _f64(mean, f"mean{which}").reshape(-1)
    cov = _f64(cov, f"cov{which}")
    d = mean.shape[0]
    if cov.ndim < 2 and cov.numel() == 1 == d:  # a 1-D Gaussian given by its variance
        cov = cov.reshape(1, 1)
    if cov.shape != (d, d):
        raise ValueError(f"cov{which} must have shape ({d}, {d}) to match mean{which} of shape ({d},) "
                         f"(got {tuple(cov.shape)})")
    return mean, 0.5 * (cov + cov.T)


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues count as 0."""
    w, v = torch.linalg.eigh(cov)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """``‖m₁ − m₂‖² + tr(C₁ + C₂ − 2 (C₁^½ C₂ C₁^½)^½)``: W2² between N(m₁, C₁) and N(m₂, C₂).

    Both square roots come from symmetric eigendecompositions (``C₁^½ C₂ C₁^½`` is symmetric PSD,
    so the trace of its root is the sum of the roots of its eigenvalues) rather than a general
    ``sqrtm``, which can return complex round-off for nearly singular covariances. Means ``(D,)``,
    covariances ``(D, D)``; a 1-D Gaussian may give its variance as a scalar.
    """
    m1, c1 = _gaussian(mean1, cov1, "1")
    m2, c2 = _gaussian(mean2, cov2, "2")
    if m1.shape != m2.shape:
        raise ValueError(f"the two Gaussians differ in dimension ({m1.shape[0]} and {m2.shape[0]})")
    c2 = c2.to(c1.device)
    root1 = _psd_sqrt(c1)
    middle = root1 @ c2 @ root1
    tr_root = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0).sqrt().sum()
    fd = (m1 - m2.to(m1.device)).square().sum() + torch.trace(c1) + torch.trace(c2) - 2 * tr_root
    return max(float(fd), 0.0)  # round-off can leave −1e-16 for equal Gaussians


def _samples(x, name: str) -> torch.Tensor:
    x = _f64(x, name)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a set of samples of shape (N, D) (got {tuple(x.shape)})")
    return x


def sample_moments(x) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of samples ``x`` of shape ``(N, D)``, N ≥ 2."""
    x = _samples(x, "x")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples (got {x.shape[0]})")
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def sliced_wasserstein(x, y, projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance ``sqrt(E_θ W2²(θ·x, θ·y))`` between sample sets ``(N, D)``, ``(M, D)``.

    ``projections`` directions θ are drawn uniformly on the sphere (from ``generator``). Along each,
    W2² between the two empirical measures is ``∫₀¹ (F⁻¹(u) − G⁻¹(u))² du`` with the empirical
    quantile functions, which are step functions: on the merged breakpoints ``{i/N} ∪ {j/M}`` both
    are constant, so the integral is an exact finite sum. For N = M this is matching sorted values.
    """
    x, y = _samples(x, "x"), _samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension (got {x.shape[1]} and {y.shape[1]})")
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be an integer >= 1 (got {projections!r})")
    y = y.to(x.device)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    theta = torch.randn(d, projections, generator=generator, dtype=torch.float64,
                        device=generator.device if generator is not None else "cpu").to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)

    # Quantile levels: both quantile functions are constant between consecutive breakpoints.
    breaks, _ = torch.sort(torch.cat([torch.arange(1, n + 1, dtype=torch.float64, device=x.device) / n,
                                      torch.arange(1, m + 1, dtype=torch.float64, device=x.device) / m]))
    lower = torch.cat([breaks.new_zeros(1), breaks[:-1]])
    width, mid = breaks - lower, 0.5 * (breaks + lower)
    ix = torch.floor(mid * n).long().clamp(max=n - 1)
    iy = torch.floor(mid * m).long().clamp(max=m - 1)
    w2_squared = (width[:, None] * (px[ix] - py[iy]).square()).sum(0)
    return float(w2_squared.mean().sqrt())
