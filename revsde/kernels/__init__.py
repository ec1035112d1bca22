"""Kernels: CUDA-graph replay of network calls (``GraphedModel``) and lock-step batching of many
sampler generators into one network call per round (``run_batched``). DESIGN §5."""
from .batched import BatchedResults, run_batched
from ..graphs import GraphedModel

__all__ = ["GraphedModel", "run_batched", "BatchedResults"]
