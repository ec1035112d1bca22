"""Linear diffusion SDEs: each knows α_t and σ_t, hence its drift, diffusion, prior and reverse processes."""
from .base import LinearSDE
from .flow import RectifiedFlow
from .mr import MRSDE
from .ouve import OUVESDE
from .ve import VESDE
from .vp import CosineVPSDE, DiscreteVPSDE, SubVPSDE, VPSDE

__all__ = ["LinearSDE", "VPSDE", "CosineVPSDE", "DiscreteVPSDE", "SubVPSDE", "VESDE", "MRSDE", "OUVESDE", "RectifiedFlow"]
