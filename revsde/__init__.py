"""revsde: one solver core for every linear diffusion SDE, with the field's samplers as plug-ins.

The public names below are imported on first use (PEP 562), so ``import revsde`` and the ``revsde``
command's ``--help`` and ``--version`` do not pay for torch until something needs it.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the submodule that defines it (None: the name is a submodule itself)
_EXPORTS = {
    "sde": None, "grids": None, "noise": None, "samplers": None,
    "ScoreModel": "model", "Prediction": "model",
    "sample": "solve", "Solution": "solve", "NonFiniteStateError": "samplers.driver",
    "GaussianNoise": "noise", "BrownianNoise": "noise", "NoiseSource": "noise",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS and _EXPORTS[name] is not None:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)  # any submodule: revsde.nets, revsde.apps, …
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
