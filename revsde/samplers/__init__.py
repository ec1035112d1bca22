"""Sampler registry: ``get(name, **options)`` builds one, ``available()`` lists the names.

Adding a sampler is its file plus its class in the ``register`` call below (``registry.py`` holds the
table); the tests iterate the registry.
"""
from __future__ import annotations

from .base import Query, Run, Sampler, SamplingError, Step
from .classic import Ancestral, EulerMaruyama, Posterior, ReverseDiffusion
from .dmcmc import DMCMC
from .mrs import MRSampler
from .ode import ODEEuler, ODEHeun, ODERK4
from .pc import PC, SGMSE
from .registry import REGISTRY, available, get, option_names, register
from .restart import Restart
from .rk45 import ODERK45
from .torchsde_sampler import TorchSDE
from .unipc import UniPCSampler

register(
    EulerMaruyama, ReverseDiffusion, Ancestral, PC, SGMSE,
    ODEEuler, ODEHeun, ODERK4, ODERK45, MRSampler, UniPCSampler, Restart, Posterior, TorchSDE, DMCMC,
)


__all__ = ["Query", "Step", "SamplingError", "Run", "Sampler", "REGISTRY", "available", "get", "option_names"]
