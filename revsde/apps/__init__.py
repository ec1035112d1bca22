"""Applications: library functions that do what the ``revsde`` commands do (the CLI only parses and prints).

``sample.sample_gmm``: sample the built-in 2-D Gaussian-mixture model and measure the result. Imported
on first use, so the command-line parsers in this package load without torch.
"""
from __future__ import annotations

__all__ = ["GMMSample", "sample_gmm"]


def __getattr__(name: str):
    if name in __all__:
        from revsde.apps.mixture import sample

        return getattr(sample, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
