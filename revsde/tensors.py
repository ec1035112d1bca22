"""Broadcasting of per-sample coefficients and time tensors: the one place that knows shapes."""
from __future__ import annotations

import torch


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype underlying ``dtype`` (float32 for complex64, float64 for complex128)."""
    return torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype


def bcast(c: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """Reshape a ``(B,)`` coefficient to broadcast against ``x`` of shape ``(B, ...)``.

    The coefficient is cast to the real dtype of ``x`` so float64 grids never promote a float32 state.
    Python floats and 0-d tensors pass through unchanged in value.
    """
    if not torch.is_tensor(c):
        return c
    dtype = real_dtype(x.dtype) if x.dtype.is_complex else x.dtype
    if c.dtype != dtype or c.device != x.device:
        c = c.to(device=x.device, dtype=dtype)
    if c.ndim == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))


def as_time(t, like: torch.Tensor | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A float, sequence or tensor of times as a float64 tensor (on ``like``'s device if given)."""
    device = like.device if like is not None else None
    if torch.is_tensor(t):
        return t.to(device=device if device is not None else t.device, dtype=dtype)
    return torch.as_tensor(t, dtype=dtype, device=device)
