"""Shared fixtures: one instance of every SDE family and schedule the engine serves.

``ALL_SDES`` is a list of ``(id, factory)``; the ``sde`` fixture is parametrized over it, so a test that
takes ``sde`` runs once per SDE. Factories (not instances) keep tests from sharing mutable state.
"""
from __future__ import annotations

import pytest
import torch

from revsde import sde as S

# The tests' tensors are small: intra-op threads only add synchronisation, and on a loaded 2-core
# machine (CI, parallel jobs) they make tiny einsums and softmaxes 10-1000x slower.
torch.set_num_threads(1)


def ddpm_linear_alphas_cumprod(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The DDPM training table: ``ᾱ_i = Π_{j≤i} (1 − β_j)`` with β linear from 1e-4 to 0.02."""
    betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def assert_same_weights(a: dict, b: dict) -> None:
    """Two training checkpoints (``trainer.fit``'s dicts) hold bit-identical weights and EMA weights."""
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k}"


ALL_SDES = [
    ("vp", lambda: S.VPSDE()),
    ("vp_cosine", lambda: S.VPSDE.cosine()),
    ("vp_ddpm", lambda: S.VPSDE.from_alphas_cumprod(ddpm_linear_alphas_cumprod())),
    ("subvp", lambda: S.SubVPSDE()),
    ("ve", lambda: S.VESDE()),
    ("mr_cosine", lambda: S.MRSDE()),
    ("mr_linear", lambda: S.MRSDE(schedule="linear")),
    ("mr_constant", lambda: S.MRSDE(schedule="constant")),
    ("mr_irsde", lambda: S.MRSDE(convention="irsde")),
    ("ouve", lambda: S.OUVESDE()),
    ("rf", lambda: S.RectifiedFlow()),
]
SDE_IDS = [name for name, _ in ALL_SDES]


@pytest.fixture(params=[factory for _, factory in ALL_SDES], ids=SDE_IDS)
def sde(request):
    return request.param()


def is_mean_reverting(sde) -> bool:
    """MR and OUVE SDEs revert to an observation μ ≠ 0; the others have μ = 0."""
    return isinstance(sde, (S.MRSDE, S.OUVESDE))


def regular_t_max(sde) -> float:
    """``t_max``, or 9/10 of the way there where f and g² are infinite at ``t_max`` (rectified flow's t = 1,
    where α = 0): the end of the range a forward simulation or a quadrature of the coefficients can use."""
    if torch.isfinite(sde.f(sde.t_max)):
        return sde.t_max
    return sde.t_min + 0.9 * (sde.t_max - sde.t_min)


def knots(sde) -> torch.Tensor | None:
    """The times where a tabulated schedule's pieces meet (None for closed-form schedules)."""
    if isinstance(sde, S.DiscreteVPSDE):
        return torch.linspace(0, 1, sde.num_train_timesteps, dtype=torch.float64)
    if isinstance(sde, S.MRSDE):
        return torch.arange(sde.steps + 1, dtype=torch.float64) / sde.steps
    return None


def interior_times(sde, n: int = 41) -> torch.Tensor:
    """``n`` times strictly inside ``(t_min, t_max)``; for tabulated schedules, mid-points between knots
    (so a finite-difference stencil of half-width < half a segment never crosses a knot)."""
    grid = torch.linspace(sde.t_min, sde.t_max, n + 2, dtype=torch.float64)[1:-1]
    k = knots(sde)
    if k is None:
        return grid
    seg = float(k[1] - k[0])
    mids = (torch.floor(grid / seg) + 0.5) * seg
    mids = mids[(mids > sde.t_min) & (mids < sde.t_max)]
    return torch.unique(mids)


def steppable_samplers() -> list[str]:
    """Every registry sampler (default options) whose evaluation times are known in advance."""
    import revsde

    names = []
    for name in revsde.samplers.available():
        try:
            revsde.samplers.get(name).query_times(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
        except ValueError:
            continue
        names.append(name)
    return names
