"""Each revsde sampler's loop against its equivalents in other libraries, per network evaluation, with a
network that costs nothing (it returns a DDPM noise prediction made once): diffusers' schedulers in a
pipeline's loop, k-diffusion's samplers through its ``DiscreteEpsDDPMDenoiser`` (an optional benchmark extra,
``pip install 'revsde[bench]'``: without it those rows are skipped with a note), and a transcription of
score_sde's PC loop. Each pair runs alternately in one process; ``revsde bench speed`` and
``benchmarks/test_peers.py`` report the ratios (nothing asserts a time).
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from revsde import samplers as samplers_mod

#: (label, revsde sampler, its options, peer library, the peer) of the table against other libraries' loops
PEERS = [
    ("mrs (order 2)", "mrs", {}, "diffusers", "DPMSolverMultistepScheduler"),
    ("mrs (order 2)", "mrs", {}, "k-diffusion", "sample_dpmpp_2m"),
    ("mrs (order 2)", "mrs", {}, "k-diffusion", "sample_dpmpp_2m, lean denoiser"),
    ("euler_maruyama", "euler_maruyama", {}, "diffusers", "EulerAncestralDiscreteScheduler"),
    ("euler_maruyama", "euler_maruyama", {}, "k-diffusion", "sample_euler_ancestral"),
    ("euler_maruyama", "euler_maruyama", {}, "k-diffusion", "sample_euler_ancestral, lean denoiser"),
    ("ancestral", "ancestral", {}, "diffusers", "DDPMScheduler"),
    ("ancestral", "ancestral", {}, "diffusers", "EulerAncestralDiscreteScheduler"),
    ("ode_euler", "ode_euler", {}, "k-diffusion", "sample_euler"),
    ("ode_heun", "ode_heun", {}, "diffusers", "HeunDiscreteScheduler"),
    ("ode_heun", "ode_heun", {}, "k-diffusion", "sample_heun"),
    ("ode_heun", "ode_heun", {}, "k-diffusion", "sample_heun, lean denoiser"),
    ("pc (langevin)", "pc", {}, "score_sde", "pc_sampler"),
]
PEER_BATCHES = (1, 64)
#: alternating runs of each pair (their medians are compared)
PEER_ROUNDS = 9


def paired_seconds(baseline, candidate, rounds: int) -> tuple[float, float]:
    """Median seconds of ``baseline`` and ``candidate`` run alternately ``rounds`` times after a warm-up of
    each (a shared machine's load then weighs on both alike)."""
    baseline(), candidate()
    times = ([], [])
    for _ in range(rounds):
        for fn, kept in zip((baseline, candidate), times):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def peer_overhead(steps: int = 50, batches=None, rounds: int | None = None, peers=None) -> list[dict]:
    """Per-NFE cost of each revsde loop and of its peer (``PEERS``, at ``PEER_BATCHES``, ``PEER_ROUNDS``
    alternating runs), with a free network: rows of ``label``, ``sampler``, ``library``, ``peer``, ``batch``
    and ``revsde_us``, ``peer_us`` (µs per NFE), their ``ratio`` and NFE counts, or ``skipped`` with why."""
    rounds = PEER_ROUNDS if rounds is None else rounds
    rows = []
    for batch in (PEER_BATCHES if batches is None else batches):
        for spec in (peers or PEERS):
            label, name, _, library, peer = spec
            row = {"label": label, "sampler": name, "library": library, "peer": peer, "batch": batch}
            rows.append(row)
            loops = peer_loops(spec, steps, batch)
            if isinstance(loops, str):
                row["skipped"] = loops
                continue
            (run, nfe), (peer_run, peer_nfe) = loops
            peer_s, revsde_s = paired_seconds(peer_run, run, rounds)
            row.update(revsde_us=revsde_s / nfe * 1e6, peer_us=peer_s / peer_nfe * 1e6, revsde_nfe=nfe,
                       peer_nfe=peer_nfe, ratio=(revsde_s / nfe) / (peer_s / peer_nfe))
    return rows


def peer_loops(spec, steps: int, batch: int):
    """``((revsde run, its NFE), (peer run, its NFE))`` of one ``PEERS`` entry on a ``(batch, 3, 32, 32)``
    state, both starting from the same state with the same free network; or why the peer cannot run."""
    from revsde.model import ScoreModel
    from revsde.sde import DiscreteVPSDE
    from revsde.solve import sample

    _, name, options, library, peer = spec
    kd, missing = k_diffusion() if library == "k-diffusion" else (None, None)
    if library == "k-diffusion" and kd is None:
        return missing
    ac = DiscreteVPSDE.from_schedule().alphas_cumprod  # diffusers' default DDPM table, every loop's
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        output, start = 0.1 * torch.randn(batch, 3, 32, 32), torch.randn(batch, 3, 32, 32)
    if library == "diffusers":
        peer_loop = _diffusers_loop(peer, steps, start, output)
    elif library == "k-diffusion":
        peer_loop = _k_diffusion_loop(kd, peer, steps, start, output, ac)
    else:
        peer_loop = _score_sde_pc(steps, start, output), 2 * steps
    model = ScoreModel(lambda x, t: output, DiscreteVPSDE(ac))
    run = lambda: sample(model, x_init=start, sampler=name, steps=steps, graphs=False,
                         generator=torch.Generator().manual_seed(0), **options)
    return (run, steps * samplers_mod.get(name, **options).evals_per_step), peer_loop


def _diffusers_loop(name: str, steps: int, start, output):
    """A diffusers pipeline's denoising loop around ``name``'s ``step`` (its default config, as a DDPM
    pipeline runs it: ``scale_model_input`` then ``step``); its NFE."""
    import diffusers

    scheduler = getattr(diffusers, name)()
    draws = "generator" in inspect.signature(scheduler.step).parameters  # the stochastic ones

    def run():
        scheduler.set_timesteps(steps)
        x, noise = start, {"generator": torch.Generator().manual_seed(0)} if draws else {}
        for t in scheduler.timesteps:
            scheduler.scale_model_input(x, t)
            x = scheduler.step(output, t, x, **noise).prev_sample
        return x

    scheduler.set_timesteps(steps)
    return run, len(scheduler.timesteps)


def _k_diffusion_loop(kd, name: str, steps: int, start, output, alphas_cumprod):
    """k-diffusion's sampler ``name`` on the DDPM table's σ through its ``DiscreteEpsDDPMDenoiser`` (how
    k-diffusion samples a noise-predicting DDPM network: input scaling, σ → timestep, ``x − σ ε̂``), or with
    ``", lean denoiser"`` through ``x − σ ε̂`` alone (the least a noise prediction needs: the stricter peer),
    from ``start`` scaled to its σ_max; its NFE."""
    external, sampling = kd
    name, _, variant = name.partition(", ")
    denoiser = external.DiscreteEpsDDPMDenoiser(lambda x, t: output, alphas_cumprod.float(), quantize=False)
    sigmas = denoiser.get_sigmas(steps)
    if variant == "lean denoiser":
        denoiser = lambda x, sigma: x - sigma[:, None, None, None] * output
    sampler = getattr(sampling, name)
    x_start = start * sigmas[0]
    run = lambda: sampler(denoiser, x_start, sigmas, disable=True)
    nfe = {"sample_heun": 2 * steps - 1}.get(name, steps)  # Heun's last step to σ = 0 is Euler's
    return run, nfe


def _score_sde_pc(steps: int, start, output, snr: float = 0.16, eps: float = 1e-3):
    """score_sde's ``pc_sampler`` (``ReverseDiffusionPredictor`` + ``LangevinCorrector``, one corrector step,
    noise removal) on its discrete ``VPSDE(N=steps)``, transcribed from score_sde_pytorch's ``sampling.py``
    and ``sde_lib.py``, with its ``get_score_fn`` (``−model(x, t (N − 1)) / sqrt(1 − ᾱ)``). Its table
    ``β_k = β_min/N … β_max/N`` needs N > 20 (β < 1)."""
    n = steps
    betas = torch.linspace(0.1 / n, 20.0 / n, n)
    alphas = 1 - betas
    sqrt_1m_alphas_cumprod = torch.sqrt(1 - torch.cumprod(alphas, 0))

    def score_fn(x, t):
        labels = t * (n - 1)
        std = sqrt_1m_alphas_cumprod[labels.long()]
        return -output / std[:, None, None, None]

    def run():
        x = start
        timesteps = torch.linspace(1.0, eps, n)
        for i in range(n):
            vec_t = torch.ones(x.shape[0]) * timesteps[i]
            # LangevinCorrector.update_fn
            timestep = (vec_t * (n - 1)).long()
            alpha = alphas[timestep]
            grad = score_fn(x, vec_t)
            noise = torch.randn_like(x)
            grad_norm = torch.norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
            noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
            step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
            x_mean = x + step_size[:, None, None, None] * grad
            x = x_mean + torch.sqrt(step_size * 2)[:, None, None, None] * noise
            # ReverseDiffusionPredictor.update_fn: the reverse SDE's discretize, then x − f + G z
            timestep = (vec_t * (n - 1)).long()
            f = torch.sqrt(alphas[timestep])[:, None, None, None] * x - x
            G = torch.sqrt(betas[timestep])
            rev_f = f - G[:, None, None, None] ** 2 * score_fn(x, vec_t)
            z = torch.randn_like(x)
            x_mean = x - rev_f
            x = x_mean + G[:, None, None, None] * z
        return x_mean

    return run


@functools.lru_cache(maxsize=None)
def k_diffusion():
    """k-diffusion's ``(external, sampling)`` modules and None, or None and why not. Its package's
    ``__init__`` imports its training stack (CLIP, torchvision, wandb), which the samplers do not need:
    where that fails to import, the two modules are loaded from its folder on their own, with a stand-in
    for the one helper they take from ``k_diffusion.utils`` (``append_dims``)."""
    try:
        from k_diffusion import external, sampling

        return (external, sampling), None
    except ImportError as error:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:
            return None, "k-diffusion is not installed (pip install 'revsde[bench]')"
        reason = f"k-diffusion does not import ({error})"
    try:
        return _k_diffusion_samplers(Path(spec.submodule_search_locations[0])), None
    except Exception as error:  # noqa: BLE001 (any failure of a foreign package: skip its rows and say why)
        return None, f"{reason}, nor its samplers alone ({error})"


def _k_diffusion_samplers(folder: Path):
    name = "_revsde_k_diffusion"
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    utils = types.ModuleType(f"{name}.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # k_diffusion.utils.append_dims
    sys.modules[name], sys.modules[f"{name}.utils"] = package, utils
    modules = []
    for part in ("sampling", "external"):
        spec = importlib.util.spec_from_file_location(f"{name}.{part}", folder / f"{part}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        setattr(package, part, module)
        modules.append(module)
    return modules[1], modules[0]
