"""``GraphedModel``: a score network replayed from CUDA graphs (DESIGN §5).

A sampler calls its network at a few small batches, and there the GPU mostly waits while Python
queues hundreds of small kernels. ``GraphedModel`` records each call signature once as a CUDA graph
and afterwards serves a call with a few copies, one graph launch and one clone.

The bookkeeping is in pure functions tested on CPU, in ``graph_buffers`` (and importable from here):
``bucket_for`` / ``chunk_plan`` (which padded batch serves which rows), ``pad_batch`` / ``copy_padded``
(padding repeats the last row), ``graph_key`` (what a graph is specialised on, and what it is not:
time values) and ``StaticInputs`` (one graph's input buffers). This module captures and replays.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Callable, Sequence

import torch

from .graph_buffers import (DEFAULT_BUCKETS, StaticInputs, Ungraphable, bucket_for, check_buckets,  # noqa: F401
                            chunk_plan, copy_padded, graph_key, pad_batch, signature, time_batched)

#: after this many graphs one model warns once: something keyed by value probably changes every call
MANY_GRAPHS = 64

# Failed captures whose CUDAGraph objects are kept alive for the life of the process: when
# capture_end fails, the caching allocators may keep a filter that points back into the graph.
_FAILED_CAPTURES: list = []


class GraphFallbackWarning(RuntimeWarning):
    """A call signature could not be graphed; those calls run eagerly (correct, just not faster)."""


class _NetOutputError(TypeError):
    """The network returned something other than a tensor."""


def _checked(out, static: StaticInputs) -> torch.Tensor:
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
        self._graphs: dict[tuple, StaticInputs] = {}
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
                sig = signature(x, time, cond)
            except Ungraphable as why:
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
                t = time[start:stop] if time_batched(time, batch) else time
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
            static = StaticInputs(key, x, cond)
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

    def _forward(self, static: StaticInputs) -> torch.Tensor:
        return _checked(self.net(static.x, static.time, **static.cond), static)

    def _capture(self, static: StaticInputs):
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
