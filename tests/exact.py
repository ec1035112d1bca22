"""Closed-form references for Gaussian data under a linear SDE (shared by the sampler tests)."""
from __future__ import annotations

import torch

from revsde.nets.gmm import GaussianMixture, exact_model

MEAN = [0.5, -0.3]
COV = [[1.0, 0.3], [0.3, 0.5]]
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)


def gaussian() -> GaussianMixture:
    return GaussianMixture.gaussian(MEAN, COV)


def two_modes() -> GaussianMixture:
    """Two well-separated modes: a score that is nonlinear in x."""
    return GaussianMixture([0.3, 0.7], [[1.0, 0.5], [-0.8, -0.2]],
                           [[[0.2, 0.05], [0.05, 0.1]], [[0.15, 0.0], [0.0, 0.3]]])


def mu_for(sde):
    """μ ≠ 0 for mean-reverting SDEs (their μ is the degraded observation), None otherwise."""
    return MU if type(sde).__name__ in ("MRSDE", "OUVESDE") else None


def exact_marginal_draw(mixture: GaussianMixture, sde, t: float, n: int, mu, seed: int) -> torch.Tensor:
    mean, cov = mixture.marginal_moments(sde, t, mu)
    gen = torch.Generator().manual_seed(seed)
    return mean + torch.randn(n, mean.numel(), generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T


def pf_ode_map(mixture: GaussianMixture, sde, x: torch.Tensor, t0, t1, mu=None) -> torch.Tensor:
    return mixture.pf_ode_map(sde, x, t0, t1, mu)


def moment_tolerances(cov: torch.Tensor, n: int, z: float = 5.0):
    """``z`` standard errors of the sample mean and of each sample-covariance entry (Gaussian data)."""
    d = cov.diagonal()
    mean_tol = z * torch.sqrt(d / n)
    cov_tol = z * torch.sqrt((d[:, None] * d[None, :] + cov**2) / n)
    return mean_tol, cov_tol


def loglog_slope(ns, errors) -> float:
    """Least-squares slope of log(error) against log(1/N): the measured convergence order."""
    x = torch.log(1 / torch.tensor(ns, dtype=torch.float64))
    y = torch.log(torch.tensor(errors, dtype=torch.float64))
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum())


__all__ = ["gaussian", "two_modes", "mu_for", "exact_marginal_draw", "pf_ode_map", "moment_tolerances", "loglog_slope",
           "exact_model"]
