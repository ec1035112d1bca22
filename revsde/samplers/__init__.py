"""Sampler registry: ``get(name, **options)`` builds one, ``available()`` lists the names.

Adding a sampler is its file plus one line in ``REGISTRY``; the tests iterate the registry.
"""
from __future__ import annotations

import inspect

from .base import Query, Run, Sampler, SamplingError, Step
from .classic import Ancestral, EulerMaruyama, Posterior, ReverseDiffusion
from .dmcmc import DMCMC
from .mrs import MRSampler
from .ode import ODEEuler, ODEHeun, ODERK4
from .pc import PC, SGMSE
from .rk45 import ODERK45
from .torchsde_sampler import TorchSDE

REGISTRY: dict[str, type[Sampler]] = {cls.name: cls for cls in (
    EulerMaruyama, ReverseDiffusion, Ancestral, PC, SGMSE,
    ODEEuler, ODEHeun, ODERK4, ODERK45, MRSampler, Posterior, TorchSDE, DMCMC,
)}


def available() -> list[str]:
    return list(REGISTRY)


def option_names(name: str) -> list[str]:
    return [p for p in inspect.signature(REGISTRY[name].__init__).parameters if p != "self"]


def get(name: str | Sampler, **options) -> Sampler:
    """A sampler instance from a registry name and its options (validated here, before any work)."""
    if isinstance(name, Sampler):
        if options:
            raise ValueError(f"options {sorted(options)} given together with a Sampler instance; "
                             "set them on the instance")
        return name
    if name not in REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; available samplers: {', '.join(REGISTRY)}")
    valid = option_names(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        shown = ", ".join(valid) if valid else "none"
        raise ValueError(f"sampler {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {shown}")
    return REGISTRY[name](**options)


__all__ = ["Query", "Step", "SamplingError", "Run", "Sampler", "REGISTRY", "available", "get", "option_names"]
