"""The analytic Gaussian-mixture problems of ``revsde bench gmm``: each a linear SDE with a mixture whose
score is exact at every t (``nets.gmm``), so the only error a sampler makes is its own."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from revsde import sde as sde_mod
from revsde.nets.gmm import GaussianMixture

NFES = (5, 10, 20, 50, 100)


@dataclass
class Problem:
    name: str
    sde: object
    mixture: GaussianMixture
    mu: torch.Tensor | None


def ddpm_alphas_cumprod() -> torch.Tensor:
    """diffusers' default training table (linear β from 1e-4 to 0.02, 1000 steps), as diffusers
    computes it in float32, so revsde and diffusers integrate exactly the same schedule."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    return torch.cumprod(1 - betas, 0).double()


def problems() -> dict[str, Problem]:
    return {
        # unconditional generation: the ring of 8 Gaussians under DDPM's discrete VP schedule
        "vp": Problem("vp", sde_mod.VPSDE.from_alphas_cumprod(ddpm_alphas_cumprod()), GaussianMixture.ring(), None),
        # restoration-like: clean data near the observation μ, IR-SDE's schedule (λ = 50/255, cosine, T = 100)
        "mr": Problem("mr", sde_mod.MRSDE(), GaussianMixture.ring(radius=0.5, std=0.08),
                      torch.tensor([0.3, -0.2], dtype=torch.float64)),
        # flow matching: the same ring on rectified flow (x_t = (1 − t) x_0 + t ε), the exact velocity field
        "flow": Problem("flow", sde_mod.RectifiedFlow(), GaussianMixture.ring(), None),
        # the 6-component mixture of 3×8×8 images of the diffusers pipeline bench (D = 192) on rectified flow:
        # where few-step errors, not sampling noise, set the FD
        "flow192": Problem("flow192", sde_mod.RectifiedFlow(), image_mixture(), None),
    }


FLOW_PROBLEMS = {"flow", "flow192"}


def image_mixture() -> GaussianMixture:
    """``ExactMixtureUNet.default()``'s data: six coloured 3×8×8 patterns, std 0.1, unequal weights."""
    from revsde.integrations.mixture_unet import ExactMixtureUNet

    return ExactMixtureUNet.default().mixture()
