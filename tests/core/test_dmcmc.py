"""Denoising MCMC (``sampler="dmcmc"``) against exact answers on Gaussian data: the DLG chains' stationary
law over (x, level), the full sampler's output distribution, the η conversion between SDEs, NFE
accounting, lock-step batching, determinism and resumable chains; and the noise-level classifiers."""
from __future__ import annotations

import math

import pytest
import torch

import revsde
from revsde import sde as S
from revsde.kernels import run_batched
from revsde.nets.gmm import GaussianMixture, exact_model
from revsde.nets.noise_classifier import ExactNoisePosterior, NoiseLevelClassifier, noise_level_loss, noise_levels
from revsde.samplers.dmcmc import DMCMCState

from fixtures import gaussian, moment_tolerances, two_modes

SDES = {"vp": S.VPSDE, "ve": S.VESDE, "mr": S.MRSDE}


def narrow_levels(sde, count=8, lo=0.3, hi=1.5) -> torch.Tensor:
    """``count`` levels uniform in λ with the VE-equivalent σ̃ = σ/α from ``hi`` down to ``lo``: a range a
    small Langevin step can cross in a few hundred iterations (the stationarity tests need mixing)."""
    lam = torch.linspace(-math.log(hi), -math.log(lo), count, dtype=torch.float64)
    return sde.t_from_log_snr(lam)


def dmcmc(classifier, **options):
    return revsde.samplers.get("dmcmc", noise_classifier=classifier, **options)


# --- the chains' stationary law ----------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", SDES)
def test_chains_are_stationary_at_the_target_joint(sde_name):
    """Exact scores + exact posterior + categorical level draws: from a start far off the target, the DLG
    chains reach π(x̃, k) ∝ p̃_k(x̃), the law of x̃ = (x − μ)/α at level k. Levels: uniform (chi-square,
    7 dof); x̃ given its level: ξ = (x̃ − m) / sqrt(c + σ̃_k²) ~ N(0, 1) overall and on the low and high
    halves of the levels. A 10× larger η shows the ULA bias the small one avoids (the test has power)."""
    sde = SDES[sde_name]()
    m, c = 0.8, 0.25
    mu = torch.tensor([-0.5], dtype=torch.float64) if sde_name == "mr" else None
    data = GaussianMixture.gaussian([m], [[c]])
    levels = narrow_levels(sde)
    post = ExactNoisePosterior(data, sde, levels, mu=mu)
    n, k_count = 10000, levels.numel()
    shift = 0 if mu is None else mu
    x_start = shift + torch.full((n, 1), 3.0, dtype=torch.float64) * sde.alpha(sde.t_max)  # x̃ = 3

    def run(eta, steps):
        smp = dmcmc(post, integrator=None, init="prior", noise_level="sample", keep="last", tweedie_final=False,
                    eta=eta, burn_in_steps=steps, mcmc_steps=0)
        sol = revsde.sample(exact_model(data, sde), x_init=x_start, sampler=smp, steps=1,
                            mu=None if mu is None else mu.expand(n, 1), generator=torch.Generator().manual_seed(1))
        k, x_tilde = smp.state.level, smp.state.x[:, 0]
        t = levels[k]
        torch.testing.assert_close(sol.x[:, 0], shift + sde.alpha(t) * x_tilde)  # the run returns μ + α_k x̃
        return k, (x_tilde - (m - shift)) / torch.sqrt(c + torch.exp(-2 * sde.log_snr(t)))

    k, xi = run(0.1, 300)
    hist = torch.bincount(k, minlength=k_count).double()
    chi2 = float(((hist - n / k_count) ** 2 / (n / k_count)).sum())
    assert chi2 < 30, hist  # P(χ²₇ > 30) ≈ 1e-4
    se_mean, se_var = 1 / math.sqrt(n), math.sqrt(2 / n)
    assert abs(float(xi.mean())) < 5 * se_mean
    assert abs(float(xi.var()) - 1) < 5 * se_var
    for half in (k < k_count // 2, k >= k_count // 2):
        assert abs(float(xi[half].var()) - 1) < 5 * math.sqrt(2 / int(half.sum()))
    _, xi_big = run(1.0, 100)
    assert float(xi_big.var()) - 1 > 5 * se_var  # Langevin's O(η) variance bias, visible at a large step


def test_chains_are_the_same_on_every_sde():
    """The chains live in x̃ = (x − μ)/α: a VP and a VE run whose levels have the same σ̃ = σ/α make the same
    x̃ chain (same noise, exact Gibbs), so η and the levels mean the same on every SDE. For VE the step is
    the reference's ``x + (η/2) s + sqrt(η) z``."""
    data = two_modes()
    vp, ve = S.VPSDE(), S.VESDE()
    levels_vp = narrow_levels(vp, 6, lo=0.2, hi=3.0)
    levels_ve = ve.t_from_log_snr(vp.log_snr(levels_vp))
    x_tilde = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def chains(sde, levels, steps=8, level="sample"):
        smp = dmcmc(ExactNoisePosterior(data, sde, levels), integrator=None, init="prior", keep="last",
                    noise_level=level, tweedie_final=False, eta=0.3, burn_in_steps=0, mcmc_steps=steps)
        sol = revsde.sample(exact_model(data, sde), x_init=x_tilde * sde.alpha(sde.t_max), sampler=smp, steps=1,
                            seed=3)
        return sol.x, smp.state

    x_vp, vp_state = chains(vp, levels_vp)
    x_ve, ve_state = chains(ve, levels_ve)
    assert torch.equal(vp_state.level, ve_state.level) and len(set(vp_state.level.tolist())) > 1
    torch.testing.assert_close(vp_state.x, ve_state.x, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(x_vp, vp.alpha(levels_vp[vp_state.level])[:, None] * x_ve, rtol=1e-9, atol=1e-11)
    # one VE step by hand, with the run's first normal: x + (η/2) s + sqrt(η) z at the argmax level
    level = ExactNoisePosterior(data, ve, levels_ve)(x_tilde).argmax(1)
    z = revsde.noise.randn((5, 2), revsde.noise.generator_from_seed(3, 5), dtype=torch.float64)
    score = exact_model(data, ve)(x_tilde, levels_ve[level]).score
    torch.testing.assert_close(chains(ve, levels_ve, steps=1, level="argmax")[0], x_tilde + 0.15 * score + 0.3**0.5 * z)


# --- the full sampler --------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_reaches_exact_data_distribution(sde_name):
    """DLG (exact Gibbs) + MR Sampler from each chain's level + Tweedie gives the data distribution:
    N(m, C) within 5 standard errors of 10000 samples (measured: within 2). Without the burn-in the chains
    have not mixed and the covariance misses by ~9 standard errors."""
    sde = SDES[sde_name]()
    data = gaussian()
    post = ExactNoisePosterior(data, sde, narrow_levels(sde))
    n = 10000
    smp = dmcmc(post, integrator="mrs", noise_level="sample", keep="last", eta=0.1, burn_in_steps=100,
                mcmc_steps=10)
    sol = revsde.sample(exact_model(data, sde), shape=(n, 2), sampler=smp, steps=20, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    mean_tol, cov_tol = moment_tolerances(data.cov(), n)
    assert torch.all((sol.x.mean(0) - data.mean()).abs() < mean_tol), (sol.x.mean(0), data.mean())
    assert torch.all((torch.cov(sol.x.T) - data.cov()).abs() < cov_tol), (torch.cov(sol.x.T), data.cov())
    start = sol.info["start_t"]  # every chain integrated from its own level
    assert len(set(start.tolist())) == post.levels.numel()


@pytest.mark.parametrize("sde_name, integrator, options", [("vp", "mrs", {}), ("vp", "ode_heun", {}),
                                                           ("vp", "mrs", {"stochastic": True}), ("ve", "mrs", {})])
def test_reference_recipe_on_a_mixture(sde_name, integrator, options):
    """The reference's recipe (defaults: integrator pass from the prior, back up by 0.5, argmax levels, keep
    the smallest level) on the full level range of a two-mode mixture: close to the data (within 0.05 in
    the mean and 0.1 in the covariance; measured ≤ 0.025 and ≤ 0.06, which is mostly the sampling error
    of 4000 samples: argmax and min-level selection are heuristics, so no exactness is claimed), every
    chain below t_max, and the chains' levels spread over the grid."""
    sde = SDES[sde_name]()
    data = two_modes()
    post = ExactNoisePosterior(data, sde, 50)
    n = 4000
    smp = dmcmc(post, integrator=integrator, integrator_options=options, eta=0.05, burn_in_steps=5, mcmc_steps=5)
    sol = revsde.sample(exact_model(data, sde), shape=(n, 2), sampler=smp, steps=30, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(4))
    assert (sol.x.mean(0) - data.mean()).abs().max() < 0.05
    assert (torch.cov(sol.x.T) - data.cov()).abs().max() < 0.1
    start = sol.info["start_t"]
    assert bool((start < sde.t_max).all()) and len(set(start.tolist())) > 15


def test_init_steps_set_the_init_pass_alone():
    """``init_steps`` runs the init pass on its own number of steps (counted in the init phase); equal to
    the outputs' step count it changes nothing; it needs ``init="integrator"``."""
    sde = S.VESDE()
    data = gaussian()
    model = exact_model(data, sde)
    post = ExactNoisePosterior(data, sde, 20)
    sol = revsde.sample(model, shape=(3, 2), sampler=dmcmc(post, init_steps=9, burn_in_steps=2, mcmc_steps=3),
                        steps=4, seed=0)
    assert sol.info["score_evals"] == {"init": 9, "burn_in": 2, "mcmc": 3, "integrator": 4, "tweedie": 1}
    same = [revsde.sample(model, shape=(3, 2), sampler=dmcmc(post, burn_in_steps=2, mcmc_steps=3, **extra),
                          steps=4, seed=0).x for extra in ({}, {"init_steps": 4})]
    assert torch.equal(*same) and not torch.equal(sol.x, same[0])
    with pytest.raises(ValueError, match="init_steps"):
        dmcmc(post, init="prior", init_steps=5)
    with pytest.raises(ValueError, match="init_steps"):
        dmcmc(post, init_steps=0)


# --- NFE, batching, determinism, resume -----------------------------------------------------------------
@pytest.mark.parametrize("integrator, evals", [("mrs", 1), ("ode_heun", 2)])
def test_nfe_counts_every_score_call(integrator, evals):
    """NFE (counted by the driver) = init pass + burn-in + MCMC + integrator + Tweedie on a fresh run and
    MCMC + integrator + Tweedie on a resumed one; classifier calls are reported apart."""
    sde = S.VESDE()
    data = gaussian()
    smp = dmcmc(ExactNoisePosterior(data, sde, 20), integrator=integrator, burn_in_steps=3, mcmc_steps=4)
    model = exact_model(data, sde)
    seen = []
    sol = revsde.sample(model, shape=(3, 2), sampler=smp, steps=5, seed=0, callback=lambda st: seen.append(st))
    assert sol.nfe == 5 * evals + 3 + 4 + 5 * evals + 1
    assert sol.info["score_evals"] == {"init": 5 * evals, "burn_in": 3, "mcmc": 4, "integrator": 5 * evals,
                                       "tweedie": 1}
    assert sol.info["classifier_calls"] == 1 + 3 + 4
    assert [st.i for st in seen] == list(range(len(seen))) and seen[-1].nfe == sol.nfe
    again = revsde.sample(model, shape=(3, 2), sampler=smp, steps=5, seed=0)  # the same chains, continued
    assert again.nfe == 4 + 5 * evals + 1 and again.info["classifier_calls"] == 4
    assert smp.state.rounds == 3 + 4 + 4


@pytest.mark.parametrize("noise_level", ["argmax", "sample"])
def test_same_seed_same_output(noise_level):
    sde = S.VPSDE()
    data = two_modes()
    post = ExactNoisePosterior(data, sde, 30)

    def draw(seed):
        smp = dmcmc(post, noise_level=noise_level, integrator_options={"stochastic": True})
        return revsde.sample(exact_model(data, sde), shape=(4, 2), sampler=smp, steps=6, seed=seed,
                             dtype=torch.float64).x

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_lock_step_batch_equals_separate_chains_and_run_batched_shares_calls():
    """B chains in one batch equal each chain run alone (per-sample generators); two dmcmc runs driven by
    run_batched make one network call per round and give what each gives alone."""
    sde = S.MRSDE()
    data = gaussian()
    mu = torch.tensor([1.0, -0.5], dtype=torch.float64)
    post = ExactNoisePosterior(data, sde, 25, mu=mu)
    model = exact_model(data, sde)
    options = dict(noise_level="sample", integrator="ode_heun", burn_in_steps=2, mcmc_steps=3)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    kw = dict(sampler="dmcmc", noise_classifier=post, steps=4, dtype=torch.float64, **options)
    both = revsde.sample(model, shape=(3, 2), mu=mu.expand(3, 2), generator=gens([10, 11, 12]), **kw)
    for b, seed in enumerate([10, 11, 12]):
        alone = revsde.sample(model, shape=(1, 2), mu=mu.expand(1, 2), generator=gens([seed]), **kw)
        torch.testing.assert_close(both.x[b:b + 1], alone.x, rtol=1e-12, atol=1e-12)

    calls = []
    net = model.net
    model.net = lambda x, t, **cond: calls.append(x.shape[0]) or net(x, t, **cond)
    runs, expect = [], []
    for batch, seed in ((2, 0), (3, 5)):
        smp = revsde.samplers.get("dmcmc", noise_classifier=post, **options)
        g = gens(range(seed, seed + batch))
        t = revsde.grids.resolve(smp.default_grid, sde, 4, batch)
        x = sde.prior_sample((batch, 2), mu.expand(batch, 2), generator=g, dtype=torch.float64)
        runs.append(smp.run(sde, t, x, mu.expand(batch, 2), revsde.GaussianNoise((batch, 2), g, dtype=torch.float64)))
        expect.append(revsde.sample(exact_model(data, sde), shape=(batch, 2), mu=mu.expand(batch, 2),
                                    generator=gens(range(seed, seed + batch)), **kw))
    got = run_batched(model, runs, mu=[mu.expand(2, 2), mu.expand(3, 2)])
    assert got.nfe == len(calls) == expect[0].nfe and set(calls) == {5}
    for x, sol in zip(got, expect):
        torch.testing.assert_close(x, sol.x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("source", ["seed", "generators"])
def test_chains_resume_bit_identically(tmp_path, source):
    """A run, its chain state saved and loaded into a new sampler, a second run: bit-identical to the same
    instance running twice (exact Gibbs and a stochastic integrator: the generators are resumed too), with
    the Philox streams of ``seed=`` (one state: draw index and keys) and with per-sample torch generators."""
    sde = S.VPSDE()
    data = two_modes()
    post = ExactNoisePosterior(data, sde, 30)
    model = exact_model(data, sde)
    options = dict(noise_level="sample", integrator_options={"stochastic": True}, burn_in_steps=3, mcmc_steps=4)
    randomness = (lambda: {"seed": 1}) if source == "seed" else \
        (lambda: {"generator": [torch.Generator().manual_seed(1 + b) for b in range(4)]})
    run = lambda smp: revsde.sample(model, shape=(4, 2), sampler=smp, steps=5, dtype=torch.float64, **randomness()).x

    first = dmcmc(post, **options)
    run(first)
    continued = run(first)
    second = dmcmc(post, **options)
    out = run(second)
    torch.save(second.state.state_dict(), tmp_path / "chains.pt")
    resumed = dmcmc(post, state=torch.load(tmp_path / "chains.pt", weights_only=True), **options)
    assert torch.equal(run(resumed), continued)
    assert not torch.equal(continued, out)
    state = DMCMCState.from_state_dict(resumed.state.state_dict())
    assert state.rounds == 3 + 4 + 4 and state.level.dtype == torch.int64
    assert len(state.generators) == (1 if source == "seed" else 4)
    resumed.reset()
    assert torch.equal(run(resumed), out)  # fresh chains again
    with pytest.raises(ValueError, match="holds chains of shape"):
        revsde.sample(model, shape=(5, 2), sampler=dmcmc(post, state=second.state, **options), steps=5)


# --- options -----------------------------------------------------------------------------------------
def test_bad_options_raise_naming_the_valid_values():
    sde = S.VPSDE()
    post = ExactNoisePosterior(gaussian(), sde, 10)
    with pytest.raises(ValueError, match="needs noise_classifier="):
        revsde.samplers.get("dmcmc")
    with pytest.raises(ValueError, match="'mrs'.*or None"):
        dmcmc(post, integrator="nope")
    with pytest.raises(ValueError, match="integrator in"):
        dmcmc(post, integrator="dmcmc")
    with pytest.raises(ValueError, match="has no option 'bogus'"):
        dmcmc(post, integrator_options={"bogus": 1})
    with pytest.raises(ValueError, match="noise_level in {'argmax', 'sample'}"):
        dmcmc(post, noise_level="mode")
    with pytest.raises(ValueError, match="keep in {'min', 'last'}"):
        dmcmc(post, keep="first")
    with pytest.raises(ValueError, match="init in {'integrator', 'prior'}"):
        dmcmc(post, init="data")
    with pytest.raises(ValueError, match="eta to be a number > 0"):
        dmcmc(post, eta=0)
    with pytest.raises(ValueError, match="mcmc_steps to be an integer >= 0"):
        dmcmc(post, mcmc_steps=-1)
    with pytest.raises(ValueError, match="init='integrator' needs an integrator"):
        dmcmc(post, integrator=None)
    with pytest.raises(ValueError, match="strictly decreasing"):
        dmcmc(post, levels=[0.1, 0.5])
    with pytest.raises(ValueError, match="needs levels="):
        dmcmc(lambda x: x)
    model = exact_model(gaussian(), sde)
    with pytest.raises(ValueError, match=r"levels must lie in \(t_min, t_max\]"):
        revsde.sample(model, shape=(2, 2), sampler=dmcmc(post, levels=[0.5, sde.t_min]), steps=3)
    with pytest.raises(ValueError, match="expected \\(2, 10\\) for 10 levels"):
        bad = lambda x: torch.zeros(x.shape[0], 3)
        bad.levels = post.levels
        revsde.sample(model, shape=(2, 2), sampler=dmcmc(bad), steps=3)
    with pytest.raises(ValueError, match="not known in advance"):
        dmcmc(post).query_times(torch.tensor([1.0, 0.5]))


# --- classifiers -------------------------------------------------------------------------------------
def test_exact_posterior_is_bayes_rule_over_the_levels():
    """logits_k = log p̃_k(x̃) = log p_{t_k}(μ + α_k x̃) + D log α_k (the density of x̃ = (x − μ)/α), against
    torch.distributions for a two-mode mixture under MR with a per-sample μ."""
    sde = S.MRSDE()
    data = two_modes()
    levels = noise_levels(sde, 6)
    mu = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-1.0, 0.0]], dtype=torch.float64)
    x_tilde = 2 * torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = ExactNoisePosterior(data, sde, levels)(x_tilde, mu=mu)
    want = torch.empty(3, 6, dtype=torch.float64)
    for k, t in enumerate(levels):
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        comps = [torch.distributions.MultivariateNormal(a * m + (1 - a) * mu, a**2 * c + s**2 * torch.eye(2))
                 for m, c in zip(data.means, data.covs)]
        x = mu + a * x_tilde
        log_p = torch.logsumexp(torch.stack([math.log(w) + d.log_prob(x) for w, d in zip(data.weights, comps)]), 0)
        want[:, k] = log_p + 2 * math.log(a)
    torch.testing.assert_close(got, want)
    assert torch.all(levels[1:] < levels[:-1]) and levels[0] == sde.t_max and levels[-1] > sde.t_min


def test_cnn_classifier_learns_and_its_training_resumes(tmp_path):
    """NoiseLevelClassifier on tiny data: the cross-entropy falls well below log K, and a run stopped
    half-way and resumed ends with the weights of an uninterrupted run; the export loads back."""
    from revsde.apps.image.noise_classifier import export_weights, load_weights, read_config
    from revsde.apps.image.train import train_noise_classifier

    sde = S.VPSDE()
    data = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = dict(levels=4, batch=16, width=4, lr=2e-2, threads=None, progress=False, log_every=5, data=data, sde=sde)
    train_noise_classifier(tmp_path / "a", 60, **kw)
    train_noise_classifier(tmp_path / "b", 60, stop_at=30, **kw)
    result = train_noise_classifier(tmp_path / "b", 60, **kw)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(result.checkpoint, weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    path = export_weights(result.checkpoint, tmp_path / "nc.safetensors")
    net = load_weights(path)
    assert read_config(path)["levels"] == net.levels.tolist() == noise_levels(sde, 4).tolist()
    net.train()
    losses = [noise_level_loss(net, sde, data, torch.Generator().manual_seed(s)).item() for s in range(8)]
    assert sum(losses) / 8 < 0.5 * math.log(4), losses  # measured 0.47; chance is log 4 = 1.39
    with pytest.raises(ValueError, match="takes images"):
        net(torch.zeros(2, 3, 8, 8))


def test_committed_classifier_tells_the_noise_level_of_digits():
    """The committed weights (revsde/weights/noise_classifier_digits.md): levels are the built-in image model's
    100 log-SNR levels, and on fresh noised digits the argmax level is within ±3 for ≥ 97% (measured 99.3%)."""
    from revsde.apps.image.data import digits
    from revsde.apps.image.model import build_sde
    from revsde.apps.image.noise_classifier import load_weights

    net, sde = load_weights(), build_sde()
    torch.testing.assert_close(net.levels, noise_levels(sde, 100), rtol=0, atol=0)
    data = digits(16)
    gen = torch.Generator().manual_seed(5)
    index, k = torch.randint(len(data), (500,), generator=gen), torch.randint(100, (500,), generator=gen)
    sigma_tilde = torch.exp(-sde.log_snr(net.levels[k])).float()
    x_tilde = data[index] + sigma_tilde[:, None, None, None] * torch.randn(500, 1, 16, 16, generator=gen)
    with torch.no_grad():
        logits = net(x_tilde)
    assert float(((logits.argmax(1) - k).abs() <= 3).float().mean()) >= 0.97
    assert float(torch.nn.functional.cross_entropy(logits, k)) < 1.3  # measured 0.98; chance log 100 = 4.6


def test_cnn_classifier_drives_the_sampler():
    """Smoke test (shapes only): an untrained NoiseLevelClassifier as dmcmc's classifier on images."""
    sde = S.VPSDE()
    torch.manual_seed(0)
    net = NoiseLevelClassifier(1, 8, noise_levels(sde, 5), width=4).eval()
    model = revsde.ScoreModel(lambda x, t: torch.zeros_like(x), sde)
    sol = revsde.sample(model, shape=(2, 1, 8, 8), sampler="dmcmc", noise_classifier=net, steps=3, seed=0,
                        mcmc_steps=2, burn_in_steps=1)
    assert sol.x.shape == (2, 1, 8, 8) and sol.info["classifier_calls"] == 4


def test_cli_trains_and_exports_a_noise_classifier(tmp_path, capsys):
    from revsde.apps.image.noise_classifier import load_weights
    from revsde.cli import main

    out = tmp_path / "nc"
    assert main(["train", "noise-classifier", "--steps", "2", "--levels", "7", "--width", "8", "--batch", "4",
                 "-o", str(out), "--export", str(out / "c.safetensors"), "--no-progress"]) == 0
    assert "finished at step 2/2" in capsys.readouterr().out
    net = load_weights(out / "c.safetensors")
    assert net.levels.shape == (7,)
    assert main(["train", "noise-classifier", "--steps", "2", "--levels", "0", "-o", str(tmp_path / "bad")]) == 2
