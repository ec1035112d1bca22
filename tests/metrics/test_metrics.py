"""The distribution metrics against closed forms and independent reference computations."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch

from revsde.metrics import frechet_distance, sample_moments, sliced_wasserstein


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# --- Fréchet distance ---------------------------------------------------------------------------

def test_fd_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mean, cov = rng.standard_normal(6), random_spd(rng, 6)
    assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("m1, s1, m2, s2", [(0.0, 1.0, 0.0, 1.0), (0.3, 2.0, -1.2, 0.5), (5.0, 1e-3, 4.0, 3.0)])
def test_fd_of_1d_gaussians_is_mean_and_std_gap(m1, s1, m2, s2):
    expected = (m1 - m2) ** 2 + (s1 - s2) ** 2
    assert frechet_distance([m1], [[s1**2]], [m2], [[s2**2]]) == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert frechet_distance(m1, s1**2, m2, s2**2) == pytest.approx(expected, rel=1e-12, abs=1e-14)  # scalars


@pytest.mark.parametrize("d", [2, 5, 16])
def test_fd_matches_sqrtm_formula_on_random_spd(d):
    rng = np.random.default_rng(d)
    for _ in range(5):
        m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
        c1, c2 = random_spd(rng, d), random_spd(rng, d)
        root = scipy.linalg.sqrtm(c1 @ c2).real  # the FID reference computation
        expected = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root)
        assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, abs=1e-8)
        assert frechet_distance(torch.tensor(m1), torch.tensor(c1), m2, c2) == pytest.approx(expected, abs=1e-8)


def test_fd_is_symmetric_and_handles_singular_covariances():
    rng = np.random.default_rng(1)
    m1, m2 = rng.standard_normal(4), rng.standard_normal(4)
    c1 = random_spd(rng, 4)
    v = rng.standard_normal((4, 1))
    c2 = v @ v.T  # rank 1: eigenvalues round off slightly negative
    # The zero eigenvalues of C₁^½ C₂ C₁^½ come out as ±1e-16 round-off whose square roots are 1e-8:
    # a singular covariance costs about sqrt(machine eps) in relative accuracy, in either order.
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(frechet_distance(m2, c2, m1, c1), rel=1e-7)
    # W2² to a point mass is ‖m₁ − m₂‖² + tr C₁
    assert frechet_distance(m1, c1, m2, np.zeros((4, 4))) == pytest.approx(
        np.sum((m1 - m2) ** 2) + np.trace(c1), rel=1e-7)


def test_fd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_sample_moments_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 3)) + 1.5
    mean, cov = sample_moments(x)
    assert mean.dtype == torch.float64 and cov.shape == (3, 3)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(x, rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        sample_moments(x[:1])


# --- sliced Wasserstein -------------------------------------------------------------------------

def test_swd_of_a_set_with_itself_is_zero():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x, x, generator=torch.Generator().manual_seed(1)) == 0.0
    # the same empirical measure with every point twice: the unequal-size path must agree
    assert sliced_wasserstein(x, torch.cat([x, x]), generator=torch.Generator().manual_seed(1)) < 1e-12


@pytest.mark.parametrize("a", [0.25, 1.0, 3.0])
def test_swd_of_shifted_1d_gaussians_is_the_shift(a):
    # W2(N(0,1), N(a,1)) = |a|. For samples, W2² = a² − 2a (x̄ − ȳ₀) + W2²(x, y₀) with y = a + y₀: the error
    # is led by the gap of the sample means, std sqrt(2/N) = 0.0063 at N = 50 000 (the last term, measured
    # 0.01–0.03 in W2 at N = 20 000, adds under 0.002 for a ≥ 0.25). 0.03 is about five standard deviations.
    g = torch.Generator().manual_seed(int(100 * a))
    x, y = torch.randn(50_000, 1, generator=g), a + torch.randn(50_000, 1, generator=g)
    assert sliced_wasserstein(x, y, projections=8, generator=g) == pytest.approx(a, abs=0.03)
    assert sliced_wasserstein(x, y[:35_000], projections=8, generator=g) == pytest.approx(a, abs=0.03)


def test_swd_of_an_exact_shift_averages_the_projected_shift():
    # y = x + a exactly: along θ the W2 is |θ·a|, so SW2² = E(θ·a)² = ‖a‖²/D for θ uniform on the sphere.
    # Monte Carlo over 4096 directions in D = 3: E cos² = 1/3, std of the mean ≈ 0.3% of ‖a‖.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    swd = sliced_wasserstein(x, x + a, projections=4096, generator=g)
    assert swd == pytest.approx(float(a.norm()) / math.sqrt(3), rel=0.02)


def test_swd_is_symmetric():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(400, 2, generator=g), 0.5 * torch.randn(250, 2, generator=g) + 1
    forward = sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(9))
    backward = sliced_wasserstein(y, x, generator=torch.Generator().manual_seed(9))
    assert forward == pytest.approx(backward, rel=1e-12)


def test_swd_with_unequal_sizes_matches_optimal_transport_lp():
    # In 1-D the sliced distance is W2 itself (θ = ±1); compare with the transport LP solved by SciPy.
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal(5), 2 * rng.standard_normal(7) + 0.3
    n, m = len(x), len(y)
    cost = (x[:, None] - y[None, :]) ** 2
    rows = np.kron(np.eye(n), np.ones(m))          # Σ_j P_ij = 1/n
    cols = np.kron(np.ones(n), np.eye(m))          # Σ_i P_ij = 1/m
    lp = scipy.optimize.linprog(cost.ravel(), A_eq=np.vstack([rows, cols]),
                                b_eq=np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)]), bounds=(0, None))
    assert lp.success
    assert sliced_wasserstein(x[:, None], y[:, None], projections=3) == pytest.approx(math.sqrt(lp.fun), rel=1e-9)


def test_swd_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="projections"):
        sliced_wasserstein(np.zeros((3, 2)), np.zeros((3, 2)), projections=0)
