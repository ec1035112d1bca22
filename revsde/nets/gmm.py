"""Gaussian mixtures: data whose score is exact under every linear SDE.

``x_0 ~ Σ_k w_k N(m_k, C_k)`` gives ``x_t ~ Σ_k w_k N(α m_k + (1 − α) μ, α² C_k + σ² I)``, so the
noise prediction ``ε = −σ ∇log p_t`` is available in closed form: the built-in model of the main job
and the exact reference of the tests.
"""
from __future__ import annotations

import math

import torch

from ..tensors import as_time


class GaussianMixture:
    """Weights ``(K,)``, means ``(K, D)``, covariances ``(K, D, D)`` (symmetric positive definite)."""

    def __init__(self, weights, means, covs):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covs.shape != (k, d, d):
            raise ValueError(f"mixture shapes disagree: weights {tuple(self.weights.shape)}, means {(k, d)}, "
                             f"covs {tuple(self.covs.shape)}; expected (K,), (K, D), (K, D, D)")
        if not bool((self.weights > 0).all()):
            raise ValueError("mixture weights must be positive")
        self.weights = self.weights / self.weights.sum()
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)
        diagonal = torch.diagonal(self.covs, dim1=-2, dim2=-1)
        #: the variances of diagonal covariances (the score then costs O(K D) per sample instead of O(K D²))
        self.variances = diagonal.clone() if bool((self.covs == torch.diag_embed(diagonal)).all()) else None
        if not bool((self.eigvals > 0).all()):
            raise ValueError("mixture covariances must be positive definite")
        self.dim = d

    @classmethod
    def gaussian(cls, mean, cov) -> "GaussianMixture":
        mean = torch.as_tensor(mean, dtype=torch.float64)
        return cls([1.0], mean[None], torch.as_tensor(cov, dtype=torch.float64)[None])

    @classmethod
    def ring(cls, modes: int = 8, radius: float = 2.0, std: float = 0.25) -> "GaussianMixture":
        """The classic 2-D benchmark: ``modes`` equal Gaussians on a circle."""
        angle = torch.arange(modes, dtype=torch.float64) * 2 * math.pi / modes
        means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        covs = torch.eye(2, dtype=torch.float64).expand(modes, 2, 2) * std**2
        return cls(torch.ones(modes), means, covs)

    # --- exact moments and samples -----------------------------------------------------------
    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        m = self.mean()
        centred = self.means - m
        return (self.weights[:, None, None] * (self.covs + centred[:, :, None] * centred[:, None, :])).sum(0)

    def marginal_moments(self, sde, t: float, mu=None):
        """Mean and covariance of ``x_t`` (``mu`` a ``(D,)`` vector or None)."""
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        mean = a * self.mean() + (0 if mu is None else (1 - a) * torch.as_tensor(mu, dtype=torch.float64))
        return mean, a**2 * self.cov() + s**2 * torch.eye(self.dim, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = torch.einsum("nij,nj->ni", self.eigvecs[k], self.eigvals[k].sqrt() * z)
        return self.means[k] + scaled

    def pf_ode_map(self, sde, x: torch.Tensor, t0, t1, mu=None) -> torch.Tensor:
        """The exact probability-flow ODE map of Gaussian data (K = 1) from ``t0`` to ``t1`` (per-sample).

        In the eigenbasis of C, ``(y_t − α_t m̃)/sqrt(α_t² d + σ_t²)`` is constant along the flow
        (``y = x − μ``, ``m̃ = m − μ``): substituting into ``dy/dt = f y − ½ g² ∇log p_t`` checks it.
        """
        if self.means.shape[0] != 1:
            raise ValueError("the PF-ODE map is closed-form for a single Gaussian (K = 1) only")
        (m,), (vals,), (vecs,) = self.means, self.eigvals, self.eigvecs
        t0 = as_time(t0).expand(x.shape[0])[:, None]
        t1 = as_time(t1).expand(x.shape[0])[:, None]
        shift = torch.zeros_like(m) if mu is None else torch.as_tensor(mu, dtype=torch.float64)
        a0, s0, a1, s1 = sde.alpha(t0), sde.sigma(t0), sde.alpha(t1), sde.sigma(t1)
        m_tilde = m - shift
        xi = ((x.to(torch.float64) - shift - a0 * m_tilde) @ vecs) / torch.sqrt(a0**2 * vals + s0**2)
        return (shift + a1 * m_tilde + (xi * torch.sqrt(a1**2 * vals + s1**2)) @ vecs.T).to(x.dtype)

    # --- the score under a linear SDE -----------------------------------------------------------
    def noise(self, sde, x: torch.Tensor, t, mu: torch.Tensor | None = None) -> torch.Tensor:
        """Exact ``ε = −σ_t ∇log p_t(x)``; ``x`` of shape ``(B, D)`` or ``(B, …)`` with D elements."""
        return self.denoise(sde, x, t, mu)[0]

    def denoise(self, sde, x: torch.Tensor, t, mu: torch.Tensor | None = None):
        """Exact ``(ε̂, x̂₀)``: the noise ``−σ_t ∇log p_t(x)`` and the posterior mean ``E[x₀ | x_t = x]``
        (finite where α = 0, as rectified flow's prior, where ``x̂₀`` is the data's mean)."""
        shape, dtype = x.shape, x.dtype
        x = x.reshape(shape[0], -1).to(torch.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"the mixture is {self.dim}-dimensional; the state has {x.shape[1]} elements per sample")
        t = as_time(t, like=x)
        t = t.expand(shape[0]) if t.ndim == 0 else t
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        diagonal = self.variances is not None
        means, vecs, vals = (None if v is None else v.to(x.device) for v in
                             (self.means, None if diagonal else self.eigvecs,
                              self.variances if diagonal else self.eigvals))
        shift = None if mu is None else mu.reshape(shape[0], -1).to(torch.float64)
        diff = x[:, None, :] - a[:, None, :] * means[None]                 # (B, K, D)
        if shift is not None:
            diff = diff - (1 - a)[:, None, :] * shift[:, None, :]
        rotate = (lambda v: v) if diagonal else (lambda v: torch.einsum("kij,bkj->bki", vecs, v))
        z = diff if diagonal else torch.einsum("kji,bkj->bki", vecs, diff)  # in each component's eigenbasis
        var = a[:, None, :] ** 2 * vals[None] + s[:, None, :] ** 2          # (B, K, D)
        log_p = torch.log(self.weights.to(x.device))[None] - 0.5 * ((z**2 / var) + torch.log(var)).sum(-1)
        resp = torch.softmax(log_p, dim=1)[:, :, None]                      # (B, K, 1)
        score = (resp * -rotate(z / var)).sum(1)
        # E[x0 | x, k] = m_k + C_k α (α² C_k + σ² I)⁻¹ (y − α m̃_k), in the eigenbasis of C_k
        x0 = (resp * (means[None] + rotate(a[:, None, :] * vals[None] * z / var))).sum(1)
        return (-s * score).to(dtype).reshape(shape), x0.to(dtype).reshape(shape)


class MixtureDenoiser(torch.nn.Module):
    """The mixture's exact prediction as a network ``net(x, t, mu=None)`` (t = continuous time):
    ``"noise"`` (ε̂), ``"data"`` (x̂₀) or ``"flow"`` (``α′ (x̂₀ − μ) + σ′ ε̂``).

    Use with ``ScoreModel(MixtureDenoiser(gmm, sde), sde, "noise", time_fn=lambda t: t)``.
    """

    def __init__(self, mixture: GaussianMixture, sde, prediction: str = "noise"):
        super().__init__()
        if prediction not in ("noise", "data", "flow"):
            raise ValueError(f"MixtureDenoiser predicts 'noise', 'data' or 'flow' (got {prediction!r})")
        self.mixture, self.sde, self.prediction = mixture, sde, prediction

    def forward(self, x, t, mu=None):
        if self.prediction == "noise":
            return self.mixture.noise(self.sde, x, t, mu)
        eps, x0 = self.mixture.denoise(self.sde, x, t, mu)
        if self.prediction == "data":
            return x0
        t = as_time(t, like=x).expand(x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))
        y0 = x0 if mu is None else x0 - mu
        return (self.sde.alpha_dot(t) * y0 + self.sde.sigma_dot(t) * eps).to(x.dtype)


def exact_model(mixture: GaussianMixture, sde, prediction: str | None = None):
    """A ``ScoreModel`` whose prediction is exact for ``mixture`` under ``sde``: ``"noise"`` by default,
    ``"flow"`` where α reaches 0 at ``t_max`` (rectified flow: ε̂ says nothing of x₀ there)."""
    from ..model import ScoreModel

    if prediction is None:
        prediction = "flow" if float(sde.alpha(sde.t_max)) == 0 else "noise"
    return ScoreModel(MixtureDenoiser(mixture, sde, prediction), sde, prediction, time_fn=lambda t: t)
