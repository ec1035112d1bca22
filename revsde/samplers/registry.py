"""The sampler registry: names to classes, filled by ``revsde.samplers`` when it is imported.

A module of its own so that a sampler that drives another by name (``dmcmc``'s integrator) looks it
up here without importing the package that imports it.
"""
from __future__ import annotations

import inspect

from .base import Sampler

REGISTRY: dict[str, type[Sampler]] = {}


def register(*classes: type[Sampler]) -> None:
    """Add sampler classes under their ``name`` (the order of ``available()``)."""
    for cls in classes:
        REGISTRY[cls.name] = cls


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
