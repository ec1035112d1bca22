"""The counter-based generator behind ``seed=`` (``revsde.philox``): Philox4x32's published known answers, the
normals as a pure function of (key, draw, element) (batch-invariant; cached, one at a time and indexed by a
tensor alike), and the streams' statistics: moments and a Kolmogorov–Smirnov test against N(0, 1) on 10⁶
draws, independence across draws, samples, elements and neighbouring keys (fixed seeds, 5 standard errors);
CPU = CUDA and CUDA-graph capture where a GPU is present."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import revsde
from revsde.nets.gmm import exact_model
from revsde.noise import generators_from_seed
from revsde.philox import PhiloxGenerator, as_keys, normals, philox4x32

from fixtures import gaussian

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Random123's tests/kat_vectors: counter (4 words), key (2 words) -> output (4 words)
KNOWN_ANSWERS = [
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def assert_unrelated(a: torch.Tensor, b: torch.Tensor):
    """No correlation between ``a`` and ``b``, nor between their squares (dependence that leaves the
    correlation at 0, e.g. a shared Box–Muller radius), within 5 standard errors."""
    bound = 5 / math.sqrt(a.numel())
    assert abs(corr(a, b)) < bound
    assert abs(corr(a**2, b**2)) < bound


def assert_uniform_pairs(a: torch.Tensor, b: torch.Tensor, bins: int = 10):
    """(Φ(a), Φ(b)) fills the unit square evenly: chi-square on a bins x bins grid, p > 10⁻⁴."""
    ua = (torch.special.ndtr(a.flatten()) * bins).long().clamp(max=bins - 1)
    ub = (torch.special.ndtr(b.flatten()) * bins).long().clamp(max=bins - 1)
    counts = torch.bincount(ua * bins + ub, minlength=bins * bins).double()
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4


# --- the generator: known answers and a pure function ---------------------------------------------------
@pytest.mark.parametrize("rounds, counter, key, expected", KNOWN_ANSWERS)
def test_philox4x32_known_answers(rounds, counter, key, expected):
    assert [int(w) for w in philox4x32(counter, key, rounds=rounds)] == list(expected)


def test_philox4x32_vectorises_over_counters_and_keys():
    """A tensor of counters and keys gives, element by element, what each gives alone."""
    g = torch.Generator().manual_seed(0)
    words = [torch.randint(0, 2**32, (7,), generator=g) for _ in range(6)]
    together = philox4x32(words[:4], words[4:])
    for i in range(7):
        alone = philox4x32([int(w[i]) for w in words[:4]], [int(w[i]) for w in words[4:]])
        assert [int(w[i]) for w in together] == [int(w) for w in alone]


def test_a_draw_is_a_function_of_key_draw_and_element_only():
    """Sample b of a batch seeded s is the stream of key s + b: alone, in another batch, drawn one draw at a
    time (the CPU's cache), many at once, from a tensor draw index (the device path), for any prefix of
    its elements."""
    batch = PhiloxGenerator.from_seed(5, 4)
    draws = [batch.normal((4, 3, 5), dtype=F64) for _ in range(6)]
    alone = PhiloxGenerator(as_keys([7]))
    for d in range(6):
        assert torch.equal(alone.normal((1, 3, 5), dtype=F64)[0], draws[d][2])
    keys = as_keys(range(5, 9))
    many = normals(keys, 1, 15, draws=5)  # from an odd index: the rows of two draws straddle it
    for d in range(6):
        expected = draws[d].reshape(4, 15)
        assert torch.equal(normals(keys, torch.tensor(d), 15)[:, 0], expected)
        assert torch.equal(normals(keys, d, 8)[:, 0], expected[:, :8])  # element j does not depend on the count
        if d:
            assert torch.equal(many[:, d - 1], expected)
    assert len({float(z[0, 0, 0]) for z in draws}) == 6  # every draw anew


def test_state_slices_and_dtypes():
    g = PhiloxGenerator.from_seed(3, 5)
    g.normal((5, 4))
    state = g.get_state()
    nxt = g.normal((5, 4), dtype=F64)
    other = PhiloxGenerator.from_seed(99, 5)
    other.set_state(state)  # the draw index and the keys, as a torch.Generator's state
    assert torch.equal(other.normal((5, 4), dtype=F64), nxt)
    g.set_state(state)
    assert torch.equal(g[1:3].normal((2, 4), dtype=F64), nxt[1:3])  # a slice keeps its keys and index
    g.set_state(state)
    assert torch.equal(g.normal((5, 4), dtype=torch.float32), nxt.float())  # float32: float64 rounded
    g.set_state(state)
    z = g.normal((5, 2), dtype=torch.complex128)  # complex: consecutive pairs, E|z|^2 = 1
    assert torch.equal(torch.view_as_real(z).reshape(5, 4), nxt / 2**0.5)
    with pytest.raises(ValueError, match="5 samples cannot draw shape"):
        g.normal((4, 2))


# --- statistics ----------------------------------------------------------------------------------------
def test_a_million_draws_are_standard_normal():
    """Mean, variance, skewness and kurtosis within 5 standard errors, and Kolmogorov–Smirnov against N(0, 1)."""
    g = PhiloxGenerator.from_seed(0, 100)
    z = torch.cat([g.normal((100, 100), dtype=F64).flatten() for _ in range(100)])
    n = z.numel()
    assert n == 10**6
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15 / n)
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    assert float(z.abs().max()) > 4.5  # the tails are there (about 7 in 10^6 beyond 4.5)


def test_draws_samples_and_elements_are_independent():
    """Consecutive draws (two of them share each Philox block), samples (keys s + b and s + b + 1) and
    elements (the two halves of a Box–Muller pair, and the next pair): uncorrelated, squares too, and their
    uniforms Φ(z) fill the square evenly."""
    g = PhiloxGenerator.from_seed(123, 200)
    z = torch.stack([g.normal((200, 64), dtype=F64) for _ in range(40)])  # (draw, sample, element)
    for a, b in [(z[:-1], z[1:]), (z[0::2], z[1::2]),  # next draw; the block-sharing partner
                 (z[:, :-1], z[:, 1:]),  # neighbouring keys
                 (z[..., 0::2], z[..., 1::2]), (z[..., 1:-1:2], z[..., 2::2])]:  # pair partners; next pair
        assert_unrelated(a, b)
        assert_uniform_pairs(a, b)


@pytest.mark.parametrize("seed", [0, 2**32 - 1, 2**62])
def test_neighbouring_seeds_are_unrelated(seed):
    """Runs seeded s and s + 1 (one sample each) draw unrelated streams, across the low key word's carry too."""
    a, b = PhiloxGenerator.from_seed(seed, 1), PhiloxGenerator.from_seed(seed + 1, 1)
    za = torch.cat([a.normal((1, 4096), dtype=F64) for _ in range(50)])
    zb = torch.cat([b.normal((1, 4096), dtype=F64) for _ in range(50)])
    assert_unrelated(za, zb)
    assert_uniform_pairs(za, zb)
    assert abs(float(za.var()) - 1) < 5 * math.sqrt(2 / za.numel())


# --- through revsde.sample -----------------------------------------------------------------------------
def test_seed_draws_the_philox_streams_and_generator_keeps_torch_generators():
    """``seed=s`` is ``generator=PhiloxGenerator.from_seed(s, B)``: the prior is its first draw and the step
    noise the draws after it. A list of torch generators gives what it gave before the Philox streams: the
    prior is their ``randn``, the noise their next ones."""
    sde = revsde.sde.VPSDE()
    model = exact_model(gaussian(), sde)
    run = lambda **kw: revsde.sample(model, sampler="euler_maruyama", steps=4, dtype=F64, **kw).x
    philox = PhiloxGenerator.from_seed(4, 3)
    prior = sde.prior_sample((3, 2), generator=philox, dtype=F64)
    assert torch.equal(prior, sde.prior_std * normals(as_keys([4, 5, 6]), 0, 2)[:, 0])
    continued = run(x_init=prior, noise=revsde.GaussianNoise((3, 2), philox, dtype=F64))
    assert torch.equal(run(shape=(3, 2), seed=4), continued)
    assert torch.equal(run(shape=(3, 2), generator=PhiloxGenerator.from_seed(4, 3)), continued)
    gens = generators_from_seed(4, 3)
    prior = sde.prior_std * torch.stack([torch.randn(2, generator=g, dtype=F64) for g in gens])
    continued = run(x_init=prior, noise=revsde.GaussianNoise((3, 2), gens, dtype=F64))
    assert torch.equal(run(shape=(3, 2), generator=generators_from_seed(4, 3)), continued)


# --- CUDA ----------------------------------------------------------------------------------------------
@CUDA
def test_cuda_draws_equal_cpu_draws():
    """The words are integers, so equal on every device; the normals are computed in float64 and rounded,
    so float32 draws are equal too."""
    keys = as_keys(range(1000, 1064))
    cpu, gpu = PhiloxGenerator(keys), PhiloxGenerator(keys.cuda())
    for _ in range(3):
        a, b = cpu.normal((64, 3, 33, 17)), gpu.normal((64, 3, 33, 17))
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())
    words = [torch.randint(0, 2**32, (4096,)) for _ in range(6)]
    on_gpu = philox4x32([w.cuda() for w in words[:4]], [w.cuda() for w in words[4:]])
    for c, g in zip(philox4x32(words[:4], words[4:]), on_gpu):
        assert torch.equal(c, g.cpu())


@CUDA
def test_cuda_draws_replay_from_a_cuda_graph():
    """The draw index is a device tensor: a captured draw, replayed, gives the next draws in turn."""
    keys = as_keys(range(7, 15)).cuda()
    eager = PhiloxGenerator(keys)
    expected = [eager.normal((8, 5, 6)) for _ in range(4)]
    captured = PhiloxGenerator(keys)
    captured.normal((8, 5, 6))  # warm-up outside the graph: draw 0
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph):
            out = captured.normal((8, 5, 6))  # captured as draw 1; each replay draws the next
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected[1])
    for d in (2, 3):
        graph.replay()
        assert torch.equal(out, expected[d])
