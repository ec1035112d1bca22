"""Quality versus NFE of diffusers' schedulers and ``RevSDEScheduler`` inside one diffusers pipeline.

The pipeline is ``UnconditionalPipeline`` (the Stable Diffusion loop) and its "network" is
``ExactMixtureUNet``: the exact ε-prediction of a Gaussian mixture of small images, so the distance of the
samples to the mixture is the scheduler's error alone. Every scheduler is made with ``from_config`` from
one DDPM config, every run starts from the same prior draw (the pipeline's own ``randn_tensor`` with the
same seed), and the NFE is counted by a hook on the network, never taken from the requested step count:
for each target NFE the step count whose counted NFE comes nearest is found first with one-sample probes.

Scores, on the raw (unclamped) final states: Fréchet distance between the samples' moments and the
mixture's exact moments, and sliced Wasserstein distance to as many exact samples. The floor is the same
two numbers for exact mixture samples. ``run_pipeline_bench`` does the work; ``write`` saves a markdown
table, JSON and a log-log plot; ``scripts/bench_diffusers.py`` runs the default size into ``docs/``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from revsde.metrics import frechet_distance, sample_moments, sliced_wasserstein
from revsde.files import atomic_output, save_figure

NFES = (5, 10, 20, 50)
STEM = "bench_diffusers"


@dataclass
class SchedulerConfig:
    """One curve: ``scheduler`` (a diffusers class name or ``"RevSDEScheduler"``) ``.from_config(base, **options)``."""

    label: str
    scheduler: str
    options: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return "revsde" if self.scheduler == "RevSDEScheduler" else "diffusers"

    def make(self, base_config):
        if self.family == "revsde":
            from revsde.integrations.diffusers import RevSDEScheduler as cls
        else:
            import diffusers

            cls = getattr(diffusers, self.scheduler, None)
            if cls is None:
                raise ValueError(f"diffusers has no scheduler {self.scheduler!r}")
        return cls.from_config(base_config, **self.options)


def base_scheduler_config(unet, timestep_spacing: str = "linspace"):
    """A ``DDPMScheduler`` config with the model's training schedule, every key that matters given explicitly.

    diffusers' ``from_config`` drops the keys a config lists under ``_use_default_values`` (those left at
    the source class's defaults) and lets the target class's own defaults win: ``HeunDiscreteScheduler``
    built from ``DDPMScheduler().config`` integrates β from 0.00085 to 0.012, not DDPM's 1e-4 to 0.02.
    ``clip_sample=False`` so x̂₀ clipping (DDPM's and DDIM's default) does not mix into the solver's error;
    ``timestep_spacing="linspace"`` so every scheduler's grid spans the whole table, from N − 1 to 0.
    """
    from diffusers import DDPMScheduler

    c = unet.config
    return DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
                         beta_schedule=c.beta_schedule, prediction_type="epsilon", clip_sample=False,
                         timestep_spacing=timestep_spacing).config


def diffusers_configs() -> list[SchedulerConfig]:
    dpm = "DPMSolverMultistepScheduler"
    sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    return [
        SchedulerConfig("DDPM", "DDPMScheduler"),
        SchedulerConfig("DDIM", "DDIMScheduler"),
        SchedulerConfig("DPM-Solver++ 2M", dpm, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        SchedulerConfig("DPM-Solver++ 3M", dpm, {"algorithm_type": "dpmsolver++", "solver_order": 3}),
        SchedulerConfig("SDE-DPM-Solver++ 2M", dpm, sde),
        # the same solvers on diffusers' non-uniform grids: uniform in log-SNR, and Karras σ (ρ = 7)
        SchedulerConfig("DPM-Solver++ 2M lu_lambdas", dpm, {"solver_order": 2, "use_lu_lambdas": True}),
        SchedulerConfig("SDE-DPM-Solver++ 2M lu_lambdas", dpm, {**sde, "use_lu_lambdas": True}),
        SchedulerConfig("DPM-Solver++ 2M karras", dpm, {"solver_order": 2, "use_karras_sigmas": True}),
        # a last step to the table's first point instead of σ = 0 (x̂₀ of the last evaluation)
        SchedulerConfig("DPM-Solver++ 2M sigma_min", dpm, {"solver_order": 2, "final_sigmas_type": "sigma_min"}),
        SchedulerConfig("UniPC", "UniPCMultistepScheduler"),
        SchedulerConfig("Euler", "EulerDiscreteScheduler"),
        SchedulerConfig("Heun", "HeunDiscreteScheduler"),
    ]


def revsde_configs() -> list[SchedulerConfig]:
    r = "RevSDEScheduler"
    mrs = {"sampler": "mrs"}
    return [
        SchedulerConfig("revsde mrs 2", r, {**mrs, "order": 2}),
        # DPM-Solver++(2M) as published and as diffusers' default solver_type: the parity row
        SchedulerConfig("revsde mrs 2 midpoint", r, {**mrs, "order": 2, "second_order": "midpoint"}),
        SchedulerConfig("revsde mrs 3", r, {**mrs, "order": 3}),
        SchedulerConfig("revsde mrs SDE 2", r, {**mrs, "order": 2, "stochastic": True}),
        # the same solvers on revsde's grid uniform in log-SNR (diffusers' lu_lambdas is its analogue)
        SchedulerConfig("revsde mrs 2 logsnr", r, {**mrs, "order": 2, "grid": "logsnr"}),
        SchedulerConfig("revsde mrs 3 logsnr", r, {**mrs, "order": 3, "grid": "logsnr"}),
        SchedulerConfig("revsde mrs SDE 2 logsnr", r, {**mrs, "order": 2, "stochastic": True, "grid": "logsnr"}),
        SchedulerConfig("revsde ode_heun", r, {"sampler": "ode_heun"}),
        SchedulerConfig("revsde pc langevin", r, {"sampler": "pc", "corrector": "langevin"}),
        SchedulerConfig("revsde euler_maruyama", r, {"sampler": "euler_maruyama"}),
        SchedulerConfig("revsde ancestral", r, {"sampler": "ancestral"}),
    ]


def default_configs() -> list[SchedulerConfig]:
    return diffusers_configs() + revsde_configs()


class _CountCalls:
    """A forward pre-hook on the network: every call is one NFE (for the whole batch)."""

    def __init__(self, module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1

    def remove(self):
        self._handle.remove()


def _run(pipe, steps: int, batch: int, seed: int) -> tuple[torch.Tensor, int]:
    counter = _CountCalls(pipe.unet)
    try:
        x = pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                 output_type="raw").images
    finally:
        counter.remove()
    return x, counter.count


def steps_for_nfe(pipe, target: int, seed: int = 0, max_probes: int = 64) -> tuple[int, int]:
    """The step count whose counted NFE is nearest ``target`` (ties: the smaller NFE), and that NFE.

    Starts at ``target / scheduler.order`` and walks one step at a time towards the target, each step
    count probed with a one-sample run; NFE(steps) only has to be non-decreasing."""
    counted = {}

    def nfe(steps):
        if steps not in counted:
            counted[steps] = _run(pipe, steps, 1, seed)[1]
        return counted[steps]

    steps = max(1, round(target / max(int(getattr(pipe.scheduler, "order", 1) or 1), 1)))
    direction = 1 if nfe(steps) < target else -1
    for _ in range(max_probes):
        if nfe(steps) == target or steps + direction < 1:
            break
        if (nfe(steps) - target) * (nfe(steps + direction) - target) <= 0:  # crossed (or hit) the target
            steps += direction if abs(nfe(steps + direction) - target) < abs(nfe(steps) - target) else 0
            break
        steps += direction
    best = min(counted, key=lambda s: (abs(counted[s] - target), counted[s]))
    return best, counted[best]


def _scores(x: torch.Tensor, mean, cov, reference, projections_seed: int, swd: bool) -> tuple[float, float | None]:
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(flat).all()):
        return math.inf, math.inf if swd else None
    fd = frechet_distance(*sample_moments(flat), mean, cov)
    w = sliced_wasserstein(flat, reference, generator=torch.Generator().manual_seed(projections_seed)) if swd else None
    return fd, w


@dataclass
class PipelineBenchResult:
    rows: list  # dicts: label, family, scheduler, options, target_nfe, steps, nfe, fd, swd, seconds
    floor: dict  # {"fd", "swd"} of exact mixture samples of the same size
    n_samples: int
    nfes: tuple
    seed: int
    problem: dict = field(default_factory=dict)
    base_config: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)  # dicts: label, target_nfe, error
    seconds: float = 0.0

    def table(self, metric: str = "fd") -> str:
        floor = self.floor.get(metric)
        head = (f"| {metric.upper()} at NFE" + (f" (exact samples: {floor:.2e})" if floor is not None else "")
                + " | scheduler | " + " | ".join(str(n) for n in self.nfes) + " |")
        lines = [head, "|---" * (len(self.nfes) + 2) + "|"]
        for label in dict.fromkeys(r["label"] for r in self.rows):
            rows = [r for r in self.rows if r["label"] == label]
            cells = []
            for target in self.nfes:
                hit = [r for r in rows if r["target_nfe"] == target]
                if not hit or hit[0][metric] is None:
                    cells.append("–")
                    continue
                value = hit[0][metric]
                text = "diverged" if not math.isfinite(value) else f"{value:.2e}"
                cells.append(text + ("" if hit[0]["nfe"] == target else f" ({hit[0]['nfe']})"))
            lines.append(f"| {label} | {rows[0]['scheduler']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        p = self.problem
        parts = [
            f"diffusers pipeline (`UnconditionalPipeline`) with `ExactMixtureUNet`: the exact noise prediction of "
            f"a {p.get('components')}-component Gaussian mixture of {p.get('in_channels')}×{p.get('sample_size')}"
            f"×{p.get('sample_size')} images (D = {p.get('dim')}), DDPM schedule {p.get('beta_schedule')} "
            f"β {p.get('beta_start')}–{p.get('beta_end')}, {p.get('num_train_timesteps')} steps. Every scheduler is "
            f"`from_config` of one DDPM config (timestep_spacing `{self.base_config.get('timestep_spacing')}`, "
            f"clip_sample {self.base_config.get('clip_sample')}). {self.n_samples} samples per run, one prior draw "
            f"(seed {self.seed}) shared by all runs; scores on the raw, unclamped outputs. Cells: metric at the target "
            f"NFE; (n) = the NFE counted on the network where it differs from the target. The header gives the same "
            f"metric for exact samples: the floor. Total time {self.seconds:.0f} s.",
            self.table("fd"),
        ]
        if any(r["swd"] is not None for r in self.rows):
            parts.append(self.table("swd"))
        seconds = ["| seconds per run (all NFEs) | " + " | ".join(str(n) for n in self.nfes) + " |",
                   "|---" * (len(self.nfes) + 1) + "|"]
        for label in dict.fromkeys(r["label"] for r in self.rows):
            cells = {r["target_nfe"]: f"{r['seconds']:.2f}" for r in self.rows if r["label"] == label}
            seconds.append(f"| {label} | " + " | ".join(cells.get(n, "–") for n in self.nfes) + " |")
        parts.append("\n".join(seconds))
        if self.failures:
            parts.append("Failed runs:\n\n" + "\n".join(f"- {f['label']} at NFE {f['target_nfe']}: {f['error']}"
                                                         for f in self.failures))
        return "\n\n".join(parts) + "\n"

    def to_json(self) -> dict:
        finite = lambda v: v if v is None or math.isfinite(v) else None  # JSON has no Infinity: diverged -> null
        rows = [{**r, "fd": finite(r["fd"]), "swd": finite(r["swd"]), "diverged": not math.isfinite(r["fd"])}
                for r in self.rows]
        return {"n_samples": self.n_samples, "nfes": list(self.nfes), "seed": self.seed, "floor": self.floor,
                "problem": self.problem, "base_config": self.base_config, "failures": self.failures,
                "seconds": self.seconds, "rows": rows}


def run_pipeline_bench(configs: list[SchedulerConfig] | None = None, nfes=NFES, n_samples: int = 10000, seed: int = 0,
                       progress: bool = False, unet=None, base_config=None, swd: bool = True) -> PipelineBenchResult:
    """Every configuration at every target NFE in ``UnconditionalPipeline``; see the module docstring.

    ``configs``: default ``default_configs()`` (diffusers' schedulers, then ``RevSDEScheduler``'s);
    ``unet``: default ``ExactMixtureUNet.default()``; ``base_config``: default
    ``base_scheduler_config(unet)``. A configuration that raises is recorded in ``failures``, not fatal.
    """
    from tqdm.auto import tqdm

    from revsde.integrations.mixture_unet import ExactMixtureUNet
    from revsde.integrations.pipelines import UnconditionalPipeline

    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2 (got {n_samples!r})")
    nfes = tuple(nfes)
    if not nfes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nfes):
        raise ValueError(f"nfes must be integers >= 1 (got {nfes!r})")
    configs = default_configs() if configs is None else list(configs)
    labels = [c.label for c in configs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"configuration labels must be distinct (got {labels})")
    unet = ExactMixtureUNet.default() if unet is None else unet
    base_config = base_scheduler_config(unet) if base_config is None else base_config
    mixture = unet.mixture()
    mean, cov = mixture.mean(), mixture.cov()
    reference = mixture.sample(n_samples, torch.Generator().manual_seed(seed + 2))
    start = time.perf_counter()

    rows, failures = [], []
    jobs = [(config, target) for config in configs for target in nfes]
    pipes = {}
    for config, target in tqdm(jobs, desc="pipeline bench", disable=not progress):
        try:
            if config.label not in pipes:
                pipes[config.label] = UnconditionalPipeline(unet=unet, scheduler=config.make(base_config))
                pipes[config.label].set_progress_bar_config(disable=True)
            pipe = pipes[config.label]
            steps, _ = steps_for_nfe(pipe, target, seed)
            t0 = time.perf_counter()
            x, nfe = _run(pipe, steps, n_samples, seed)
            seconds = time.perf_counter() - t0
        except Exception as error:  # noqa: BLE001 - one scheduler's failure must not lose the others' results
            failures.append({"label": config.label, "target_nfe": target, "error": f"{type(error).__name__}: {error}"})
            continue
        fd, w = _scores(x, mean, cov, reference, seed + 3, swd)
        rows.append({"label": config.label, "family": config.family, "scheduler": config.scheduler,
                     "options": config.options, "target_nfe": target, "steps": steps, "nfe": nfe, "fd": fd, "swd": w,
                     "seconds": seconds})

    exact = mixture.sample(n_samples, torch.Generator().manual_seed(seed + 1))
    floor_fd, floor_swd = _scores(exact, mean, cov, reference, seed + 3, swd)
    c = unet.config
    problem = {"sample_size": c.sample_size, "in_channels": c.in_channels, "dim": mixture.dim,
               "components": int(mixture.weights.numel()), "num_train_timesteps": c.num_train_timesteps,
               "beta_start": c.beta_start, "beta_end": c.beta_end, "beta_schedule": c.beta_schedule}
    base = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    return PipelineBenchResult(rows, {"fd": floor_fd, "swd": floor_swd}, n_samples, nfes, seed, problem, base,
                               failures, time.perf_counter() - start)


def plot(result: PipelineBenchResult, path) -> None:
    """FD (and SWD) versus counted NFE, log-log, one line per configuration; the floor dashed."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    metrics = ["fd"] + (["swd"] if any(r["swd"] is not None for r in result.rows) else [])
    labels = list(dict.fromkeys(r["label"] for r in result.rows))
    legend_rows = math.ceil((len(labels) + 1) / 4)
    fig, axes = plt.subplots(1, len(metrics), figsize=(8 * len(metrics), 6 + 0.22 * legend_rows), squeeze=False)
    palette = [plt.get_cmap("tab20")(i) for i in range(20)] + [plt.get_cmap("Dark2")(i) for i in range(8)]
    for ax, metric in zip(axes[0], metrics):
        for k, label in enumerate(labels):
            rows = [r for r in result.rows if r["label"] == label and r[metric] is not None and math.isfinite(r[metric])]
            pts = sorted((r["nfe"], r[metric]) for r in rows)
            if not pts:
                continue
            style = "-" if rows[0]["family"] == "revsde" else ":"  # dashed is the floor's
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="os^vDP"[k % 6], ms=4, lw=1.3,
                    color=palette[k % len(palette)], label=label)
        if result.floor.get(metric) is not None:
            ax.axhline(result.floor[metric], color="black", linestyle="--", linewidth=1.5,
                       label=f"exact samples (floor, n = {result.n_samples})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(result.nfes), [str(n) for n in result.nfes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("NFE (counted)")
        ax.set_ylabel({"fd": "Fréchet distance to the exact mixture",
                       "swd": "sliced Wasserstein to exact samples"}[metric])
        ax.set_title(f"{metric.upper()} vs NFE in a diffusers pipeline ({result.n_samples} samples)")
        ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.22 * legend_rows / (6 + 0.22 * legend_rows) + 0.01, 1, 1))
    save_figure(fig, path)
    plt.close(fig)


def write(result: PipelineBenchResult, out_dir, stem: str = STEM) -> dict:
    """``{stem}.md``, ``{stem}.json`` and ``{stem}.png`` in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    paths = {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json", "plot": out / f"{stem}.png"}
    with atomic_output(paths["markdown"]) as f:
        f.write(result.markdown().encode())
    with atomic_output(paths["json"]) as f:
        f.write(json.dumps(result.to_json(), indent=1).encode())
    plot(result, paths["plot"])
    return paths


def load(path) -> PipelineBenchResult:
    """A result written by ``write`` (its JSON), e.g. to redraw the plot; diverged cells come back as inf."""
    data = json.loads(Path(path).read_text())
    rows = []
    for r in data["rows"]:
        r = dict(r)
        if r.pop("diverged", False):
            r["fd"] = math.inf
            r["swd"] = None if r["swd"] is None and data["floor"].get("swd") is None else math.inf
        rows.append(r)
    return PipelineBenchResult(rows, data["floor"], data["n_samples"], tuple(data["nfes"]), data["seed"],
                               data.get("problem", {}), data.get("base_config", {}), data.get("failures", []),
                               data.get("seconds", 0.0))
