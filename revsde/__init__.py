"""revsde: one solver core for every linear diffusion SDE, with the field's samplers as plug-ins."""
from . import grids, noise, samplers, sde
from .model import Prediction, ScoreModel
from .noise import BrownianNoise, GaussianNoise
from .solve import NonFiniteStateError, Solution, sample

__version__ = "0.1.0"

__all__ = ["sde", "grids", "noise", "samplers", "ScoreModel", "Prediction", "sample", "Solution",
           "NonFiniteStateError", "GaussianNoise", "BrownianNoise", "__version__"]

