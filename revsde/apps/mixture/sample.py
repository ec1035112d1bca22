"""Unconditional sampling from the built-in model, measured against the exact answer.

The built-in model is the 2-D ring of Gaussians (``GaussianMixture.ring()``) with its exact score, so
no weights are needed and every run can say how close it came: the distribution a sampler should
reach is ``p_{t_min}``, whose moments and samples are known in closed form under every linear SDE.
``sample_gmm`` does the work and returns a ``GMMSample``; ``revsde sample`` only parses and prints.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from revsde import __version__
from revsde import samplers as samplers_mod
from revsde import sde as sde_mod
from revsde.metrics import frechet_distance, sample_moments, sliced_wasserstein
from revsde.nets.gmm import GaussianMixture, exact_model
from revsde.solve import sample
from revsde.files import atomic_output, save_figure

#: SDE names of the command line and their default instances' constructors
SDES = {"vp": sde_mod.VPSDE, "subvp": sde_mod.SubVPSDE, "ve": sde_mod.VESDE,
        "mr": sde_mod.MRSDE, "ouve": sde_mod.OUVESDE}
#: the SDEs whose marginal reverts to an observation μ (for the others μ = 0)
MEAN_REVERTING = ("mr", "ouve")
DEFAULT_MU = (1.0, -0.5)
#: offsets of the seeds for the exact reference samples and the slicing directions
REFERENCE_SEED_OFFSET = 1_000_000
PROJECTION_SEED_OFFSET = 2_000_000


@dataclass
class GMMSample:
    """The result of ``sample_gmm``.

    ``samples`` are the sampler's output ``(n, 2)``; ``reference`` are ``n`` exact draws of the target
    ``p_{t_min}`` with moments ``exact_mean``, ``exact_cov``; ``fd`` is the Fréchet distance between
    the samples' moments and the exact ones, ``swd`` the sliced Wasserstein distance to ``reference``.
    ``fd_floor`` and ``swd_floor`` are the same distances for ``n`` further exact samples in place of the
    sampler's: what sampling noise alone gives at this ``n``, the best a sampler can expect.
    ``steps`` is the number of steps taken (for adaptive samplers, the accepted steps) and ``nfe`` the
    network evaluations counted by the driver.
    """

    samples: torch.Tensor
    reference: torch.Tensor
    exact_mean: torch.Tensor
    exact_cov: torch.Tensor
    fd: float
    swd: float
    fd_floor: float
    swd_floor: float
    nfe: int
    steps: int
    sde: str
    sampler: str
    grid: str
    seed: int
    t_min: float
    mu: tuple[float, float] | None
    options: dict = field(default_factory=dict)
    projections: int = 256
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return self.samples.shape[0]

    def report(self) -> str:
        """A few lines for people: what ran, the NFE, and both distances with what they compare."""
        mu = "" if self.mu is None else f", mu ({self.mu[0]:g}, {self.mu[1]:g})"
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return "\n".join([
            f"model: gmm ring (8 modes, exact score), sde {self.sde}{mu}, sampler {self.sampler}{options}, "
            f"grid {self.grid}",
            f"samples: {self.n} (seed {self.seed})",
            f"NFE: {self.nfe} in {self.steps} steps ({self.seconds:.2f} s)",
            f"FD: {self.fd:.6f} (moments of the {self.n} samples vs the exact moments of p_t at t_min = {self.t_min:g}; "
            f"{self.n} exact samples: {self.fd_floor:.6f})",
            f"SWD: {self.swd:.6f} (vs {self.n} exact samples of p_t at t_min, {self.projections} projections; "
            f"{self.n} other exact samples: {self.swd_floor:.6f})",
        ])

    def save_npz(self, path: str | os.PathLike) -> None:
        """Arrays ``samples``, ``reference``, ``exact_mean``, ``exact_cov`` and ``mu`` (empty when μ = 0),
        and scalar metadata ``sde``, ``sampler``, ``grid``, ``steps``, ``nfe``, ``seed``, ``n``, ``fd``, ``swd``,
        ``fd_floor``, ``swd_floor``, ``t_min``, ``options`` (JSON) and ``version``; readable with ``np.load`` (no pickles). Written atomically."""
        arrays = {
            "samples": self.samples.numpy(), "reference": self.reference.numpy(),
            "exact_mean": self.exact_mean.numpy(), "exact_cov": self.exact_cov.numpy(),
            "mu": np.asarray(self.mu if self.mu is not None else [], dtype=np.float64),
            "sde": np.asarray(self.sde), "sampler": np.asarray(self.sampler), "grid": np.asarray(self.grid),
            "steps": np.asarray(self.steps), "nfe": np.asarray(self.nfe), "seed": np.asarray(self.seed),
            "n": np.asarray(self.n), "fd": np.asarray(self.fd), "swd": np.asarray(self.swd),
            "fd_floor": np.asarray(self.fd_floor), "swd_floor": np.asarray(self.swd_floor),
            "t_min": np.asarray(self.t_min), "options": np.asarray(json.dumps(self.options)),
            "version": np.asarray(__version__),
        }
        with atomic_output(path) as file:
            np.savez(file, **arrays)

    def plot(self, path: str | os.PathLike) -> None:
        """A PNG: the samples beside exact samples of the target, titled with sampler, NFE and FD. Atomic."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 4.6), layout="constrained")
        axes = fig.subplots(1, 2, sharex=True, sharey=True)
        for ax, points, label in ((axes[0], self.samples, f"{self.sampler} ({self.n} samples)"),
                                  (axes[1], self.reference, f"exact p_t at t_min = {self.t_min:g}")):
            ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=3, alpha=0.5, linewidths=0)
            if self.mu is not None:
                ax.plot(*self.mu, marker="x", color="black", markersize=8, label="μ")
                ax.legend(loc="upper right")
            ax.set_title(label)
            ax.set_aspect("equal")
        fig.suptitle(f"{self.sampler} on {self.sde}: NFE {self.nfe}, FD {self.fd:.4f}, SWD {self.swd:.4f}")
        save_figure(fig, path)


def make_sde(name: str):
    """The default instance of a command-line SDE name."""
    if name not in SDES:
        raise ValueError(f"unknown sde {name!r}; valid sdes: {', '.join(SDES)}")
    return SDES[name]()


def resolve_mu(sde: str, mu) -> tuple[float, float] | None:
    """μ for ``sde``: ``DEFAULT_MU`` when a mean-reverting SDE gets none; an error for the others."""
    if sde not in MEAN_REVERTING:
        if mu is not None:
            raise ValueError(f"mu applies only to the mean-reverting sdes ({', '.join(MEAN_REVERTING)}); "
                             f"sde {sde!r} reverts to 0 (got mu={tuple(mu)})")
        return None
    if mu is None:
        return DEFAULT_MU
    mu = tuple(float(v) for v in mu)
    if len(mu) != 2 or not all(np.isfinite(mu)):
        raise ValueError(f"mu must be two finite numbers for the 2-D model (got {mu})")
    return mu


def _device(device) -> torch.device:
    try:
        device = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but this torch build sees no CUDA device")
    return device


def sample_gmm(*, sde: str = "vp", sampler: str = "ode_heun", steps: int | None = 50, grid=None,
               n: int = 2000, seed: int = 0, mu=None, options: dict | None = None, noise: str = "gaussian",
               projections: int = 256, progress: bool = False, device=None,
               dtype: torch.dtype = torch.float32) -> GMMSample:
    """Sample the 2-D Gaussian-mixture ring with its exact score and measure the samples.

    ``sde`` is one of ``SDES``; ``mu`` (two numbers) is the mean of the mean-reverting SDEs (default
    ``DEFAULT_MU``) and refused for the others. ``sampler`` and ``options`` as in ``revsde.sample``;
    ``steps`` is ignored for adaptive samplers; ``grid`` (a name or an explicit tensor) defaults to the
    sampler's. The target is
    ``p_{t_min}`` of the SDE, whose moments and ``n`` samples (seeded ``seed + REFERENCE_SEED_OFFSET``)
    are exact; ``fd`` and ``swd`` measure the samples against them. All errors in the arguments are
    ``ValueError``\\ s, raised before any sampling.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (got {seed!r})")
    device = _device(device)
    process = make_sde(sde)
    mu = resolve_mu(sde, mu)
    smp = samplers_mod.get(sampler, **(options or {}))
    if smp.adaptive:
        steps = None  # the sampler chooses its own steps
    mixture = GaussianMixture.ring()
    model = exact_model(mixture, process)
    mu_batch = None if mu is None else torch.tensor(mu, dtype=dtype).expand(n, 2)

    start = time.perf_counter()
    solution = sample(model, shape=(n, 2), sampler=smp, steps=steps, grid=grid, mu=mu_batch, seed=seed,
                      noise=noise, progress=progress, device=device, dtype=dtype)
    seconds = time.perf_counter() - start
    samples = solution.x.detach().cpu()

    # The exact target: moments in closed form, and draws of x_{t_min} = α x_0 + (1 − α) μ + σ ε:
    # n to compare with, n more to measure the sampling-noise floor of both distances.
    t_min = process.t_min
    exact_mean, exact_cov = mixture.marginal_moments(process, t_min, mu)
    g = torch.Generator().manual_seed(seed + REFERENCE_SEED_OFFSET)
    x0 = mixture.sample(2 * n, g)
    eps = torch.randn(2 * n, 2, generator=g, dtype=torch.float64)
    exact = process.perturb(x0, t_min, eps, None if mu is None else torch.tensor(mu, dtype=torch.float64))
    reference, other = exact[:n], exact[n:]

    def distances(x):
        fd = frechet_distance(*sample_moments(x), exact_mean, exact_cov)
        directions = torch.Generator().manual_seed(seed + PROJECTION_SEED_OFFSET)  # the same for both
        return fd, sliced_wasserstein(x, reference, projections, generator=directions)

    fd, swd = distances(samples)
    fd_floor, swd_floor = distances(other)
    grid_name = smp.default_grid if grid is None else grid if isinstance(grid, str) else "explicit"
    return GMMSample(samples=samples, reference=reference, exact_mean=exact_mean, exact_cov=exact_cov,
                     fd=fd, swd=swd, fd_floor=fd_floor, swd_floor=swd_floor, nfe=solution.nfe,
                     steps=solution.steps, sde=sde, sampler=solution.sampler, grid=grid_name, seed=seed,
                     t_min=float(t_min), mu=mu, options=smp.options(), projections=projections, seconds=seconds)
