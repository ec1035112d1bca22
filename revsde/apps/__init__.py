"""Applications: library functions that do what the ``revsde`` commands do (the CLI only parses and prints).

``sample.sample_gmm``: sample the built-in 2-D Gaussian-mixture model and measure the result.
"""
from .sample import GMMSample, sample_gmm

__all__ = ["GMMSample", "sample_gmm"]
