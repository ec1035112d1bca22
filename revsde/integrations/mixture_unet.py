"""A diffusers model whose ε-prediction is exact: a Gaussian mixture of small images under a DDPM schedule.

``ExactMixtureUNet`` stands where a trained ``UNet2DModel`` stands in a diffusers pipeline (same call,
same output, same ``config.sample_size`` / ``config.in_channels``), but returns the exact
``E[ε | x_t] = −σ_t ∇log p_t(x_t)`` of data ``x_0 ~ Σ_k w_k N(m_k, diag(s_k²))``. With the network's error
removed, the distance of a pipeline's samples to the mixture measures the scheduler alone.

The training table is built exactly as diffusers builds it (``DiscreteVPSDE.from_schedule``: float32 β,
float32 cumulative product; linear, scaled_linear or squaredcos_cap_v2), and a (possibly fractional) DDPM
index τ is read as the time ``t = τ / (N − 1)`` of that ``DiscreteVPSDE``, which interpolates the table
linearly in log-SNR (the reading of diffusers' σ-schedulers, which map σ back to a fractional timestep
by interpolating log σ = −λ).
"""
from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from ..nets.gmm import GaussianMixture
from ..sde.vp import DiscreteVPSDE
from ..tensors import as_time


def _component_stds(stds, k: int, d: int) -> torch.Tensor:
    """``stds`` (one number, one per component, or one ``D``-vector per component) as a ``(K, D)`` table."""
    table = torch.as_tensor(stds, dtype=torch.float64)
    if table.ndim == 0:
        table = table.expand(k)
    if table.ndim == 1 and table.shape[0] == k:
        table = table[:, None].expand(k, d)
    if table.shape != (k, d):
        raise ValueError(f"stds must be one number, {k} numbers (isotropic per component) or {k} lists of {d} "
                         f"(diagonal per component) (got shape {tuple(table.shape)})")
    if not bool((table > 0).all()):
        raise ValueError("stds must be positive")
    return table.contiguous()


class ExactMixtureUNet(ModelMixin, ConfigMixin):
    """The exact noise predictor of a diagonal Gaussian mixture of ``in_channels × sample_size²`` images.

    ``means``: K flattened images (``(K, D)`` as nested lists, D = in_channels · sample_size²); ``stds``:
    one number, K numbers or K D-vectors; ``weights``: K positive numbers (normalised here). The DDPM
    schedule keys are those of ``DDPMScheduler``'s config. ``forward(sample, timestep)`` takes a scalar or
    ``(B,)`` DDPM index (fractional ones included) and returns ``UNet2DOutput(sample=ε)`` in the sample's
    dtype, computed in float64.
    """

    @register_to_config
    def __init__(self, sample_size: int = 8, in_channels: int = 3, means=None, stds=0.1, weights=None,
                 num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear"):
        super().__init__()
        if means is None:
            raise ValueError("means is required: K flattened component means (use ExactMixtureUNet.default())")
        dim = in_channels * sample_size**2
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.numel() == 0 or means.numel() % dim:
            raise ValueError(f"means must be K flattened images of {dim} values each (in_channels × sample_size²; "
                             f"got {means.numel()} values)")
        self._means = means.reshape(-1, dim)
        k = self._means.shape[0]
        self._stds = _component_stds(stds, k, dim)
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or not bool((w > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers, one per mean (got {w.tolist()})")
        self._log_weights = torch.log(w / w.sum())
        self.sde = DiscreteVPSDE.from_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule)
        # gives the model a dtype and a device, as ModelMixin and pipelines read them off its tensors
        self.register_buffer("dtype_anchor", torch.zeros(1))
        self._tables = {}

    @classmethod
    def default(cls, sample_size: int = 8, in_channels: int = 3, std: float = 0.1, **schedule) -> "ExactMixtureUNet":
        """Six smooth coloured patterns in [−0.7, 0.7] (gradients, a blob, stripes, a ring, a checker), std
        ``std`` (one component with a per-channel std), unequal weights; ``schedule``: the DDPM keys."""
        u = torch.linspace(-1, 1, sample_size, dtype=torch.float64)
        v, u = torch.meshgrid(u, u, indexing="ij")
        r = torch.sqrt(u**2 + v**2)
        patterns = [u, v, 2 * torch.exp(-2 * r**2) - 1, torch.sin(math.pi * (u + v)), torch.cos(2 * math.pi * r / 1.4),
                    torch.sin(math.pi * u) * torch.sin(math.pi * v)]
        colours = [(1.0, 0.4, -0.6), (-0.5, 1.0, 0.3), (0.8, 0.8, 0.8), (0.2, -0.7, 1.0), (1.0, -1.0, 0.0),
                   (-0.6, 0.3, -1.0)]
        means = []
        for pattern, colour in zip(patterns, colours):
            channels = [0.7 * colour[c % 3] * pattern for c in range(in_channels)]
            means.append(torch.stack(channels).clamp(-0.7, 0.7).flatten())
        stds = [[std] * (in_channels * sample_size**2) for _ in means]
        per_channel = torch.tensor([0.6, 1.0, 1.4], dtype=torch.float64)[torch.arange(in_channels) % 3]
        stds[2] = (std * per_channel[:, None].expand(in_channels, sample_size**2)).flatten().tolist()
        weights = [0.25, 0.2, 0.15, 0.15, 0.15, 0.1]
        return cls(sample_size=sample_size, in_channels=in_channels, means=torch.stack(means).tolist(), stds=stds,
                   weights=weights, **schedule)

    def mixture(self) -> GaussianMixture:
        """The data distribution as a revsde ``GaussianMixture`` (exact moments, reference samples)."""
        return GaussianMixture(self._log_weights.exp(), self._means, torch.diag_embed(self._stds**2))

    def _on(self, device: torch.device):
        if device not in self._tables:
            self._tables[device] = tuple(v.to(device) for v in (self._means, self._stds**2, self._log_weights))
        return self._tables[device]

    def _noise_per_sample(self, x, t, means, variances, log_w):
        # x_t | k ~ N(α m_k, α² s_k² + σ²) per coordinate: responsibilities, then ε = σ Σ_k r_k (x − α m_k) / var_k
        alpha, sigma = self.sde.alpha(t)[:, None, None], self.sde.sigma(t)[:, None, None]
        diff = x[:, None, :] - alpha * means[None]                        # (B, K, D)
        var = alpha**2 * variances[None] + sigma**2                        # (B, K, D)
        log_p = log_w[None] - 0.5 * (diff**2 / var + torch.log(var)).sum(-1)
        resp = torch.softmax(log_p, dim=1)[:, :, None]
        return sigma[:, 0] * (resp * diff / var).sum(1)

    def _noise_at_one_time(self, x, t, means, variances, log_w):
        # the same sums with (x − α m)² / var expanded, so every (B, K, D) product is a (B, D) @ (D, K) one
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        inv_var = 1 / (alpha**2 * variances + sigma**2)                    # (K, D)
        scaled_means = means * inv_var
        quad = x**2 @ inv_var.T - 2 * alpha * (x @ scaled_means.T) + alpha**2 * (means * scaled_means).sum(-1)
        log_p = log_w - 0.5 * (quad - torch.log(inv_var).sum(-1))
        resp = torch.softmax(log_p, dim=1)                                 # (B, K)
        return sigma * (x * (resp @ inv_var) - alpha * (resp @ scaled_means))

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        shape, dtype = sample.shape, sample.dtype
        x = sample.reshape(shape[0], -1).to(torch.float64)
        if x.shape[1] != self._means.shape[1]:
            raise ValueError(f"the mixture's images have {self._means.shape[1]} elements "
                             f"({self.config.in_channels}×{self.config.sample_size}²); the sample has {x.shape[1]}")
        t = as_time(timestep, like=x).reshape(-1) / (self.config.num_train_timesteps - 1)
        if t.numel() not in (1, shape[0]):
            raise ValueError(f"timestep must be a scalar or hold one value per sample ({shape[0]}; got {t.numel()})")
        means, variances, log_w = self._on(x.device)
        if bool((t == t[0]).all()):  # one noise level for the batch, as pipelines call it: matrix products
            eps = self._noise_at_one_time(x, t[:1], means, variances, log_w)
        else:
            eps = self._noise_per_sample(x, t.expand(shape[0]), means, variances, log_w)
        eps = eps.to(dtype).reshape(shape)
        return UNet2DOutput(sample=eps) if return_dict else (eps,)
