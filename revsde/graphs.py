"""``GraphedModel``: a score network replayed from CUDA graphs (DESIGN §5).

A sampler calls its network at a few small batches, and there the GPU mostly waits while Python
queues hundreds of small kernels. ``GraphedModel`` records each call signature once as a CUDA graph
and afterwards serves a call with a few copies, one graph launch and one clone.

The bookkeeping is in pure functions tested on CPU: ``bucket_for`` / ``chunk_plan`` (which padded
batch serves which rows), ``pad_batch`` / ``copy_padded`` (padding repeats the last row) and
``graph_key`` (what a graph is specialised on, and what it is not: time values).
"""
from __future__ import annotations

import numbers
import warnings
from typing import Callable, Sequence

import torch

from .tensors import real_dtype

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: after this many graphs one model warns once: something keyed by value probably changes every call
MANY_GRAPHS = 64

# Failed captures whose CUDAGraph objects are kept alive for the life of the process: when
# capture_end fails, the caching allocators may keep a filter that points back into the graph.
_FAILED_CAPTURES: list = []


class GraphFallbackWarning(RuntimeWarning):
    """A call signature could not be graphed; those calls run eagerly (correct, just not faster)."""


class _Ungraphable(Exception):
    """An input a static buffer cannot represent (the call runs eagerly)."""


class _NetOutputError(TypeError):
    """The network returned something other than a tensor."""


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
            raise _Ungraphable(f"cond {name!r} is on {value.device}, not on the input's device {device}")
        if value.ndim >= 1 and value.shape[0] == batch:
            return ("b", tuple(value.shape[1:]), value.dtype)
        return ("s", tuple(value.shape), value.dtype)
    if _holds_tensor(value):
        raise _Ungraphable(f"cond {name!r} is a {type(value).__name__} holding tensors; pass the tensors as "
                           "separate cond inputs")
    try:
        hash(value)
    except TypeError:
        raise _Ungraphable(f"cond {name!r} is an unhashable {type(value).__name__}") from None
    return ("v", type(value), value)  # the type too: 1, 1.0 and True are equal as dict keys


def _time_batched(time, batch: int) -> bool:
    return torch.is_tensor(time) and time.ndim == 1 and time.shape[0] == batch


def _time_dtype(time, x: torch.Tensor, batch: int) -> torch.dtype:
    if torch.is_tensor(time):
        if time.ndim == 0 or tuple(time.shape) == (1,) or _time_batched(time, batch):
            return time.dtype
        raise _Ungraphable(f"time has shape {tuple(time.shape)}; a graph takes a ({batch},) time, a 0-d one "
                           "or a Python number")
    if isinstance(time, bool) or not isinstance(time, (int, float)):
        raise _Ungraphable(f"time is a {type(time).__name__}, not a tensor or a number")
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


def _signature(x: torch.Tensor, time, cond: dict) -> tuple:
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
    the time's dtype), so one graph serves every step. Raises ``_Ungraphable`` for inputs a static
    buffer cannot hold (a tensor on another device, an unhashable value, a container of tensors).
    """
    return (bucket,) + _signature(x, time, cond)


# --- static buffers of one graph --------------------------------------------------------------------
class _Static:
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
        elif _time_batched(time, x.shape[0]):
            copy_padded(self.time, time)
        else:
            self.time.copy_(time.reshape(()))  # broadcast to every row
        for k, buf in self.cond.items():
            if torch.is_tensor(buf):
                copy_padded(buf, cond[k]) if k in self.batched else buf.copy_(cond[k])


def _checked(out, static: _Static) -> torch.Tensor:
    """The network's output if a graph can serve it (a tensor with the batch first, on the input's device)."""
    if not torch.is_tensor(out):
        raise _NetOutputError(
            f"the network returned a {type(out).__name__}; GraphedModel needs a network that returns one tensor, "
            "so wrap it, e.g. GraphedModel(lambda x, t, **cond: unet(x, t, **cond).sample)")
    bucket = static.x.shape[0]
    if out.ndim == 0 or out.shape[0] != bucket or out.device != static.x.device:
        raise RuntimeError(f"the output has shape {tuple(out.shape)} on {out.device} for a batch of {bucket} on "
                           f"{static.x.device}: a graph needs the batch first, on the input's device")
    return out


class _SyncCheck:
    """While active, any synchronising CUDA call raises: the warm-up's last call finds, before any
    capture starts, the host syncs (``.item()``, host-to-device copies) a capture cannot hold."""

    def __init__(self, active: bool):
        self.active, self.before = active, None

    def __enter__(self):
        if self.active:
            self.before = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        if self.active:
            torch.cuda.set_sync_debug_mode(self.before)


# --- the model --------------------------------------------------------------------------------------
class GraphedModel:
    """``net(x, time, **cond)`` replayed from CUDA graphs; itself a callable with the same signature.

    For sampling only: the graphed path runs under ``torch.no_grad()``.

    Guarantees:
      * Off CUDA (an ``x`` not on a CUDA device, CUDA unavailable, or ``enabled=False``) a call is
        exactly ``net(x, time, **cond)``, bit for bit, in the caller's grad mode.
      * On CUDA, one graph per key (``graph_key``): the batch ``B`` is padded to the smallest bucket ≥ B
        by repeating its last row, and a batch above the largest bucket runs in chunks of it. Each call
        copies its inputs into that key's static buffers, replays, and returns a clone of the first
        ``B`` output rows (never graph memory: a multistep sampler may keep earlier outputs). The
        replay path makes no host sync.
      * Time is a ``(B,)`` device tensor in a static buffer (a number or 0-d tensor is broadcast to
        it), so one graph serves every step; time values are never part of a key. Unbatched cond
        tensors are copied in every call too; other cond values are keyed by value.
      * Graphed and eager outputs agree to float tolerance (different batch sizes may select
        different kernels).
      * If warm-up or capture fails (a host sync such as ``.item()``, an op a graph cannot hold),
        the model warns once (``GraphFallbackWarning``, naming the key and the error) and runs that
        key eagerly from then on. A network that returns something other than a tensor raises a
        TypeError instead: wrap it (``lambda x, t, **c: unet(x, t, **c).sample``).

    Requirements on the network: deterministic, in ``eval()`` mode: no random draws inside (no
    dropout; samplers draw their noise outside the network) and no state updates (batch-norm
    statistics), since a replay repeats the captured kernels and nothing else; and a pure function
    of its tensor inputs on their device (values computed on the host during capture are frozen
    into the graph). Parameters updated in place (``load_state_dict``, EMA
    ``copy_``) are seen by later replays; after replacing them (``.to()``, ``.half()``, new modules)
    call ``reset()``. Calls are ordered on the caller's current stream: do not call one
    ``GraphedModel`` from several threads or streams at once.

    ``warmup`` eager calls per key run on a side stream before capture (lazy cuBLAS/cuDNN init and
    autotuning stay out of the graph); the last runs with synchronising CUDA calls made errors. All
    of this model's graphs share one memory pool.

    Counters: ``captures`` (graphs captured), ``replays`` (graph launches), ``eager_calls`` (network
    calls made eagerly outside warm-up, pass-through included); ``keys()`` lists the captured keys, ``fallback_keys()`` the
    keys that run eagerly. ``reset()`` drops every graph.
    """

    def __init__(self, net: Callable, batch_buckets: Sequence[int] = DEFAULT_BUCKETS, warmup: int = 3,
                 enabled: bool | None = None):
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, time, **cond) (got {type(net).__name__})")
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
            raise ValueError(f"warmup must be a non-negative int, the eager calls before a capture (got {warmup!r})")
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError(f"enabled must be None (graph CUDA inputs), True or False (got {enabled!r})")
        self.net = net
        self.batch_buckets = check_buckets(batch_buckets)
        self.warmup = int(warmup)
        self.enabled = enabled
        self.reset()

    def reset(self) -> None:
        """Drop every graph, buffer and fallback decision, and zero the counters."""
        self._graphs: dict[tuple, _Static] = {}
        self._failed: set[tuple] = set()
        self._warned: set[str] = set()
        self._pool = None  # torch.cuda.graph_pool_handle(), made at the first capture
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self.captures = self.replays = self.eager_calls = 0

    def keys(self) -> list[tuple]:
        return list(self._graphs)

    def fallback_keys(self) -> list[tuple]:
        return sorted(self._failed, key=repr)

    def __repr__(self) -> str:
        name = getattr(self.net, "__name__", type(self.net).__name__)
        return (f"GraphedModel({name}, batch_buckets={self.batch_buckets}, warmup={self.warmup}, "
                f"enabled={self.enabled}, graphs={len(self._graphs)}, fallbacks={len(self._failed)})")

    # -- calls ---------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, time, **cond):
        if not self._graphable(x):
            self.eager_calls += 1
            return self.net(x, time, **cond)
        with torch.no_grad():
            try:
                sig = _signature(x, time, cond)
            except _Ungraphable as why:
                self._warn_once(str(why), f"GraphedModel runs these calls eagerly: {why}", stacklevel=3)
                self.eager_calls += 1
                return self.net(x, time, **cond)
            batch = x.shape[0]
            plan = chunk_plan(batch, self.batch_buckets)
            if len(plan) == 1:
                return self._run((plan[0][2],) + sig, x, time, cond)
            batched = [name for name, entry in sig[4] if entry[0] == "b"]
            outs = []
            for start, stop, bucket in plan:
                part = {**cond, **{k: cond[k][start:stop] for k in batched}}
                t = time[start:stop] if _time_batched(time, batch) else time
                outs.append(self._run((bucket,) + sig, x[start:stop], t, part))
            return torch.cat(outs)

    def _graphable(self, x) -> bool:
        return (self.enabled is not False and torch.is_tensor(x) and x.is_cuda and x.ndim >= 1
                and x.shape[0] >= 1 and not torch.cuda.is_current_stream_capturing())

    def _run(self, key: tuple, x: torch.Tensor, time, cond: dict):
        static = self._graphs.get(key)
        if static is None:
            if key in self._failed:
                self.eager_calls += 1
                return self.net(x, time, **cond)
            static = _Static(key, x, cond)
            static.fill(x, time, cond)
            try:
                static.graph, static.out = self._capture(static)
            except _NetOutputError:
                raise
            except Exception as err:
                self._failed.add(key)
                self._warn_once(repr(key), f"GraphedModel could not graph key {key} "
                                f"({type(err).__name__}: {err}); these calls run eagerly")
                self.eager_calls += 1
                return self.net(x, time, **cond)
            self._graphs[key] = static
            self.captures += 1
            if len(self._graphs) == MANY_GRAPHS:
                self._warn_once("many", f"GraphedModel holds {MANY_GRAPHS} graphs, each holding GPU memory: "
                                "a cond value keyed by value (a Python number, an object hashed by identity) "
                                "that changes every call captures a new graph each time; pass it as a tensor")
        else:
            static.fill(x, time, cond)
        static.graph.replay()
        self.replays += 1
        return static.out[:x.shape[0]].clone()

    def _forward(self, static: _Static) -> torch.Tensor:
        return _checked(self.net(static.x, static.time, **static.cond), static)

    def _capture(self, static: _Static):
        """Warm up on a side stream, then capture one call on it: returns ``(graph, static output)``."""
        device = static.x.device
        with torch.cuda.device(device):
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = torch.cuda.Stream(device)
            caller = torch.cuda.current_stream(device)
            graph, capturing = torch.cuda.CUDAGraph(), False
            stream.wait_stream(caller)
            try:
                with torch.cuda.stream(stream):
                    for i in range(self.warmup):
                        with _SyncCheck(i == self.warmup - 1):
                            self._forward(static)
                caller.wait_stream(stream)
                # The same stream captures: library handles and workspaces are cached per stream, and
                # graphs sharing a pool should share a capture stream (torch.cuda.graph docs).
                capturing = True
                with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                    out = self._forward(static)
            except BaseException:
                if capturing and torch.cuda.current_stream(device) == stream:  # capture_begin or _end failed
                    self._recover(graph, device, caller)
                raise
            finally:
                caller.wait_stream(stream)
        return graph, out

    def _recover(self, graph, device: torch.device, caller) -> None:
        """Undo what a failed ``capture_end`` leaves behind (best effort: torch has no public way)."""
        torch.cuda.set_stream(caller)  # torch.cuda.graph restores the stream only when capture_end succeeds
        _FAILED_CAPTURES.append(graph)
        end = getattr(torch._C, "_cuda_endAllocateToPool", None)
        if end is not None:
            try:  # the allocator may still route allocations to the pool ...
                end(device.index, self._pool)
            except Exception:  # ... or capture_end already ended that
                pass
        self._pool = torch.cuda.graph_pool_handle()  # in case it did not: never capture into that pool again

    def _warn_once(self, topic: str, message: str, stacklevel: int = 4) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            warnings.warn(message, GraphFallbackWarning, stacklevel=stacklevel)


__all__ = ["GraphedModel", "GraphFallbackWarning", "DEFAULT_BUCKETS", "bucket_for", "chunk_plan", "pad_batch",
           "copy_padded", "graph_key", "check_buckets"]
