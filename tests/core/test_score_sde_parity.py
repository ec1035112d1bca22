"""Song et al.'s predictor–corrector sampler against score_sde's own formulas (issue 21, items 1 and 4).

The reference below is a transcription of score_sde's ``sde_lib.discretize`` (VP: DDPM, VE: SMLD, else
Euler with Δt = 1/N), ``ReverseDiffusionPredictor``, ``LangevinCorrector`` and the PC loop (corrector
first, noise-free last step), run on the same exact score and the same normals as revsde. What each
``reverse_diffusion`` discretisation equals is stated in its docstring and the README; the equalities
are tested here, and the one place they do not hold (continuous VP) is measured.
"""
from __future__ import annotations

import math

import pytest
import torch

import revsde
from revsde import sde as S
from revsde.nets.gmm import GaussianMixture, exact_model

N = 100  # score_sde's N (table points; N − 1 steps on revsde's grid, see _table_grid)


class Replay:
    """A noise source that hands out pre-drawn normals in order (``noise(t0, t1)`` and ``fresh()`` alike),
    so revsde and the reference consume the same numbers."""

    def __init__(self, draws):
        self.draws, self.used = list(draws), 0

    def __call__(self, t0=None, t1=None):
        z = self.draws[self.used]
        self.used += 1
        return z

    fresh = __call__


def draws(count: int, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 2, generator=gen, dtype=torch.float64) for _ in range(count)]


def score_fn(model, sde):
    return lambda x, t: model(x, torch.full((x.shape[0],), float(t), dtype=torch.float64)).score


def score_sde_pc(step_fn, alpha_fn, score, x, indices, z, *, snr, corrector_steps, batch_norms):
    """score_sde's ``pc_sampler`` over table indices ``indices`` (decreasing): corrector then predictor,
    returning the last predictor's mean. ``step_fn(k, x, s) -> (mean, G)``; ``alpha_fn(k)``: the
    corrector's α (score_sde: ``sde.alphas[k]`` for VP, 1 for VE)."""
    z = iter(z)
    for k in indices:
        for _ in range(corrector_steps):
            grad = score(x, k)
            noise = next(z)
            grad_norm = torch.linalg.norm(grad.reshape(grad.shape[0], -1), dim=-1)
            noise_norm = torch.linalg.norm(noise.reshape(noise.shape[0], -1), dim=-1)
            if batch_norms:
                grad_norm, noise_norm = grad_norm.mean(), noise_norm.mean()
            step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha_fn(k)
            x = x + step_size.reshape(-1, 1) * grad + torch.sqrt(step_size * 2).reshape(-1, 1) * noise
        mean, G = step_fn(k, x, score(x, k))
        x = mean + G * next(z) if k != indices[-1] else mean
    return x


def _table_grid(n_train: int) -> torch.Tensor:
    """revsde times of the table indices n_train − 1, …, 0 (one index per step)."""
    return torch.arange(n_train - 1, -1, -1, dtype=torch.float64) / (n_train - 1)


# --- score_sde's discretisations ------------------------------------------------------------------
def score_sde_vp(betas):
    """VPSDE.discretize on its table: ``f = (sqrt(1 − β_k) − 1) x``, ``G = sqrt(β_k)``; corrector α = 1 − β_k."""
    alphas = 1 - betas

    def step(k, x, s):
        return x - (torch.sqrt(alphas[k]) - 1) * x + betas[k] * s, torch.sqrt(betas[k])

    return step, lambda k: alphas[k]


def score_sde_ve(sigmas):
    """VESDE.discretize (SMLD): ``f = 0``, ``G² = σ_k² − σ_{k−1}²`` (σ_{−1} = 0); corrector α = 1."""
    def step(k, x, s):
        adjacent = sigmas[k - 1] if k > 0 else torch.zeros(())
        G2 = sigmas[k] ** 2 - adjacent**2
        return x + G2 * s, torch.sqrt(G2)

    return step, lambda k: 1.0


def _vp_case():
    """score_sde's VPSDE(N) table as a DiscreteVPSDE: β_k = β_min/N + k (β_max − β_min)/(N (N − 1))."""
    betas = torch.linspace(0.1 / N, 20.0 / N, N, dtype=torch.float64)
    sde = S.DiscreteVPSDE.from_betas(betas)
    return sde, score_sde_vp(betas)


def _ve_case():
    """score_sde's VESDE(N) σ table ``exp(linspace(log σ_min, log σ_max, N))`` is revsde's σ(k/(N − 1))."""
    sde = S.VESDE(sigma_min=0.01, sigma_max=50.0, t_min=0.0)
    sigmas = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), N, dtype=torch.float64))
    return sde, score_sde_ve(sigmas)


CASES = {"vp-table": _vp_case, "ve": _ve_case}


def _revsde_pc(sde, batch, z, **options):
    """revsde's pc on the table grid, model time = the continuous time (the reference calls the score at
    table index k, i.e. t = k/(N − 1))."""
    mixture = GaussianMixture.ring()
    model = exact_model(mixture, sde)
    x = sde.prior_sample((batch, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sol = revsde.sample(model, x_init=x, sampler="pc", grid=_table_grid(N), noise=Replay(z), **options)
    return sol.x, x, model


def _reference(case, model, sde, x, z, **kw):
    step, alpha = CASES[case]()[1]
    score = lambda x_, k: model(x_, torch.full((x_.shape[0],), k / (N - 1), dtype=torch.float64)).score
    # The last reference index (0) has no revsde step after it: revsde's grid ends at index 0.
    return score_sde_pc(step, alpha, score, x, list(range(N - 1, 0, -1)), z, **kw)


@pytest.mark.parametrize("case", CASES)
def test_pc_batch_norms_reproduce_score_sde(case):
    """``langevin_norms="batch"`` is score_sde's LangevinCorrector (norms averaged over the batch), and the
    exact reverse-diffusion predictor is score_sde's DDPM (VP table) / SMLD (VE) step, to 1e-14."""
    sde = CASES[case]()[0]
    z = draws(2 * (N - 1), 4)
    got, x, model = _revsde_pc(sde, 4, z, snr=0.16, langevin_norms="batch")
    want = _reference(case, model, sde, x, z, snr=0.16, corrector_steps=1, batch_norms=True)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("case", CASES)
def test_pc_default_norms_are_per_sample(case):
    """The default takes ‖z‖ and ‖s‖ of each sample: the reference with per-sample norms, and not the
    batch-mean one. To 1e-10 after 99 steps: a per-sample step is large where a sample's score is small,
    which amplifies the last-bit differences between score_sde's σ table (``exp(linspace(log σ))``) and
    revsde's ``σ(t)``; given revsde's own σ values the VE reference is bit-identical."""
    sde = CASES[case]()[0]
    z = draws(2 * (N - 1), 4)
    got, x, model = _revsde_pc(sde, 4, z, snr=0.16)
    want = _reference(case, model, sde, x, z, snr=0.16, corrector_steps=1, batch_norms=False)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if case == "ve":
        step, alpha = score_sde_ve(sde.sigma(torch.arange(N, dtype=torch.float64) / (N - 1)))
        score = lambda x_, k: model(x_, torch.full((x_.shape[0],), k / (N - 1), dtype=torch.float64)).score
        same_table = score_sde_pc(step, alpha, score, x, list(range(N - 1, 0, -1)), z, snr=0.16,
                                  corrector_steps=1, batch_norms=False)
        assert torch.equal(got, same_table)
    batch_mean = _reference(case, model, sde, x, z, snr=0.16, corrector_steps=1, batch_norms=True)
    assert float((got - batch_mean).abs().max()) > 1e-3


def test_langevin_sample_does_not_depend_on_its_batch_issue_repro():
    """The issue's repro: VESDE, the ring mixture, pc + langevin, 10 steps, seed 0. Sample 0 drawn alone
    and in a batch of 4 were (−1.2151, 1.8462) and (−1.1018, 1.8973); now they are the same."""
    sde = S.VESDE()
    model = exact_model(GaussianMixture.ring(), sde)
    alone = revsde.sample(model, shape=(1, 2), sampler="pc", corrector="langevin", steps=10, seed=0,
                          dtype=torch.float64).x
    batch = revsde.sample(model, shape=(4, 2), sampler="pc", corrector="langevin", steps=10, seed=0,
                          dtype=torch.float64).x
    torch.testing.assert_close(alone[0], batch[0], rtol=1e-13, atol=1e-13)
    coupled = revsde.sample(model, shape=(4, 2), sampler="pc", corrector="langevin", steps=10, seed=0,
                            langevin_norms="batch", dtype=torch.float64).x
    assert float((coupled[0] - alone[0]).abs().max()) > 1e-3  # score_sde's choice couples them


def test_langevin_norms_option_is_validated():
    with pytest.raises(ValueError, match="langevin_norms.*'sample', 'batch'"):
        revsde.samplers.get("pc", langevin_norms="mean")
    assert not revsde.samplers.get("pc", langevin_norms="batch").batch_independent
    assert revsde.samplers.get("pc").batch_independent


# --- reverse_diffusion: what each discretisation equals ------------------------------------------------
def _one_step(sde, discretization, t_cur, t_next, x, model):
    smp = revsde.samplers.get("reverse_diffusion", discretization=discretization, denoise=True)
    return revsde.sample(model, x_init=x, sampler=smp, grid=torch.tensor([t_cur, t_next], dtype=torch.float64)).x


@pytest.mark.parametrize("case", CASES)
def test_reverse_diffusion_exact_is_ddpm_and_smld_on_their_tables(case):
    """``discretization="exact"`` with one table index per step is score_sde's ReverseDiffusionPredictor:
    DDPM's step on a DDPM table (DiscreteVPSDE), SMLD's on VE at its σ table, to 1e-14."""
    sde, (step, _) = CASES[case]()
    model = exact_model(GaussianMixture.ring(), sde)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    for k in (N - 1, 5, 1):
        got = _one_step(sde, "exact", k / (N - 1), (k - 1) / (N - 1), x, model)
        s = model(x, torch.full((5,), k / (N - 1), dtype=torch.float64)).score
        torch.testing.assert_close(got, step(k, x, s)[0], rtol=1e-14, atol=1e-14)


def test_reverse_diffusion_euler_is_drift_times_grid_spacing():
    """``"euler"``: ``x − f (x − μ) Δ + g² s Δ``, noise ``g sqrt(Δ)`` with Δ the grid's own spacing. score_sde's
    sub-VP (and any SDE without its own ``discretize``) uses this step with Δ = 1/N instead of its grid's
    (1 − ε)/(N − 1): the two agree where those are equal."""
    sde = S.SubVPSDE()
    model = exact_model(GaussianMixture.ring(), sde)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t_cur, t_next = 0.7, 0.65
    got = _one_step(sde, "euler", t_cur, t_next, x, model)
    s = model(x, torch.full((5,), t_cur, dtype=torch.float64)).score
    f, g2 = float(sde.f(t_cur)), float(sde.g2(t_cur))
    torch.testing.assert_close(got, x - f * x * 0.05 + g2 * s * 0.05, rtol=1e-14, atol=1e-14)


def test_reverse_diffusion_exact_on_continuous_vp_is_its_exact_transition():
    """On continuous ``VPSDE()`` "exact" is that SDE's own transition ``a = α_cur/α_next``,
    ``G² = σ_cur² − a² σ_next²``; score_sde discretises VP with the table β_k = β_min/N + …, which differs
    at O(1/N²) per step (the docstring's figures: 4e-4 at N = 1000, 1.2e-2 at N = 100, on x ≈ 1)."""
    sde = S.VPSDE()
    model = exact_model(GaussianMixture.ring(), sde)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    n, k = 100, 49
    t_cur, t_next = k / (n - 1), (k - 1) / (n - 1)
    got = _one_step(sde, "exact", t_cur, t_next, x, model)
    a = float(sde.alpha(t_cur) / sde.alpha(t_next))
    G2 = float(sde.sigma(t_cur) ** 2 - a**2 * sde.sigma(t_next) ** 2)
    s = model(x, torch.full((5,), t_cur, dtype=torch.float64)).score
    torch.testing.assert_close(got, x - (a - 1) * x + G2 * s, rtol=1e-14, atol=1e-14)
    # score_sde's VPSDE(N = 100) step at t_cur's index k = t (N − 1)
    beta = 0.1 / n + k * (20.0 - 0.1) / (n * (n - 1))
    theirs = x - (math.sqrt(1 - beta) - 1) * x + beta * s
    gap = float((got - theirs).abs().max())
    assert 1e-4 < gap < 5e-2, gap


@pytest.mark.parametrize("norms", ["sample", "batch"])
def test_diffusers_scheduler_langevin_is_batch_invariant(norms):
    """Through ``RevSDEScheduler`` (a diffusers pipeline's loop) pc + Langevin gives sample 0 the same latents
    alone and in a batch of 3 with per-sample generators; ``langevin_norms="batch"`` (score_sde's) couples them."""
    pytest.importorskip("diffusers")
    from revsde.integrations.diffusers import RevSDEScheduler

    mixture = GaussianMixture.gaussian(torch.linspace(-1, 1, 16, dtype=torch.float64),
                                       torch.eye(16, dtype=torch.float64) * 0.3)

    def run(batch):
        sched = RevSDEScheduler(sampler="pc", corrector="langevin", langevin_norms=norms)
        sched.set_timesteps(8)
        gens = [torch.Generator().manual_seed(20 + b) for b in range(batch)]
        x = torch.stack([torch.randn(16, generator=g, dtype=torch.float64) for g in gens])
        for t in sched.timesteps:
            eps = mixture.noise(sched.sde, x, torch.full((batch,), float(t) / 999, dtype=torch.float64))
            x = sched.step(eps, t, x, generator=gens).prev_sample
        return x

    alone, batch = run(1), run(3)
    if norms == "sample":
        torch.testing.assert_close(alone[0], batch[0], rtol=1e-12, atol=1e-12)
    else:
        assert float((alone[0] - batch[0]).abs().max()) > 1e-6
