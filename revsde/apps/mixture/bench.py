"""Quality versus NFE on analytic Gaussian-mixture problems whose exact distribution is known.

Each problem is a linear SDE with a 2-D mixture whose score is exact, so the only error is the
sampler's. Every configuration starts from the same prior draw and is scored against the exact
distribution at the time it ends (``p_{t_min}`` for revsde samplers, the data for diffusers'
schedulers, which end at σ = 0): Fréchet distance from closed-form moments, and sliced Wasserstein
distance to as many exact samples. diffusers' schedulers are driven on the same analytic model, on
the same DDPM table, in the same run. ``run_gmm_bench`` does the work; ``revsde bench gmm`` prints.
"""
from __future__ import annotations

import inspect
import json
import math
import warnings
import time
from dataclasses import dataclass, field

import torch

from revsde.metrics import frechet_distance, sample_moments, sliced_wasserstein
from revsde.nets.gmm import exact_model
from revsde.solve import sample
from revsde.files import atomic_output, save_figure
from revsde.apps.mixture.configs import DLG, Config, diffusers_configs, dlg_sampler, dlg_snapshots, revsde_configs
from revsde.apps.mixture.problems import FLOW_PROBLEMS, NFES, Problem, problems


def _run_dlg(config: Config, problem: Problem, x_prior: torch.Tensor, nfe: int, seed: int):
    """Persistent DLG chains on ``problem`` with the exact noise-level posterior: ``len(x_prior)`` outputs
    as ``DLG["snapshots"]`` successive snapshots of ``len(x_prior) / snapshots`` chains. Returns the outputs
    and the NFE per output (every score call of every run, the init pass and burn-in included)."""
    from revsde.nets.noise_classifier import ExactNoisePosterior

    chains = x_prior.shape[0] // DLG["snapshots"]
    mu = None if problem.mu is None else problem.mu.expand(chains, -1)
    posterior = ExactNoisePosterior(problem.mixture, problem.sde, DLG["levels"], mu=problem.mu)
    smp, steps = dlg_sampler(posterior, nfe, config.options)
    x, per_output = dlg_snapshots(exact_model(problem.mixture, problem.sde), smp, x_prior[:chains], steps, mu=mu,
                                  generator=torch.Generator().manual_seed(seed))
    return x.transpose(0, 1).flatten(0, 1), round(per_output, 1), problem.sde.t_min


def _run_diffusers(config: Config, problem: Problem, x_prior: torch.Tensor, nfe: int, seed: int):
    if config.flow:
        return _run_diffusers_flow(config, problem, x_prior, nfe, seed)
    scheduler = config.scheduler()
    scheduler.set_timesteps(config.steps_for(nfe))
    x = x_prior.to(torch.float64) * float(scheduler.init_noise_sigma)
    generator = torch.Generator().manual_seed(seed)
    count = 0
    n_train = problem.sde.num_train_timesteps
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        time = torch.full((x.shape[0],), float(t) / (n_train - 1), dtype=torch.float64)
        eps = problem.mixture.noise(problem.sde, x_in, time)
        count += 1
        extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x, count, 0.0  # diffusers' schedulers end at σ = 0: the data


def _run_diffusers_flow(config: Config, problem: Problem, x_prior: torch.Tensor, nfe: int, seed: int):
    """A flow-matching scheduler as SD3's pipeline drives it: timesteps σ · 1000, the velocity at σ."""
    from revsde.nets.gmm import MixtureDenoiser

    scheduler = config.scheduler()
    scheduler.set_timesteps(config.steps_for(nfe))
    velocity = MixtureDenoiser(problem.mixture, problem.sde, "flow")
    x = x_prior.to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for t in scheduler.timesteps:
        sigma = torch.full((x.shape[0],), float(t) / scheduler.config.num_train_timesteps, dtype=torch.float64)
        v = velocity(x, sigma)
        count += 1
        extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        x = scheduler.step(v, t, x, **extra).prev_sample
    return x, count, 0.0


def _run_revsde(config: Config, problem: Problem, x_prior: torch.Tensor, nfe: int | None, seed: int,
                tolerance: float | None = None):
    n = x_prior.shape[0]
    options = dict(config.options)
    grid = options.pop("grid", None)
    shift = options.pop("shift", None)
    if shift is not None:
        from revsde.grids import Shifted

        grid = Shifted(shift)
    if tolerance is not None:
        options.update(rtol=tolerance, atol=tolerance)
    mu = None if problem.mu is None else problem.mu.expand(n, -1)
    # one generator for the batch: per-sample generators would cost a Python call per sample per step
    sol = sample(exact_model(problem.mixture, problem.sde), x_init=x_prior, sampler=config.sampler, grid=grid,
                 steps=None if tolerance is not None else config.steps_for(nfe), mu=mu,
                 generator=torch.Generator().manual_seed(seed), **options)
    return sol.x, sol.nfe, problem.sde.t_min


def _score(problem: Problem, x: torch.Tensor, t_end: float, reference_seed: int):
    mean, cov = problem.mixture.marginal_moments(problem.sde, t_end, problem.mu)
    fd = frechet_distance(*sample_moments(x), mean, cov)
    gen = torch.Generator().manual_seed(reference_seed)
    x0 = problem.mixture.sample(x.shape[0], gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    reference = problem.sde.perturb(x0, t_end, noise, None if problem.mu is None else problem.mu.expand_as(x0))
    swd = sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(reference_seed + 1))
    return fd, swd


@dataclass
class BenchResult:
    records: list  # dicts: problem, label, nfe, target_nfe, fd, swd, seconds
    n_samples: int
    nfes: tuple
    seed: int
    repeats: int = 1
    floors: dict = field(default_factory=dict)  # problem -> {"fd", "swd"} of exact samples

    def table(self, problem: str, metric: str = "fd") -> str:
        rows = [r for r in self.records if r["problem"] == problem]
        labels = list(dict.fromkeys(r["label"] for r in rows))
        floor = self.floors.get(problem, {}).get(metric)
        head = (f"| {problem}: {metric.upper()} at NFE" + (f" (exact samples: {floor:.1e})" if floor else "")
                + " | " + " | ".join(str(n) for n in self.nfes) + " |")
        lines = [head, "|---" * (len(self.nfes) + 1) + "|"]
        for label in labels:
            cells = []
            for target in self.nfes:
                hit = [r for r in rows if r["label"] == label and r["target_nfe"] == target]
                cells.append(f"{hit[0][metric]:.2e}" + ("" if hit[0]["nfe"] == target else f" ({hit[0]['nfe']})")
                             if hit else "–")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        parts = [f"Samples per run: {self.n_samples}, mean over {self.repeats} prior draws (seed {self.seed}). "
                 "Cells: metric at the target NFE; (n) = the NFE actually used where it differs (2 evaluations "
                 "per step, or adaptive). The header gives the same metric for exact samples: the floor."]
        for problem in dict.fromkeys(r["problem"] for r in self.records):
            for metric in ("fd", "swd"):
                parts.append(self.table(problem, metric))
        return "\n\n".join(parts) + "\n"


def run_gmm_bench(problem_names=("vp", "mr"), nfes=NFES, n_samples: int = 10000, repeats: int = 3, seed: int = 0,
                  with_diffusers: bool = True, labels: list[str] | None = None, progress: bool = True, *,
                  cache_path=None, resume: bool = True, dist=None, log=None) -> BenchResult:
    """Run every configuration on every problem and NFE; see the module docstring.

    Each cell is the mean over ``repeats`` independent prior draws of ``n_samples`` (an ODE maps one
    draw deterministically, so a single unlucky draw would otherwise set its floor). Cells run through
    ``harness.run_cells``: cached in ``cache_path`` (JSON lines; ``resume=False`` starts afresh), split
    across the ranks of ``dist`` (a ``harness.Dist``), ``log`` told how many came from the cache."""
    from revsde.apps.bench.harness import Cache, Cell, Dist, run_cells

    if n_samples < 2 or repeats < 1:
        raise ValueError(f"n_samples must be >= 2 and repeats >= 1 (got {n_samples}, {repeats})")
    table = problems()
    unknown = [p for p in problem_names if p not in table]
    if unknown:
        raise ValueError(f"unknown bench problem(s) {unknown}; valid: {', '.join(table)}")
    configs = revsde_configs() + (diffusers_configs() if with_diffusers else [])
    if labels is not None:
        missing = sorted(set(labels) - {c.label for c in configs})
        if missing:
            raise ValueError(f"unknown configuration(s) {missing}; valid: {', '.join(c.label for c in configs)}")
        configs = [c for c in configs if c.label in labels]
    by_label = {c.label: c for c in configs}
    cells = []
    for name in problem_names:
        for config in configs:
            if name not in config.problems:
                continue
            params = {"sampler": config.sampler, "options": config.options}
            if config.tolerances:
                cells += [Cell(config.label, None, {**params, "tolerance": tol}, name) for tol in config.tolerances]
            else:
                cells += [Cell(config.label, n, params, name) for n in nfes]
    # what sampling noise alone gives: exact samples scored the same way
    floor_cells = [Cell(FLOOR, None, {}, name) for name in problem_names]

    def evaluate(cell: Cell) -> dict:
        problem = table[cell.group]
        if cell.label == FLOOR:
            return _floor(problem, n_samples, repeats, seed)
        config, tol = by_label[cell.label], cell.params.get("tolerance")
        scores, seconds = [], 0.0
        for r in range(repeats):
            s = seed + 10 * r
            mu = None if problem.mu is None else problem.mu.expand(n_samples, -1)
            x_prior = problem.sde.prior_sample((n_samples, problem.mixture.dim), mu, dtype=torch.float64,
                                               generator=torch.Generator().manual_seed(s))
            start = time.perf_counter()
            if config.scheduler is not None:
                x, used, t_end = _run_diffusers(config, problem, x_prior, cell.nfe, s + 1)
            elif config.sampler == "dmcmc":
                x, used, t_end = _run_dlg(config, problem, x_prior, cell.nfe, s + 1)
            else:
                with warnings.catch_warnings():  # the noise-prediction SDE warning is what this run measures
                    warnings.simplefilter("ignore", UserWarning)
                    x, used, t_end = _run_revsde(config, problem, x_prior, cell.nfe, s + 1, tol)
            seconds += time.perf_counter() - start
            scores.append(_score(problem, x, t_end, s + 2))
        return {"problem": problem.name, "label": config.label, "sampler": config.sampler, "options": config.options,
                "tolerance": tol, "target_nfe": cell.nfe if cell.nfe is not None else used, "nfe": used,
                "fd": sum(f for f, _ in scores) / repeats, "swd": sum(w for _, w in scores) / repeats,
                "seconds": seconds / repeats}

    cache = Cache(cache_path, gmm_settings(n_samples, repeats, seed), resume=resume,
                  writer=dist is None or dist.main)
    done = run_cells(cells + floor_cells, evaluate, cache, dist=dist or Dist(), shard="cells", progress=progress,
                     desc="bench gmm", log=log)
    records = [{k: v for k, v in r.items() if k != "group"} for r in done[:len(cells)]]
    floors = {r["group"]: {"fd": r["fd"], "swd": r["swd"]} for r in done[len(cells):]}
    # adaptive runs sit at the NFE they used: put each in the table column nearest to it
    for r in records:
        if r["tolerance"] is not None:
            r["target_nfe"] = min(nfes, key=lambda n: abs(math.log(n / max(r["nfe"], 1))))
    return BenchResult(records, n_samples, tuple(nfes), seed, repeats, floors)


FLOOR = "exact samples"


def _floor(problem: Problem, n_samples: int, repeats: int, seed: int) -> dict:
    scores = []
    for r in range(repeats):
        gen = torch.Generator().manual_seed(seed + 10 * r + 5)
        x0 = problem.mixture.sample(n_samples, gen)
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        x = problem.sde.perturb(x0, problem.sde.t_min, noise, None if problem.mu is None else problem.mu.expand_as(x0))
        scores.append(_score(problem, x, problem.sde.t_min, seed + 10 * r + 2))
    return {"fd": sum(f for f, _ in scores) / repeats, "swd": sum(w for _, w in scores) / repeats}


def gmm_settings(n_samples: int, repeats: int, seed: int) -> dict:
    """What a cached gmm cell depends on besides its own label, NFE and options (the cache refuses others)."""
    from revsde.apps.bench.fingerprints import versions

    return {"task": "gmm", "n_samples": n_samples, "repeats": repeats, "seed": seed, **versions("diffusers")}


def plot(result: BenchResult, path) -> None:
    """Metric versus NFE, log-log, one row per problem (FD, SWD), one line per configuration; the
    exact samples' score (the floor) as a dashed line."""
    from matplotlib.figure import Figure

    from revsde.apps.bench.harness import draw_curves

    problem_names = list(dict.fromkeys(r["problem"] for r in result.records))
    curves = max(len({r["label"] for r in result.records if r["problem"] == name}) for name in problem_names)
    row_height = max(5.5, 0.19 * curves)  # room for the legend, one line a curve
    fig = Figure(figsize=(14, row_height * len(problem_names)), layout="constrained")
    axes = fig.subplots(len(problem_names), 2, squeeze=False)
    panels = [("fd", "Fréchet distance to exact"), ("swd", "sliced Wasserstein to exact")]
    for row, name in zip(axes, problem_names):
        floor = result.floors.get(name)
        draw_curves(row, [r for r in result.records if r["problem"] == name], panels,
                    title=f"{name} ({result.n_samples} samples)",
                    hlines={FLOOR: {**floor, "color": "gray", "linestyle": ":"}} if floor else None)
    save_figure(fig, path)


def load(path) -> BenchResult:
    """A result written by ``write`` (its JSON), e.g. to redraw the plot."""
    data = json.loads(open(path).read())
    return BenchResult(data["records"], data["n_samples"], tuple(data["nfes"]), data["seed"], data.get("repeats", 1),
                       data.get("floors", {}))


def write(result: BenchResult, out_dir, stem: str | None = None) -> dict:
    """``bench_gmm.md``, ``.json`` and ``.png`` in ``out_dir`` (written atomically); ``stem`` other than
    ``bench_gmm`` (default: ``bench_flow`` when every problem is a rectified-flow one)."""
    from pathlib import Path

    if stem is None:
        flow = {r["problem"] for r in result.records} <= FLOW_PROBLEMS
        stem = "bench_flow" if flow else "bench_gmm"
    out = Path(out_dir)
    paths = {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json", "plot": out / f"{stem}.png"}
    with atomic_output(paths["markdown"]) as f:
        f.write(result.markdown().encode())
    with atomic_output(paths["json"]) as f:
        f.write(json.dumps({"n_samples": result.n_samples, "repeats": result.repeats, "nfes": list(result.nfes),
                            "seed": result.seed, "floors": result.floors, "records": result.records},
                           indent=1).encode())
    plot(result, paths["plot"])
    return paths
