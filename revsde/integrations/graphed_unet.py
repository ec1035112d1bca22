"""``graph_unet``: a diffusers UNet's forward replayed from CUDA graphs, inside any pipeline."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput


@dataclass
class GraphedUNetOutput(BaseOutput):
    """What a UNet's forward returns after ``graph_unet`` (``.sample`` and ``[0]`` as diffusers' own)."""

    sample: torch.Tensor


def graph_unet(unet, **options):
    """Replay a diffusers UNet's forward from CUDA graphs (``revsde.kernels.GraphedModel``), in place.

    The pipeline keeps calling ``unet(sample, t, encoder_hidden_states=…, …)``: tensors with the
    batch (the text embeddings, both guidance branches at once) go into the graph's static buffers,
    a scalar ``t`` is broadcast to the batch, and other keyword values (``None``, flags) key the graph.
    Off CUDA every call is the UNet's own forward. ``unet.revsde_graphed`` is the ``GraphedModel``
    (its ``captures``, ``replays``). Returns ``unet``.
    """
    from ..graphs import GraphedModel

    if hasattr(unet, "revsde_graphed"):
        return unet
    original = unet.forward
    graphed = GraphedModel(lambda x, t, **kw: original(x, t, return_dict=False, **kw)[0], **options)

    def forward(sample, timestep, *args, return_dict: bool = True, **kwargs):
        if args:  # UNet2DConditionModel's third positional argument
            if len(args) > 1 or "encoder_hidden_states" in kwargs:
                raise TypeError("a graphed UNet takes sample, timestep and encoder_hidden_states positionally; "
                                "pass the rest as keywords")
            kwargs["encoder_hidden_states"] = args[0]
        out = graphed(sample, timestep, **kwargs)
        return GraphedUNetOutput(sample=out) if return_dict else (out,)

    unet.forward = forward
    unet.revsde_graphed = graphed
    return unet
