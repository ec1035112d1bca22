"""Noise sources: per-sample reproducibility, standard-normal moments (statistical, fixed seeds, 5 standard
errors), and the Brownian path's defining properties (one path at every step count, independent
increments, space-time Lévy area), each for both kinds of randomness: per-sample torch generators
(torchsde's ``BrownianInterval``) and the per-sample Philox streams of ``seed=`` (``BrownianTree``). The
Philox generator's own tests are in test_counter_noise.py."""
from __future__ import annotations

import math

import pytest
import torch

from revsde.noise import (BrownianNoise, BrownianTree, GaussianNoise, PhiloxGenerator, generator_from_seed,
                          generators_from_seed, randn)

F64 = torch.float64
# Statistical tests keep each tensor under 32768 elements: above it torch splits elementwise ops over
# threads, which on a small shared CPU makes the Brownian tree's arithmetic slower by orders of magnitude.
N = 20000


def assert_standard_normal(z: torch.Tensor, var: float = 1.0):
    """Mean 0 and variance ``var`` within 5 standard errors (Gaussian: SE of the variance = var·sqrt(2/n))."""
    z = z.flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 5 * math.sqrt(var / n)
    assert abs(float(z.var()) - var) < 5 * var * math.sqrt(2 / n)
    # fourth moment: 3 var² for a normal (SE ≈ var²·sqrt(96/n))
    assert abs(float((z**4).mean()) - 3 * var**2) < 5 * var**2 * math.sqrt(96 / n)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def philox_tree(shape, t0, t1, entropy, dtype=F64):
    """``BrownianNoise``'s signature on a ``BrownianTree``: a list of keys, or an int ``s`` for keys s + b."""
    keys = torch.tensor(entropy) if not isinstance(entropy, int) else torch.arange(shape[0]) + entropy
    return BrownianTree(shape, t0, t1, PhiloxGenerator(keys), dtype=dtype)


SEEDED = pytest.mark.parametrize("seeded", [generators_from_seed, generator_from_seed], ids=["torch", "philox"])
BROWNIAN = pytest.mark.parametrize("brownian", [BrownianNoise, philox_tree], ids=["torchsde", "philox"])


# --- GaussianNoise ----------------------------------------------------------------------------------

@SEEDED
def test_gaussian_rows_do_not_depend_on_the_batch(seeded):
    small = GaussianNoise((3, 2, 4), seeded(40, 3), dtype=F64)
    large = GaussianNoise((5, 2, 4), seeded(40, 5), dtype=F64)
    for _ in range(3):  # every call, not only the first
        a, b = small(0.5, 0.4), large(0.5, 0.4)
        assert torch.equal(a, b[:3])
    assert not torch.equal(b[3], b[4])


def test_generators_from_seed_is_edm_seed_plus_index():
    gens = generators_from_seed(7, 3)
    for b, g in enumerate(gens):
        assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=torch.Generator().manual_seed(7 + b)))


def test_gaussian_single_generator_is_reproducible():
    a = GaussianNoise((4, 3), torch.Generator().manual_seed(1), dtype=F64)
    b = GaussianNoise((4, 3), torch.Generator().manual_seed(1), dtype=F64)
    first = a()
    assert torch.equal(first, b()) and torch.equal(a.fresh(), b.fresh())
    assert not torch.equal(a(), first)  # each call draws anew


@SEEDED
def test_gaussian_moments_are_standard_normal(seeded):
    noise = GaussianNoise((4, N // 4), seeded(0, 4), dtype=F64)
    first, second = noise(1.0, 0.9), noise(0.9, 0.8)
    assert_standard_normal(first)
    assert_standard_normal(second)
    assert abs(corr(first, second)) < 5 / math.sqrt(N)


@SEEDED
def test_gaussian_complex_has_half_variance_per_part(seeded):
    z = GaussianNoise((2, N // 2), seeded(3, 2), dtype=torch.complex128)()
    assert z.dtype == torch.complex128
    assert_standard_normal(z.real, 0.5)
    assert_standard_normal(z.imag, 0.5)
    assert abs(corr(z.real, z.imag)) < 5 / math.sqrt(N)


def test_randn_needs_one_generator_per_sample():
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn((3, 4), generators_from_seed(0, 2))


# --- Brownian paths: BrownianNoise (torchsde) and BrownianTree (Philox) -------------------------

def increments_along(noise, grid: torch.Tensor) -> torch.Tensor:
    """Σ sqrt(Δ)·noise over a decreasing grid: the unnormalised increment W(grid[0]) − W(grid[-1])."""
    total = 0
    for hi, lo in zip(grid[:-1], grid[1:]):
        total = total + math.sqrt(float(hi - lo)) * noise(hi, lo)
    return total


@BROWNIAN
@pytest.mark.parametrize("entropy", [[11, 12, 13], 5], ids=["per_sample", "batch"])
def test_brownian_path_is_the_same_at_every_step_count(brownian, entropy):
    """Two samplers with 64 and 5 (irregular) steps and one with a single step see one path."""
    shape = (3, 2, 4)
    coarse = brownian(shape, 0.0, 1.0, entropy, dtype=F64)
    whole = math.sqrt(0.99) * coarse(1.0, 0.01)
    fine = increments_along(brownian(shape, 0.0, 1.0, entropy, dtype=F64),
                            torch.linspace(1.0, 0.01, 65, dtype=F64))
    odd = increments_along(brownian(shape, 0.0, 1.0, entropy, dtype=F64),
                           torch.tensor([1.0, 0.731, 0.5, 0.123456789, 0.0123, 0.01], dtype=F64))
    torch.testing.assert_close(fine, whole, rtol=0, atol=1e-9)
    torch.testing.assert_close(odd, whole, rtol=0, atol=1e-9)
    assert float(whole.abs().max()) > 0.1  # not a degenerate path
    # a sub-interval queried directly equals the sum of the fine steps inside it
    sub = brownian(shape, 0.0, 1.0, entropy, dtype=F64)
    middle = increments_along(sub, torch.linspace(0.75, 0.25, 9, dtype=F64))
    direct = math.sqrt(0.5) * brownian(shape, 0.0, 1.0, entropy, dtype=F64)(0.25, 0.75)
    torch.testing.assert_close(middle, direct, rtol=0, atol=1e-9)


@BROWNIAN
def test_brownian_different_entropies_give_different_paths(brownian):
    a = brownian((2, 3), 0.0, 1.0, [1, 2], dtype=F64)(1.0, 0.5)
    b = brownian((2, 3), 0.0, 1.0, [1, 3], dtype=F64)(1.0, 0.5)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def brownian_samples(brownian, intervals, paths: int = 4, return_U: bool = False):
    """Normalised increments over ``intervals`` from ``paths`` independent batch-mode paths of N values
    (a tree's keys: entropy + b, so the paths' entropies lie N apart)."""
    out = [[] for _ in intervals]
    for seed in range(paths):
        noise = brownian((N,), 0.0, 1.0, 1000 + N * seed, dtype=F64)
        for i, (lo, hi) in enumerate(intervals):
            out[i].append(noise.increment(lo, hi, return_U=True) if return_U else noise(lo, hi))
    if return_U:
        return [(torch.cat([w for w, _ in o]), torch.cat([u for _, u in o])) for o in out]
    return [torch.cat(o) for o in out]


@BROWNIAN
def test_brownian_increments_are_independent_standard_normals(brownian):
    disjoint = [(0.0, 0.3), (0.3, 0.7), (0.7, 1.0), (0.05, 0.06)]
    z = brownian_samples(brownian, disjoint + [(0.0, 0.5), (0.25, 0.75)])
    n = z[0].numel()
    for zi in z:
        assert_standard_normal(zi)
    for i in range(len(disjoint)):
        for j in range(i + 1, len(disjoint)):
            if disjoint[i][1] <= disjoint[j][0] or disjoint[j][1] <= disjoint[i][0]:
                assert abs(corr(z[i], z[j])) < 5 / math.sqrt(n)
    # overlapping intervals of one path: corr = overlap / sqrt(h1 h2) = 0.25 / 0.5
    assert abs(corr(z[4], z[5]) - 0.5) < 5 * (1 - 0.25) / math.sqrt(n)


@BROWNIAN
def test_brownian_space_time_levy_area_statistics(brownian):
    """U = ∫_lo^hi (W_r − W_lo) dr: Var W = h, Var U = h³/3, Cov(W, U) = h²/2."""
    (w, u), = brownian_samples(brownian, [(0.2, 0.6)], return_U=True)
    h, n = 0.4, w.numel()
    assert_standard_normal(w / math.sqrt(h))
    assert_standard_normal(u / math.sqrt(h**3 / 3))
    rho = math.sqrt(3) / 2  # (h²/2) / sqrt(h · h³/3)
    assert abs(corr(w, u) - rho) < 5 * (1 - rho**2) / math.sqrt(n)
    assert abs(float((w * u).mean()) - h**2 / 2) < 5 * math.sqrt((h * h**3 / 3 + (h**2 / 2) ** 2) / n)


@BROWNIAN
@pytest.mark.parametrize("entropy", [[21, 22, 23], 9], ids=["per_sample", "batch"])
def test_brownian_increment_agrees_with_the_normalised_noise(brownian, entropy):
    a = brownian((3, 5), 0.0, 1.0, entropy, dtype=F64)
    b = brownian((3, 5), 0.0, 1.0, entropy, dtype=F64)
    w, u = a.increment(0.9, 0.4, return_U=True)
    assert w.shape == u.shape == (3, 5)
    torch.testing.assert_close(w, math.sqrt(0.5) * b(0.9, 0.4), rtol=0, atol=1e-12)
    assert torch.equal(a.increment(0.4, 0.9), w)


@BROWNIAN
def test_brownian_per_sample_rows_do_not_depend_on_the_batch(brownian):
    small = brownian((3, 4), 0.0, 1.0, [30, 31, 32], dtype=F64)
    large = brownian((5, 4), 0.0, 1.0, [30, 31, 32, 33, 34], dtype=F64)
    for t_hi, t_lo in [(1.0, 0.6), (0.6, 0.35), (0.35, 0.0)]:
        assert torch.equal(small(t_hi, t_lo), large(t_hi, t_lo)[:3])
    assert torch.equal(small.fresh(), large.fresh()[:3])
    w3, u3 = small.increment(0.2, 0.1, return_U=True)
    w5, u5 = large.increment(0.2, 0.1, return_U=True)
    assert torch.equal(w3, w5[:3]) and torch.equal(u3, u5[:3])


@BROWNIAN
@pytest.mark.parametrize("entropy", [[40, 41, 42], 8], ids=["per_sample", "batch"])
def test_brownian_per_sample_times(brownian, entropy):
    """A (B,) time gives every sample its own interval of its own row of the path."""
    noise = brownian((3, 4), 0.0, 1.0, entropy, dtype=F64)
    hi = torch.tensor([1.0, 0.8, 0.5], dtype=F64)
    lo = torch.tensor([0.7, 0.2, 0.45], dtype=F64)
    z = noise(hi, lo)
    ref = brownian((3, 4), 0.0, 1.0, entropy, dtype=F64)
    for b in range(3):
        torch.testing.assert_close(z[b], ref(float(hi[b]), float(lo[b]))[b], rtol=0, atol=1e-12)


@BROWNIAN
def test_brownian_fresh_is_reproducible_and_off_the_path(brownian):
    a = brownian((2, N // 2), 0.0, 1.0, [3, 4], dtype=F64)
    b = brownian((2, N // 2), 0.0, 1.0, [3, 4], dtype=F64)
    first = a.fresh()
    assert torch.equal(first, b.fresh())
    second = a.fresh()
    assert torch.equal(second, b.fresh()) and not torch.equal(first, second)
    assert_standard_normal(first)
    assert abs(corr(first, a(1.0, 0.0))) < 5 / math.sqrt(N)
    batch = brownian((3, 2), 0.0, 1.0, 6, dtype=F64)
    assert torch.equal(batch.fresh(), brownian((3, 2), 0.0, 1.0, 6, dtype=F64).fresh())


@BROWNIAN
def test_brownian_complex_has_half_variance_per_part(brownian):
    noise = brownian((N // 2,), 0.0, 1.0, 17, dtype=torch.complex128)
    z = noise(0.8, 0.3)
    assert z.dtype == torch.complex128
    assert_standard_normal(z.real, 0.5)
    assert_standard_normal(z.imag, 0.5)
    assert abs(corr(z.real, z.imag)) < 5 / math.sqrt(z.numel())
    w, u = noise.increment(0.8, 0.3, return_U=True)
    torch.testing.assert_close(w, math.sqrt(0.5) * z, rtol=0, atol=1e-12)
    assert abs(float(u.real.var()) - 0.5 * 0.5**3 / 3) < 5 * 0.5 * 0.5**3 / 3 * math.sqrt(2 / u.numel())
