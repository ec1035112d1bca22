"""``revsde bench --task image``: FD (or FID), KID and precision/recall versus NFE of an unconditional
image model, revsde's samplers against diffusers' schedulers on the same network in the same run.

Every configuration is a scheduler in ``UnconditionalPipeline`` (the Stable Diffusion loop; revsde's
samplers enter as ``RevSDEScheduler``), made with ``from_config`` of one DDPM config of the model's
training schedule. A flow-matching model (its folder's scheduler a ``FlowMatch…`` one, or on flow sigmas
with ``flow_prediction``; the built-in one is ``--model builtin-flow``) gets the flow configurations
(``image_configs.flow_configs``) instead, from a ``FlowMatchEulerDiscreteScheduler`` config, revsde's
samplers running on its ``RectifiedFlow``, and writes ``bench_image_flow.*``. Sample ``s`` draws its prior and all its step noise from ``torch.Generator`` seeded
``s`` (EDM's one-generator-per-seed scheme), so a sample is the same whatever the batch it was drawn in
and whatever the number of processes: under ``torchrun`` the seeds are sharded across ranks
(``harness.shard_seeds``) and gathered back in seed order before scoring. The NFE of a cell is counted
on the network (a forward hook), and the step count is the one whose counted NFE is nearest the target.

Scores, on the samples mapped to [0, 1] (clamped) and fed to the feature extractor:
- ``FD-digits`` (default; the built-in model): Fréchet distance in the feature space of the digit
  classifier the project trained (``scripts/train_fd_extractor.py``), against the 1797 scikit-learn
  digits at the model's resolution; KID and precision/recall (k = 3) against the same features.
- ``FID`` when Inception weights are given (``--inception-weights`` / ``$REVSDE_INCEPTION_WEIGHTS``):
  pytorch-fid's network (labelled "FID" only for the official file), grey images repeated to RGB, against
  reference statistics from ``--ref-stats`` (an ``.npz`` with ``mu``/``sigma``, or a folder of images,
  which also gives KID and precision/recall), by default the digits.
Cells run through ``harness.run_cells``, cached in ``<out>/bench_image.cache.jsonl``: an interrupted run
resumes. The configurations, and ``QUICK``, the small grid of ``revsde bench --quick``, are in
``image_configs``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import write_report
from .fingerprints import fingerprint, versions
from .harness import Cache, Cell, Dist, markdown_table, plot_curves, run_cells, shard_seeds
from .image_scores import FeatureSpace, digits_space, inception_space, score
from .image_configs import NATIVE, default_configs, family_of
from .pipeline_bench import SchedulerConfig, _CountCalls, steps_for_nfe

STEM = "bench_image"
FLOW_STEM = "bench_image_flow"
NFES = (5, 10, 20, 50)
BUILTIN = "image_digits_diffusers"
#: the built-in models: ``--model`` name -> (folder in revsde/weights, description, the script that trains it)
BUILTINS = {"builtin": (BUILTIN, "the built-in digits model (revsde/weights/image_digits.md)",
                        "train_builtin_image.py"),
            "builtin-flow": ("image_digits_flow_diffusers", "the built-in rectified-flow digits model "
                             "(revsde/weights/image_digits_flow.md)", "train_builtin_flow.py")}


def model_folder(model: str) -> Path:
    """The folder of a ``--model`` value: a built-in name or a path."""
    if model in BUILTINS:
        return Path(__file__).resolve().parents[1] / "weights" / BUILTINS[model][0]
    return Path(model)


def is_flow(config) -> bool:
    """Whether a scheduler config (with its ``_class_name``, as saved) is flow matching: a ``FlowMatch…``
    class, or flow sigmas / prediction."""
    return (str(config.get("_class_name", "")).startswith("FlowMatch") or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def is_flow_model(model: str) -> bool:
    """Whether ``--model`` is a flow-matching model, from its folder's scheduler config (no weights read)."""
    import json

    folder = model_folder(model)
    for path in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if path.is_file():
            return is_flow(json.loads(path.read_text()))
    return False


def stem_of(model: str) -> str:
    """The report's file stem: ``bench_image``, or ``bench_image_flow`` for a flow-matching model."""
    return FLOW_STEM if is_flow_model(model) else STEM


# --- the model ----------------------------------------------------------------------------------------
def load_image_model(model: str = "builtin"):
    """``(unet, scheduler_config, description)``: a built-in digits model (``BUILTINS``) or a local diffusers
    folder (a pipeline folder with ``model_index.json``, or a ``UNet2DModel`` folder with ``config.json``
    beside a ``scheduler/`` or ``scheduler_config.json``)."""
    from .sample_diffusers import load_pipeline

    if model in BUILTINS:
        folder, (_, description, script) = model_folder(model), BUILTINS[model]
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"the built-in image model {folder} is missing: train it with "
                                    f"python scripts/{script}")
    else:
        folder = Path(model)
        description = f"`{folder.name}`"
    pipe = load_pipeline(folder)
    unet, scheduler = getattr(pipe, "unet", None), getattr(pipe, "scheduler", None)
    if unet is None or scheduler is None or not hasattr(unet, "config") or "sample_size" not in unet.config:
        raise ValueError(f"{str(folder)!r} holds a {type(pipe).__name__}: the image bench needs an unconditional "
                         "pipeline with a `unet` (a UNet2DModel) and a `scheduler`")
    config = {**scheduler.config, "_class_name": type(scheduler).__name__}
    return unet.eval().requires_grad_(False), base_config(config), description


def base_config(config) -> dict:
    """A DDPM config with the model's training schedule, every key that matters explicit (as
    ``pipeline_bench.base_scheduler_config``): ε/x₀/v prediction kept, no clipping, linspace spacing.
    A flow-matching model's: a ``FlowMatchEulerDiscreteScheduler`` config of its training steps and shift."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if is_flow(config):
        shift = config.get("shift", config.get("flow_shift", 1.0))
        flow = FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000),
                                               shift=1.0 if shift is None else shift)
        return {**flow.config, "_class_name": type(flow).__name__}

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
    kwargs = {k: config[k] for k in keys if k in config and config[k] is not None}
    return DDPMScheduler(**kwargs, clip_sample=False, timestep_spacing="linspace").config


# --- sampling one cell ----------------------------------------------------------------------------------
def priors(seeds: list[int], shape: tuple) -> torch.Tensor:
    """The pipeline's prior draw of each seed: ``randn((1, *shape), generator=Generator().manual_seed(s))``."""
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(s)) for s in seeds])


def sharded(seeds: list[int], dist: Dist, max_batch: int, draw) -> tuple[torch.Tensor, float]:
    """``draw(batch) -> (x, nfe)`` over this rank's share of ``seeds`` (EDM's split, ``max_batch`` per
    call), then every rank's samples gathered in seed order, with the largest NFE any call made."""
    parts, mine, nfes = [], [], []
    for batch in shard_seeds(seeds, dist.rank, dist.world, max_batch):
        if batch:
            x, nfe = draw(batch)
            parts.append(x.cpu())
            mine += batch
            nfes.append(nfe)
    local = torch.cat(parts) if parts else torch.empty(0)
    _, x = dist.gather_by_seed(mine, local)
    return x, max(n for part in dist.gather_objects(nfes) for n in part)


def sample_seeds(pipe, steps: int, seeds: list[int], dist: Dist, max_batch: int) -> tuple[torch.Tensor, int]:
    """Samples of a pipeline for ``seeds`` (see ``sharded``) and the NFE counted on its network per run."""
    counter = _CountCalls(pipe.unet)

    def draw(batch):
        before = counter.count
        x = pipe(batch_size=len(batch), num_inference_steps=steps, output_type="raw",
                 generator=[torch.Generator().manual_seed(s) for s in batch]).images
        return x, counter.count - before

    try:
        return sharded(seeds, dist, max_batch, draw)
    finally:
        counter.remove()


class NativeRunner:
    """Runs a native configuration the way ``UnconditionalPipeline`` runs a scheduler: sample ``s`` starts
    from the pipeline's prior draw (``priors``) and takes every later draw from a second generator seeded
    ``s``; ``steps`` are the sampler's steps. Adaptive samplers (``ode_rk45``) take ``rtol = atol`` from the
    step count: ``10^(−steps/4)``. On a flow-matching model (``base`` a flow config) the network predicts
    the flow on ``RectifiedFlow(time_scale=num_train_timesteps)``; the option ``shift`` there is SD3's static
    shift of the grid (``grids.Shifted`` of the ``grid`` option, default ``uniform_t``)."""

    def __init__(self, unet, base: dict, options: dict):
        from ..integrations.diffusers import PREDICTION_TYPES
        from ..model import ScoreModel
        from ..sde.vp import DiscreteVPSDE
        from .train_image import UNetNet, flow_score_model

        if is_flow(base):
            self.model = flow_score_model(unet, float(base["num_train_timesteps"]))
        else:
            sde = DiscreteVPSDE.from_schedule(**{k: base[k] for k in ("num_train_timesteps", "beta_start", "beta_end",
                                                                      "beta_schedule", "trained_betas") if k in base})
            self.model = ScoreModel(UNetNet(unet), sde,
                                    prediction=PREDICTION_TYPES[base.get("prediction_type", "epsilon")])
        self.unet, self.options = unet, dict(options)
        self.shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def __call__(self, seeds: list[int], steps: int) -> tuple[torch.Tensor, int]:
        from ..solve import sample

        options = dict(self.options)
        sampler = options.pop("sampler")
        if "shift" in options:
            from ..grids import Shifted

            options["grid"] = Shifted(options.pop("shift"), base=options.get("grid", "uniform_t"))
        if sampler == "ode_rk45":
            options.setdefault("rtol", 10 ** (-steps / 4))
            options.setdefault("atol", 10 ** (-steps / 4))
        sol = sample(self.model, x_init=priors(seeds, self.shape).to(self.device), sampler=sampler, steps=steps,
                     progress=False, generator=[torch.Generator().manual_seed(s) for s in seeds], **options)
        return sol.x, sol.nfe


def native_steps_for_nfe(runner: NativeRunner, target: int, seed: int = 0, limit: int = 400) -> tuple[int, int]:
    """The step count whose NFE (counted on a one-sample run) is nearest ``target`` (ties: fewer)."""
    counted = {}
    steps = 1
    while steps <= limit:
        counted[steps] = runner([seed], steps)[1]
        if counted[steps] >= target:
            break
        steps += 1 if counted[steps] + 8 > target else max(1, (target - counted[steps]) // 4)
    best = min(counted, key=lambda k: (abs(counted[k] - target), counted[k]))
    return best, counted[best]


def sample_native(runner: NativeRunner, steps: int, seeds: list[int], dist: Dist, max_batch: int):
    """As ``sample_seeds``, for a native configuration."""
    return sharded(seeds, dist, max_batch, lambda batch: runner(batch, steps))


def sample_dlg(runner: NativeRunner, target: int, seeds: list[int], dist: Dist, max_batch: int):
    """Denoising MCMC as Kim & Ye run it, on the built-in noise-level classifier: ``len(seeds)`` outputs
    as ``snapshots`` successive snapshots (the configuration's ``dlg`` settings, else ``bench.DLG``) of
    persistent chains (``bench.dlg_snapshots``), chain ``c`` seeded by ``seeds[c]`` (its prior draw as the
    pipeline's, then its own generator); the budget split by ``bench.dlg_budget``. Returns the outputs in
    seed order and the NFE per output."""
    from .bench import DLG, dlg_sampler, dlg_snapshots
    from .train_noise_classifier import load_weights

    options = dict(runner.options)
    options.pop("sampler")
    grid = options.pop("grid", None)
    settings = options.pop("dlg", DLG)
    classifier = load_weights().to(runner.device)

    def draw(batch):
        smp, steps = dlg_sampler(classifier, target, options, settings)  # persistent chains per batch
        return dlg_snapshots(runner.model, smp, priors(batch, runner.shape).to(runner.device), steps,
                             settings["snapshots"], grid=grid, progress=False,
                             generator=[torch.Generator().manual_seed(s) for s in batch])

    chains = seeds[: -(-len(seeds) // settings["snapshots"])]
    x, nfe = sharded(chains, dist, max_batch, draw)  # (chains, snapshots, C, H, W)
    return x.flatten(0, 1)[: len(seeds)], round(nfe, 1)


@dataclass
class ImageBenchResult:
    rows: list[dict]
    nfes: list[int]
    n_samples: int
    seed: int
    label: str
    model: str
    reference: str
    world: int = 1
    seconds: float = 0.0
    floor: dict = field(default_factory=dict)
    stem: str = STEM

    def best(self, nfe: int, family: str) -> dict | None:
        rows = [r for r in self.rows if r["target_nfe"] == nfe and r["family"] == family and math.isfinite(r["fd"])]
        return min(rows, key=lambda r: r["fd"]) if rows else None

    @property
    def cell_seconds(self) -> float:
        """The sampling time of every cell, cached ones included (as measured when each ran)."""
        return sum(r.get("seconds", 0.0) for r in self.rows)

    def markdown(self) -> str:
        head = (f"Unconditional sampling from {self.model}: {self.label} of {self.n_samples} samples (seeds "
                f"{self.seed}…{self.seed + self.n_samples - 1}, one generator per seed) against {self.reference}. "
                f"Every configuration runs in the same pipeline on the same network; NFE counted on the network, "
                f"(n) where it differs from the target. Lower is better; the best of each column in bold. "
                f"{self.world} process(es); sampling time {self.cell_seconds:.0f} s over the cells (each as it "
                f"ran; cells resumed from the cache count their first run), wall time of this run "
                f"{self.seconds:.0f} s.")
        if self.floor:
            head += (f" Floor ({self.label} of {self.floor['n']} real images against the reference): "
                     f"{self.floor['fd']:.3g}.")
        parts = [head, markdown_table(self.rows, "fd", self.nfes, title=self.label, best="min")]
        if any(r.get("kid") is not None for r in self.rows):
            scaled = [{**r, "kid_e3": None if r.get("kid") is None else 1e3 * r["kid"]} for r in self.rows]
            parts.append(markdown_table(scaled, "kid_e3", self.nfes, title="KID × 10³", fmt="{:.2f}", best="min"))
            parts.append(markdown_table(self.rows, "precision", self.nfes, title="precision", fmt="{:.3f}"))
            parts.append(markdown_table(self.rows, "recall", self.nfes, title="recall", fmt="{:.3f}"))
        lines = []
        for n in self.nfes:
            ours, theirs = self.best(n, "revsde"), self.best(n, "diffusers")
            if ours and theirs:
                verdict = "lower" if ours["fd"] < theirs["fd"] else "not lower"
                lines.append(f"- NFE {n}: best revsde {ours['label']} {ours['fd']:.3g}, best diffusers "
                             f"{theirs['label']} {theirs['fd']:.3g}: revsde {verdict} ({ours['fd'] / theirs['fd']:.2f}×)")
        if lines:
            parts.append("Best of each family:\n\n" + "\n".join(lines))
        return "\n\n".join(parts) + "\n"

    def to_json(self) -> dict:
        rows = [{**r, "fd": r["fd"] if math.isfinite(r["fd"]) else None} for r in self.rows]
        return {"task": "image", "label": self.label, "model": self.model, "reference": self.reference,
                "n_samples": self.n_samples, "seed": self.seed, "nfes": self.nfes, "world": self.world,
                "seconds": self.seconds, "floor": self.floor, "rows": rows}


def run_image_bench(model: str = "builtin", *, nfes=NFES, n_samples: int = 2000, seed: int = 0,
                    labels: list[str] | None = None, inception_weights=None, ref_stats=None, max_batch: int = 500,
                    cache_path=None, resume: bool = True, dist: Dist | None = None, device=None,
                    space: FeatureSpace | None = None, progress: bool = False, log=None) -> ImageBenchResult:
    """Every configuration at every target NFE; see the module docstring. ``space`` replaces the
    feature space chosen from ``inception_weights`` (a custom extractor and reference)."""
    from ..integrations.pipelines import UnconditionalPipeline

    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2 (got {n_samples!r})")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1 (got {max_batch!r})")
    nfes = [int(n) for n in nfes]
    if not nfes or min(nfes) < 1:
        raise ValueError(f"nfes must be integers >= 1 (got {nfes!r})")
    flow = is_flow_model(model)
    configs = default_configs(flow)
    if labels:
        unknown = sorted(set(labels) - {c.label for c in configs})
        if unknown:
            raise ValueError(f"unknown configuration(s) {unknown}; valid: {', '.join(c.label for c in configs)}")
        configs = [c for c in configs if c.label in labels]
    dist = dist or Dist()
    device = torch.device(device or "cpu")
    unet, base, description = load_image_model(model)
    if is_flow(base) != flow:
        raise ValueError(f"{model!r}: its scheduler config and its pipeline's scheduler disagree on flow matching")
    unet.to(device)
    size, channels = unet.config.sample_size, unet.config.in_channels
    weights = inception_weights
    if weights is None:
        import os

        from ..nets.fid_inception import ENV_VAR

        weights = os.environ.get(ENV_VAR) or None
    if space is None:
        space = inception_space(weights, ref_stats, size, channels) if weights else digits_space(size, channels)
    settings = {"model": _identity(model), "n_samples": n_samples, "seed": seed, "label": space.label,
                "reference": space.reference, "base": {k: v for k, v in base.items() if not k.startswith("_")},
                "versions": versions("diffusers")}
    cache = Cache(cache_path, settings, resume=resume, writer=dist.main)
    seeds = list(range(seed, seed + n_samples))
    pipes = {}

    def evaluate(cell: Cell) -> dict:
        config = SchedulerConfig(cell.label, cell.params["scheduler"], cell.params["options"])
        try:
            if config.scheduler == NATIVE and config.options["sampler"] == "dmcmc":
                runner = pipes.setdefault(cell.label, NativeRunner(unet, base, config.options))
                steps, start = None, time.perf_counter()
                x, nfe = sample_dlg(runner, cell.nfe, seeds, dist, max_batch)
            elif config.scheduler == NATIVE:
                runner = pipes.setdefault(cell.label, NativeRunner(unet, base, config.options))
                steps, _ = native_steps_for_nfe(runner, cell.nfe, seed)
                start = time.perf_counter()
                x, nfe = sample_native(runner, steps, seeds, dist, max_batch)
            else:
                if cell.label not in pipes:
                    pipes[cell.label] = UnconditionalPipeline(unet=unet, scheduler=config.make(base))
                    pipes[cell.label].set_progress_bar_config(disable=True)
                pipe = pipes[cell.label]
                steps, _ = steps_for_nfe(pipe, cell.nfe, seed)
                start = time.perf_counter()
                x, nfe = sample_seeds(pipe, steps, seeds, dist, max_batch)
            seconds = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - a failing scheduler is a result, not the end of the run
            return {"family": family_of(config), "nfe": None, "fd": math.inf, "error": f"{type(error).__name__}: {error}"}
        return {"family": family_of(config), "scheduler": config.scheduler, "options": config.options, "steps": steps,
                "nfe": nfe, "seconds": seconds, **score(space, x, seed)}

    cells = [Cell(c.label, n, {"scheduler": c.scheduler, "options": c.options}) for c in configs for n in nfes]
    start = time.perf_counter()
    with torch.no_grad():
        rows = run_cells(cells, evaluate, cache, dist=dist, shard="seeds", progress=progress, desc="bench image",
                         log=log)
    floor = {}
    if space.ref_features is not None:
        from .image_data import digits

        if space.reference.startswith("the 1797"):  # half the digits against the whole set: what real data scores
            real = digits(size)[::2]
            floor = {"n": len(real), **{k: v for k, v in score(space, real, seed).items() if k in ("fd", "kid")}}
    return ImageBenchResult(rows, nfes, n_samples, seed, space.label, description, space.reference, dist.world,
                            time.perf_counter() - start, floor, FLOW_STEM if flow else STEM)


def _identity(model: str) -> str:
    """What makes a model the same one for the cache: its name and the content of its files."""
    folder = model_folder(model)
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}
    return f"{model}:{fingerprint(files)}"


def plot(result: ImageBenchResult, path) -> None:
    panels = [("fd", result.label)]
    if any(r.get("kid") is not None for r in result.rows):
        panels.append(("kid", "KID"))
    rows = [r for r in result.rows if r.get("nfe")]
    hlines = {"real images": {"fd": result.floor.get("fd")}} if result.floor else None
    plot_curves(rows, panels, path, title=f"{result.label} vs NFE ({result.n_samples} samples)", hlines=hlines)


def write(result: ImageBenchResult, out_dir) -> dict[str, Path]:
    """``bench_image.md`` (``bench_image_flow.md`` for a flow model), ``.json`` and ``.png`` in ``out_dir``
    (written atomically)."""
    return write_report(out_dir, result.stem, result.markdown(), result.to_json(), lambda path: plot(result, path))
