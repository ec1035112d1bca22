"""What a CUDA graph of ``GraphedModel`` is specialised on, and the buffers it reads (pure bookkeeping,
tested on CPU).

``bucket_for`` / ``chunk_plan``: which padded batch serves which rows; ``pad_batch`` / ``copy_padded``:
padding repeats the last row; ``graph_key``: what a graph is specialised on, and what it is not (time
values); ``StaticInputs``: one graph's static input buffers, refilled by every call.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

from .tensors import real_dtype

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Ungraphable(Exception):
    """An input a static buffer cannot represent (the call runs eagerly)."""


# --- pure bookkeeping -------------------------------------------------------------------------------
def check_buckets(batch_buckets) -> tuple[int, ...]:
    """``batch_buckets`` as a tuple, or a ValueError naming what is valid."""
    try:
        buckets = tuple(batch_buckets)
    except TypeError:
        buckets = ()
    ok = bool(buckets) and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and b > 0
                               for b in buckets)
    if not ok or any(a >= b for a, b in zip(buckets, buckets[1:])):
        raise ValueError(f"batch_buckets must be a non-empty, strictly increasing sequence of positive ints, "
                         f"e.g. {DEFAULT_BUCKETS} (got {batch_buckets!r})")
    return tuple(int(b) for b in buckets)


def bucket_for(batch: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ≥ ``batch`` (a batch above the largest bucket is split by ``chunk_plan``)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1 (got {batch})")
    for bucket in buckets:
        if bucket >= batch:
            return bucket
    raise ValueError(f"batch {batch} is above the largest bucket {buckets[-1]}; split it with chunk_plan")


def chunk_plan(batch: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(start, stop, bucket)`` for each network call serving rows ``start:stop`` of a batch: chunks of
    the largest bucket, the remainder padded up to its own bucket."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1 (got {batch})")
    largest = buckets[-1]
    return [(start, min(start + largest, batch), bucket_for(min(largest, batch - start), buckets))
            for start in range(0, batch, largest)]


def copy_padded(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Copy ``src`` into the first rows of ``dst`` and its last row into the rest; returns ``dst``.

    Padding repeats a real row rather than zeros so normalisation layers never see degenerate rows.
    In place and allocation-free (what fills a graph's static inputs); no host sync.
    """
    n = src.shape[0]
    if not 1 <= n <= dst.shape[0]:
        raise ValueError(f"cannot pad a batch of {n} into {dst.shape[0]} rows")
    dst[:n].copy_(src)
    if n < dst.shape[0]:
        dst[n:].copy_(src[n - 1])  # broadcasts over the padding rows
    return dst


def pad_batch(t: torch.Tensor, bucket: int) -> torch.Tensor:
    """``t`` padded to ``bucket`` rows by repeating its last row (a new tensor)."""
    return copy_padded(t.new_empty((bucket, *t.shape[1:])), t)


def _holds_tensor(value) -> bool:
    if torch.is_tensor(value):
        return True
    if isinstance(value, (tuple, list, set, frozenset)):
        return any(_holds_tensor(v) for v in value)
    return isinstance(value, dict) and any(_holds_tensor(v) for v in value.values())


def _cond_entry(name: str, value, batch: int, device: torch.device) -> tuple:
    if torch.is_tensor(value):
        if value.device != device:
            raise Ungraphable(f"cond {name!r} is on {value.device}, not on the input's device {device}")
        if value.ndim >= 1 and value.shape[0] == batch:
            return ("b", tuple(value.shape[1:]), value.dtype)
        return ("s", tuple(value.shape), value.dtype)
    if _holds_tensor(value):
        raise Ungraphable(f"cond {name!r} is a {type(value).__name__} holding tensors; pass the tensors as "
                           "separate cond inputs")
    try:
        hash(value)
    except TypeError:
        raise Ungraphable(f"cond {name!r} is an unhashable {type(value).__name__}") from None
    return ("v", type(value), value)  # the type too: 1, 1.0 and True are equal as dict keys


def time_batched(time, batch: int) -> bool:
    return torch.is_tensor(time) and time.ndim == 1 and time.shape[0] == batch


def _time_dtype(time, x: torch.Tensor, batch: int) -> torch.dtype:
    if torch.is_tensor(time):
        if time.ndim == 0 or tuple(time.shape) == (1,) or time_batched(time, batch):
            return time.dtype
        raise Ungraphable(f"time has shape {tuple(time.shape)}; a graph takes a ({batch},) time, a 0-d one "
                           "or a Python number")
    if isinstance(time, bool) or not isinstance(time, (int, float)):
        raise Ungraphable(f"time is a {type(time).__name__}, not a tensor or a number")
    if isinstance(time, int):
        return torch.int64
    return real_dtype(x.dtype) if x.is_floating_point() or x.is_complex() else torch.get_default_dtype()


def _autocast(device_type: str):
    """Autocast changes the kernels a capture records, so its state is part of the key."""
    try:
        on = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if on else None
    except TypeError:  # torch < 2.4: CUDA-only signatures
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def signature(x: torch.Tensor, time, cond: dict) -> tuple:
    batch = x.shape[0]
    items = tuple((name, _cond_entry(name, cond[name], batch, x.device)) for name in sorted(cond))
    return (tuple(x.shape[1:]), x.dtype, x.device, _time_dtype(time, x, batch), items,
            _autocast(x.device.type))


def graph_key(x: torch.Tensor, time, cond: dict, bucket: int) -> tuple:
    """What one graph is specialised on: ``(bucket, x.shape[1:], x.dtype, x.device, time dtype,
    ((name, entry), ...) sorted by name, autocast dtype or None)``.

    A cond tensor with a leading dim equal to the batch is batched, ``("b", shape[1:], dtype)``, and is
    padded and sliced with ``x``; any other tensor, ``("s", shape, dtype)``, is copied whole; any other
    value is keyed by type and value, ``("v", type, value)``. Time values never enter the key (only
    the time's dtype), so one graph serves every step. Raises ``Ungraphable`` for inputs a static
    buffer cannot hold (a tensor on another device, an unhashable value, a container of tensors).
    """
    return (bucket,) + signature(x, time, cond)


# --- static buffers of one graph --------------------------------------------------------------------
class StaticInputs:
    """One key's graph, the static input tensors it reads and the output it writes."""

    __slots__ = ("x", "time", "cond", "batched", "graph", "out")

    def __init__(self, key: tuple, x: torch.Tensor, cond: dict):
        bucket, time_dtype, items = key[0], key[4], key[5]
        self.batched = frozenset(name for name, entry in items if entry[0] == "b")  # as keyed on the whole batch
        with torch.inference_mode(False):  # buffers made in inference mode could not be refilled outside it
            self.x = x.new_empty((bucket, *x.shape[1:]))
            self.time = torch.empty(bucket, dtype=time_dtype, device=x.device)
            self.cond = {k: (v.new_empty((bucket, *v.shape[1:])) if k in self.batched else torch.empty_like(v))
                         if torch.is_tensor(v) else v for k, v in cond.items()}
        self.graph = self.out = None

    def fill(self, x: torch.Tensor, time, cond: dict) -> None:
        """Copy one call's inputs into the buffers (device-side copies only: no host sync)."""
        copy_padded(self.x, x)
        if not torch.is_tensor(time):
            self.time.fill_(time)
        elif time_batched(time, x.shape[0]):
            copy_padded(self.time, time)
        else:
            self.time.copy_(time.reshape(()))  # broadcast to every row
        for k, buf in self.cond.items():
            if torch.is_tensor(buf):
                copy_padded(buf, cond[k]) if k in self.batched else buf.copy_(cond[k])
