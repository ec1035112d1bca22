"""Noise-level classifiers for Denoising MCMC (Kim & Ye 2022): ``p(level | x̃)`` over K noise levels.

The levels are K times ``t_0 > t_1 > … > t_{K−1}`` of the SDE; index 0 is the noisiest (t_max), as in
the reference's σ grid. ``noise_levels(sde, K)`` spaces them uniformly in the half log-SNR
``λ_t = log(α_t/σ_t)`` from ``t_max`` down to one λ-step above ``t_min``. Uniform in λ is geometric
in the VE-equivalent ``σ̃ = σ_t/α_t = e^{−λ}``: for a VE SDE it is the reference's geometric σ grid
(``σ_k = σ_min (σ_max/σ_min)^{t_k}``), and it means the same thing for every linear SDE. The last
level sits one step above ``t_min`` (the reference's smallest σ also sits above its integration
floor), so every chain has a non-empty interval left to integrate.

A classifier sees the VE-equivalent state ``x̃ = (x − μ)/α_t = (x_0 − μ) + σ̃_t z``, not x: in x̃ the
levels differ by the noise's scale, as in the reference (VE, where x̃ is x), while in x a VP state near
t_max looks like N(0, I) at every level. It is any callable ``x̃ -> logits (B, K)`` with an attribute
``levels`` (the K times); with a μ it is called ``classifier(x̃, mu=mu)``. Two are here:

- ``ExactNoisePosterior(mixture, sde, levels, mu=None)``: for a ``GaussianMixture`` the posterior under a
  uniform prior over the levels is exact, ``logits_k = log p̃_k(x̃)`` in closed form
  (``x̃ ~ Σ_j w_j N(m_j − μ, C_j + σ̃_k² I)``);
- ``NoiseLevelClassifier(in_channels, size, levels)``: a small CNN in the spirit of the reference's
  ``SimpleCNN`` (ReLU convolutions 32-64-128-256 with 2×2 average pooling, then a linear layer to K
  logits; a global average pool before it so any image size works), trained with
  ``noise_level_loss``: cross-entropy of ``k`` given ``x̃ = x_0 − μ + σ̃_k z``, ``k ~ U{0..K−1}`` (the
  reference's ``sample_joint`` on the geometric σ̃ grid), so it learns ``p(k | x̃)`` under the uniform
  prior the exact posterior uses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..grids import check_levels, noise_levels  # noqa: F401  (the levels of a classifier are a grid)
from ..tensors import as_time, bcast


def _levels_of(sde, levels) -> torch.Tensor:
    if isinstance(levels, int) and not isinstance(levels, bool):
        return noise_levels(sde, levels)
    return check_levels(levels, sde)


class ExactNoisePosterior:
    """The exact ``p(level | x̃)`` of Gaussian-mixture data: ``logits_k = log p̃_k(x̃)`` (uniform prior), with
    ``x̃ = (x − μ)/α ~ Σ_j w_j N(m_j − μ, C_j + σ̃_k² I)``, ``σ̃_k = σ/α`` at ``t_k``, evaluated in each
    component's eigenbasis. ``levels`` is a ``(K,)`` tensor of times or a count for ``noise_levels``;
    ``mu`` a default μ (a ``(D,)`` vector or per-sample ``(B, …)``), overridden by the ``mu`` of a call.
    """

    def __init__(self, mixture, sde, levels, mu=None):
        self.mixture, self.sde, self.mu = mixture, sde, mu
        self.levels = _levels_of(sde, levels)
        self.sigma_tilde = torch.exp(-sde.log_snr(self.levels))

    def __call__(self, x_tilde: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        gmm = self.mixture
        batch = x_tilde.shape[0]
        x = x_tilde.reshape(batch, -1).to(torch.float64)
        if x.shape[1] != gmm.dim:
            raise ValueError(f"the mixture is {gmm.dim}-dimensional; the state has {x.shape[1]} elements per sample")
        mu = self.mu if mu is None else mu
        dev = x.device
        means, vecs, vals = (v.to(dev) for v in (gmm.means, gmm.eigvecs, gmm.eigvals))
        diff = (x[:, None, :] - means[None])[:, None]                                      # (B, 1, J, D)
        if mu is not None:
            m = torch.as_tensor(mu, dtype=torch.float64, device=dev).reshape(-1, gmm.dim).expand(batch, -1)
            diff = diff + m[:, None, None, :]
        z = torch.einsum("jdi,bkjd->bkji", vecs, diff)
        var = vals[None, None] + self.sigma_tilde.to(dev)[None, :, None, None] ** 2         # (1, K, J, D)
        log_n = -0.5 * (z**2 / var + torch.log(var) + math.log(2 * math.pi)).sum(-1)        # (B, K, J)
        log_n = torch.log(gmm.weights.to(dev)) + log_n
        if log_n.shape[-1] == 1:
            return log_n[..., 0]                                                               # (B, K)
        top = log_n.amax(-1, keepdim=True)  # logsumexp by hand: torch's is slow on a short last axis
        return (top + torch.log(torch.exp(log_n - top).sum(-1, keepdim=True)))[..., 0]


class NoiseLevelClassifier(nn.Module):
    """A CNN ``(B, in_channels, size, size) -> (B, K)`` logits over the noise levels ``levels`` (times).

    Four 3×3 ReLU convolutions of ``width``·(1, 2, 4, 8) channels, each followed by 2×2 average pooling
    while the image is larger than 1 pixel, a global average pool and a linear layer to K logits: the
    reference's ``SimpleCNN`` with a size-independent head. ``levels`` is kept as a float64 attribute
    (not a buffer: casting the network to float32 must not round the times).
    """

    def __init__(self, in_channels: int, size: int, levels, width: int = 32):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("size", size), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer (got {value!r})")
        self.in_channels, self.size, self.width = in_channels, size, width
        self.levels = check_levels(levels)
        layers, c_in, side = [], in_channels, size
        for mult in (1, 2, 4, 8):
            layers += [nn.Conv2d(c_in, width * mult, 3, padding=1), nn.ReLU()]
            if side > 1:
                layers.append(nn.AvgPool2d(2, ceil_mode=True))
                side = (side + 1) // 2
            c_in = width * mult
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, self.levels.numel())

    def forward(self, x: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        if mu is not None:
            raise ValueError("NoiseLevelClassifier is unconditional: it takes no mu")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"the classifier takes images (B, {self.in_channels}, H, W) (got {tuple(x.shape)})")
        dtype = self.head.weight.dtype
        return self.head(self.body(x.to(dtype)))

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "size": self.size, "width": self.width,
                "levels": self.levels.tolist()}


def noise_level_loss(classifier, sde, x0: torch.Tensor, generator: torch.Generator,
                     mu: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``k`` from ``x̃ = x_0 − μ + σ̃_k z``, ``k ~ U{0..K−1}``, ``σ̃_k = σ/α`` at ``t_k`` (the
    reference's ``sample_joint``): its minimiser is the posterior under a uniform prior over levels."""
    levels = classifier.levels
    k = torch.randint(levels.numel(), (x0.shape[0],), generator=generator)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    sigma_tilde = torch.exp(-sde.log_snr(levels[k]))
    x_tilde = (x0 if mu is None else x0 - mu) + bcast(sigma_tilde, x0) * z
    logits = classifier(x_tilde) if mu is None else classifier(x_tilde, mu=mu)
    return F.cross_entropy(logits.float(), k.to(logits.device))
