"""GraphedModel: CPU pass-through, the padding / bucketing / key bookkeeping, the graph path's logic on
CPU (a simulated graph with real static buffers), and on CUDA real graphs against eager calls."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import revsde
from revsde.graph_buffers import Ungraphable
from revsde.graphs import (DEFAULT_BUCKETS, GraphedModel, GraphFallbackWarning, bucket_for, chunk_plan, copy_padded,
                           graph_key, pad_batch)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def ieee_fp32(monkeypatch):
    """Graphed against eager at float32 precision: TF32 convolutions (cuDNN's default on Ampere and
    later) round differently for each algorithm, and padded batches may select other algorithms."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


class TinyNet(nn.Module):
    """A small deterministic conv net: time, a batched embedding, an unbatched bias, a 0-d scale and a
    Python-value mode. GroupNorm keeps samples independent, so padding rows cannot change real rows."""

    def __init__(self, channels: int = 3, width: int = 8, emb: int = 4):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.time_proj = nn.Linear(1, width)
        self.emb_proj = nn.Linear(emb, width)
        self.norm = nn.GroupNorm(2, width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        with torch.no_grad():
            self.conv_out.weight.mul_(0.1)  # modest predictions keep every sampler's state in range

    def forward(self, x, time, emb=None, bias=None, scale=None, mode="add"):
        t = torch.as_tensor(time, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        h = self.conv_in(x) + self.time_proj(t)[..., None, None]
        if emb is not None:
            h = h + self.emb_proj(emb)[..., None, None]
        if bias is not None:
            h = h + bias
        out = self.conv_out(torch.nn.functional.silu(self.norm(h)))
        if scale is not None:
            out = out * scale
        return out * x if mode == "mul" else out


def make_net(device="cpu", dtype=torch.float32) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().to(device=device, dtype=dtype).eval().requires_grad_(False)


def inputs(batch: int, device="cpu", dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 6, 6, generator=g, dtype=dtype).to(device)
    t = torch.rand(batch, generator=g, dtype=dtype).to(device)
    cond = {"emb": torch.randn(batch, 4, generator=g, dtype=dtype).to(device),       # batched
            "bias": torch.randn(1, 8, 6, 6, generator=g, dtype=dtype).to(device),    # broadcast
            "scale": torch.tensor(1.5, dtype=dtype, device=device),                  # 0-d
            "mode": "mul"}                                                           # Python value
    return x, t, cond


class SimulatedGraphs(GraphedModel):
    """The graph path on CPU: "capture" runs the net once into a static output, "replay" re-runs it on
    the static input buffers and overwrites that output in place, as a CUDA graph does."""

    def _graphable(self, x) -> bool:
        return self.enabled is not False and x.ndim >= 1 and x.shape[0] >= 1

    def _capture(self, static):
        with torch.inference_mode(False):  # a real replay writes graph memory below autograd's checks
            out = self._forward(static).clone()
        return SimpleNamespace(replay=lambda: out.copy_(self._forward(static))), out


# --- CPU: pass-through ------------------------------------------------------------------------------
@pytest.mark.parametrize("enabled", [None, True, False])
def test_cpu_is_an_exact_pass_through(enabled):
    net = make_net()
    gm = GraphedModel(net, enabled=enabled)
    for batch in (1, 3, 300):
        x, t, cond = inputs(batch)
        assert torch.equal(gm(x, t, **cond), net(x, t, **cond))
        assert torch.equal(gm(x, 0.25, **cond), net(x, 0.25, **cond))
    assert gm.captures == 0 and gm.replays == 0 and gm.eager_calls == 6 and gm.keys() == []


def test_cpu_pass_through_hands_over_the_same_objects_and_returns_the_nets_result():
    seen = []

    def net(x, time, **cond):
        seen.append((x, time, cond))
        return (x, "anything")  # the pass-through does not inspect outputs

    x, t, cond = inputs(2)
    out = GraphedModel(net)(x, t, **cond)
    assert out[0] is x and out[1] == "anything"
    (sx, st, sc), = seen
    assert sx is x and st is t and sc.keys() == cond.keys() and all(sc[k] is cond[k] for k in cond)


@pytest.mark.parametrize("buckets", [(), [], (2, 1), (1, 1), (0, 1), (-1,), (1.5, 2), "abc", 4, (True, 2), None])
def test_bad_buckets_are_refused_naming_what_is_valid(buckets):
    with pytest.raises(ValueError, match="strictly increasing sequence of positive ints"):
        GraphedModel(make_net(), batch_buckets=buckets)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="warmup must be a non-negative int"):
        GraphedModel(make_net(), warmup=-1)
    with pytest.raises(ValueError, match="warmup"):
        GraphedModel(make_net(), warmup=1.5)
    with pytest.raises(ValueError, match="enabled must be None"):
        GraphedModel(make_net(), enabled="yes")
    with pytest.raises(TypeError, match="callable"):
        GraphedModel("net")
    assert GraphedModel(make_net(), batch_buckets=[3, 7], warmup=0).batch_buckets == (3, 7)


def test_repr_and_net_access():
    net = make_net()
    gm = GraphedModel(net, batch_buckets=(1, 4))
    assert gm.net is net
    assert repr(gm) == "GraphedModel(TinyNet, batch_buckets=(1, 4), warmup=3, enabled=None, graphs=0, fallbacks=0)"
    assert "GraphedModel(f," in repr(GraphedModel(lambda x, t: x)).replace("<lambda>", "f")


# --- CPU: bucketing, padding, keys ------------------------------------------------------------------
def test_bucket_for_is_the_smallest_bucket_that_fits():
    assert [bucket_for(b, DEFAULT_BUCKETS) for b in (1, 2, 3, 5, 8, 9, 200, 256)] == [1, 2, 4, 8, 8, 16, 256, 256]
    assert bucket_for(4, (3, 7)) == 7
    with pytest.raises(ValueError, match="above the largest bucket 256"):
        bucket_for(257, DEFAULT_BUCKETS)
    with pytest.raises(ValueError, match="at least 1"):
        bucket_for(0, DEFAULT_BUCKETS)


def test_chunk_plan_covers_the_batch_in_chunks_of_the_largest_bucket():
    assert chunk_plan(1, DEFAULT_BUCKETS) == [(0, 1, 1)]
    assert chunk_plan(5, DEFAULT_BUCKETS) == [(0, 5, 8)]
    assert chunk_plan(256, DEFAULT_BUCKETS) == [(0, 256, 256)]
    assert chunk_plan(300, DEFAULT_BUCKETS) == [(0, 256, 256), (256, 300, 64)]
    assert chunk_plan(513, DEFAULT_BUCKETS) == [(0, 256, 256), (256, 512, 256), (512, 513, 1)]
    assert chunk_plan(10, (3, 4)) == [(0, 4, 4), (4, 8, 4), (8, 10, 3)]
    for batch in range(1, 40):
        plan = chunk_plan(batch, (2, 5))
        assert plan[0][0] == 0 and plan[-1][1] == batch
        assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
        assert all(stop - start <= bucket for start, stop, bucket in plan)


def test_padding_repeats_the_last_row():
    t = torch.arange(12.0).reshape(3, 4)
    p = pad_batch(t, 5)
    assert p.shape == (5, 4) and torch.equal(p[:3], t)
    assert torch.equal(p[3], t[2]) and torch.equal(p[4], t[2])
    assert torch.equal(pad_batch(t, 3), t)
    time = copy_padded(torch.zeros(4), torch.tensor([0.5, 0.7]))
    assert time.tolist() == pytest.approx([0.5, 0.7, 0.7, 0.7])
    with pytest.raises(ValueError, match="cannot pad a batch of 3 into 2 rows"):
        pad_batch(t, 2)


def test_graph_key_is_shapes_and_dtypes_never_time_values():
    x, t, cond = inputs(3)
    key = graph_key(x, t, cond, 4)
    assert key[:5] == (4, (3, 6, 6), torch.float32, torch.device("cpu"), torch.float32)
    assert dict(key[5]) == {"bias": ("s", (1, 8, 6, 6), torch.float32), "emb": ("b", (4,), torch.float32),
                            "mode": ("v", str, "mul"), "scale": ("s", (), torch.float32)}
    assert key[6] is None  # no autocast
    # other time values, other tensor values, cond order: the same key
    other = {k: cond[k] for k in reversed(list(cond))}
    assert graph_key(x + 1, torch.rand(3), {**other, "emb": torch.randn(3, 4)}, 4) == key
    # time given as a 0-d tensor or a Python float: the dtype decides (a float follows x)
    assert graph_key(x, torch.tensor(0.3), cond, 4) == key
    assert graph_key(x, 0.3, cond, 4) == key
    assert graph_key(x.double(), 0.3, {}, 4)[4] == torch.float64
    assert graph_key(x, 7, {}, 4)[4] == torch.int64
    # what does change the key
    assert graph_key(x, t, cond, 8) != key
    assert graph_key(x, t.double(), cond, 4) != key
    assert graph_key(x, t, {**cond, "mode": "add"}, 4) != key
    assert graph_key(x, t, {"v": 1}, 4) != graph_key(x, t, {"v": True}, 4)  # equal as values, not as inputs
    assert graph_key(x[:, :2], t, cond, 4) != key


def test_graph_key_refuses_what_a_static_buffer_cannot_hold():
    x, t, _ = inputs(2)
    for cond, why in [({"m": torch.zeros(2, device="meta")}, "on meta"), ({"l": [1, 2]}, "unhashable list"),
                      ({"p": (torch.zeros(2), 1)}, "holding tensors")]:
        with pytest.raises(Ungraphable, match=why):
            graph_key(x, t, cond, 2)
    with pytest.raises(Ungraphable, match="time has shape"):
        graph_key(x, torch.zeros(2, 1), {}, 2)
    with pytest.raises(Ungraphable, match="time is a NoneType"):
        graph_key(x, None, {}, 2)


# --- CPU: the graph path with a simulated graph -----------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3, 5, 300])
def test_simulated_graph_path_matches_eager(batch):
    net = make_net()
    gm = SimulatedGraphs(net)
    x, t, cond = inputs(batch)
    for time in (t, t[0], 0.4):
        got = gm(x, time, **cond)
        torch.testing.assert_close(got, net(x, time, **cond), rtol=1e-5, atol=1e-6)
    assert gm.captures == (2 if batch == 300 else 1)
    assert gm.replays == 3 * gm.captures and gm.eager_calls == 0


def test_simulated_one_capture_serves_every_time_and_batch_in_a_bucket():
    gm = SimulatedGraphs(make_net())
    for i, batch in enumerate((3, 4, 3, 4)):
        x, t, cond = inputs(batch, seed=i)
        gm(x, t * i, **cond)
    assert gm.captures == 1 and gm.replays == 4 and len(gm.keys()) == 1 and gm.keys()[0][0] == 4
    gm.reset()
    assert gm.captures == 0 and gm.keys() == []


def test_simulated_outputs_never_alias_graph_memory():
    net = make_net()
    gm = SimulatedGraphs(net)
    x1, t1, c1 = inputs(3, seed=1)
    x2, t2, c2 = inputs(3, seed=2)
    first = gm(x1, t1, **c1)
    kept = first.clone()
    second = gm(x2, t2, **c2)
    assert torch.equal(first, kept)
    assert not torch.allclose(first, second)
    static = gm._graphs[gm.keys()[0]].out
    assert first.data_ptr() != static.data_ptr() and second.data_ptr() != static.data_ptr()


def test_simulated_failed_capture_warns_once_and_runs_eagerly():
    class Failing(SimulatedGraphs):
        def _capture(self, static):
            raise RuntimeError("capture refused")

    net = make_net()
    gm = Failing(net)
    x, t, cond = inputs(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [gm(x, t * i, **cond) for i in range(3)]
    ours = [w for w in caught if issubclass(w.category, GraphFallbackWarning)]
    assert len(ours) == 1 and "capture refused" in str(ours[0].message) and "(4, (3, 6, 6)" in str(ours[0].message)
    for i, out in enumerate(outs):
        assert torch.equal(out, net(x, t * i, **cond))
    assert gm.captures == 0 and gm.eager_calls == 3 and len(gm.fallback_keys()) == 1


def test_simulated_ungraphable_cond_runs_eagerly_with_one_warning():
    def net(x, time, offsets):
        return x + sum(offsets)

    gm = SimulatedGraphs(net)
    x = torch.randn(2, 3)
    with pytest.warns(GraphFallbackWarning, match="cond 'offsets' is an unhashable list"):
        assert torch.equal(gm(x, 0.1, offsets=[1.0, 2.0]), x + 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm(x, 0.1, offsets=[1.0])
    assert gm.eager_calls == 2 and gm.captures == 0


def test_simulated_non_tensor_output_asks_for_a_wrapper():
    gm = SimulatedGraphs(lambda x, t: (x, t))
    with pytest.raises(TypeError, match=r"returned a tuple.*wrap it, e.g. GraphedModel\(lambda"):
        gm(torch.randn(2, 3), torch.zeros(2))


def test_simulated_buffers_survive_leaving_inference_mode():
    net = make_net()
    gm = SimulatedGraphs(net)
    x, t, cond = inputs(3)
    with torch.inference_mode():
        gm(x, t, **cond)
    torch.testing.assert_close(gm(x, t, **cond), net(x, t, **cond), rtol=1e-5, atol=1e-6)
    assert gm.captures == 1


def test_simulated_warns_once_when_a_value_key_keeps_capturing(monkeypatch):
    from revsde import graphs

    monkeypatch.setattr(graphs, "MANY_GRAPHS", 3)
    gm = SimulatedGraphs(lambda x, t, gain: x * gain)
    x = torch.randn(2, 3)
    with pytest.warns(GraphFallbackWarning, match="holds 3 graphs") as caught:
        for step in range(6):
            gm(x, 0.1, gain=1.0 + step)  # a Python float is keyed by value: one graph per value
    assert gm.captures == 6 and len([w for w in caught if issubclass(w.category, GraphFallbackWarning)]) == 1


def test_simulated_unbatched_cond_values_are_copied_in_every_call():
    net = make_net()
    gm = SimulatedGraphs(net)
    x, t, cond = inputs(3)
    for i in range(3):
        cond = {**cond, "bias": cond["bias"] + i, "scale": cond["scale"] * (i + 1)}
        torch.testing.assert_close(gm(x, t, **cond), net(x, t, **cond), rtol=1e-5, atol=1e-6)
    assert gm.captures == 1


# --- CUDA -------------------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("batch", [1, 3, 5, 300])
@pytest.mark.usefixtures("ieee_fp32")
def test_cuda_graphed_matches_eager(batch):
    net = make_net("cuda")
    gm = GraphedModel(net)
    x, t, cond = inputs(batch, "cuda")
    with torch.no_grad():
        for time in (t, t[0], 0.4):
            torch.testing.assert_close(gm(x, time, **cond), net(x, time, **cond), rtol=1e-4, atol=1e-5)
    assert gm.captures == (2 if batch == 300 else 1) and gm.eager_calls == 0


@pytest.mark.cuda
@needs_cuda
@pytest.mark.usefixtures("ieee_fp32")
def test_cuda_new_time_and_cond_values_never_recapture():
    net = make_net("cuda")
    gm = GraphedModel(net)
    x, t, cond = inputs(4, "cuda")
    with torch.no_grad():
        for i in range(10):
            time = t * (i + 1) / 10
            cond = {**cond, "scale": cond["scale"] + 0.1}  # unbatched tensors may change too
            torch.testing.assert_close(gm(x, time, **cond), net(x, time, **cond), rtol=1e-4, atol=1e-5)
    assert gm.captures == 1 and gm.replays == 10


@pytest.mark.cuda
@needs_cuda
def test_cuda_outputs_do_not_alias():
    gm = GraphedModel(make_net("cuda"))
    x1, t1, c1 = inputs(3, "cuda", seed=1)
    x2, t2, c2 = inputs(3, "cuda", seed=2)
    first = gm(x1, t1, **c1)
    kept = first.clone()
    second = gm(x2, t2, **c2)
    assert torch.equal(first, kept) and not torch.allclose(first, second)


@pytest.mark.cuda
@needs_cuda
def test_cuda_memory_does_not_grow_over_1000_calls():
    gm = GraphedModel(make_net("cuda"))
    x, t, cond = inputs(3, "cuda")
    held = [gm(x, t, **cond)]  # one output alive at both measurements
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for i in range(1000):
        held[0] = gm(x, t * (i % 7), **cond)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before <= 64 * 1024
    assert gm.captures == 1 and gm.replays == 1001


class ItemNet(nn.Module):
    """Reads a value back to the host in forward: fine eagerly, impossible inside a capture."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, time):
        gain = 1.0 if x.abs().amax().item() >= 0 else 2.0
        return self.inner(x, time) * gain


@pytest.mark.cuda
@needs_cuda
def test_cuda_host_sync_in_forward_falls_back_to_eager_with_one_warning():
    net = ItemNet(make_net("cuda"))
    gm = GraphedModel(net)
    x, t, _ = inputs(3, "cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [gm(x, t * i) for i in range(3)]
    assert len([w for w in caught if issubclass(w.category, GraphFallbackWarning)]) == 1
    with torch.no_grad():
        for i, out in enumerate(outs):
            torch.testing.assert_close(out, net(x, t * i), rtol=1e-5, atol=1e-6)
    assert gm.captures == 0 and gm.eager_calls == 3
    y = torch.randn(3, 3, 6, 6, device="cuda")  # the stream and allocator are still usable
    torch.testing.assert_close(y + 1, y.cpu().add(1).cuda())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", revsde.samplers.available())
def test_cuda_every_sampler_agrees_graphed_and_eager(name):
    try:
        revsde.samplers.get(name)
    except (TypeError, ValueError) as err:
        pytest.skip(f"sampler {name!r} needs options: {err}")
    sde = revsde.sde.VPSDE()
    net = make_net("cuda", torch.float64)
    run = dict(shape=(3, 3, 6, 6), sampler=name, steps=None if revsde.samplers.get(name).adaptive else 6,
               seed=0, device="cuda", dtype=torch.float64, graphs=False)
    graphed = GraphedModel(net)
    got = revsde.sample(revsde.ScoreModel(graphed, sde), **run)
    want = revsde.sample(revsde.ScoreModel(net, sde), **run)
    assert graphed.captures >= 1 and graphed.eager_calls == 0
    assert got.nfe == want.nfe
    torch.testing.assert_close(got.x, want.x, rtol=1e-7, atol=1e-9)


# Last on purpose: this one makes a real capture fail part-way (the CUDA runtime invalidates it).
@pytest.mark.cuda
@needs_cuda
@pytest.mark.usefixtures("ieee_fp32")
def test_cuda_invalidated_capture_falls_back_and_later_keys_still_graph():
    class Sabotaged(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.sabotage = inner, True

        def forward(self, x, time):
            if self.sabotage and torch.cuda.is_current_stream_capturing():
                torch.cuda.synchronize()  # illegal while capturing; warm-up never gets here
            return self.inner(x, time)

    net = Sabotaged(make_net("cuda"))
    gm = GraphedModel(net)
    x, t, _ = inputs(2, "cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = gm(x, t)
        again = gm(x, t)
    assert len([w for w in caught if issubclass(w.category, GraphFallbackWarning)]) == 1
    with torch.no_grad():
        torch.testing.assert_close(first, net(x, t))
        torch.testing.assert_close(again, net(x, t))
    assert gm.captures == 0 and torch.cuda.current_stream() == torch.cuda.default_stream()
    net.sabotage = False
    x8, t8, _ = inputs(8, "cuda")
    with torch.no_grad():
        torch.testing.assert_close(gm(x8, t8), net(x8, t8), rtol=1e-4, atol=1e-5)
    assert gm.captures == 1
