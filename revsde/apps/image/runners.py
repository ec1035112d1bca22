"""The models ``revsde bench image`` samples and how one cell is sampled: a diffusers pipeline folder (the
built-in DDPM or flow digits model, or any ``UnconditionalPipeline``/``DDPMPipeline`` folder) with a
scheduler (``sample_seeds``), revsde's own loop on the same network (``NativeRunner``, ``sample_native``)
or Denoising MCMC (``sample_dlg``), every sample from its own seed, in shards of at most ``max_batch``."""
from __future__ import annotations

from pathlib import Path

import torch

from revsde.apps.bench.harness import Dist, shard_seeds
from revsde.apps.mixture.pipeline_bench import _CountCalls


BUILTIN = "image_digits_diffusers"
#: the built-in models: ``--model`` name -> (folder in revsde/weights, description, the script that trains it)
BUILTINS = {"builtin": (BUILTIN, "the built-in digits model (revsde/weights/image_digits.md)",
                        "train_builtin_image.py"),
            "builtin-flow": ("image_digits_flow_diffusers", "the built-in rectified-flow digits model "
                             "(revsde/weights/image_digits_flow.md)", "train_builtin_flow.py")}


def model_folder(model: str) -> Path:
    """The folder of a ``--model`` value: a built-in name or a path."""
    if model in BUILTINS:
        return Path(__file__).resolve().parents[2] / "weights" / BUILTINS[model][0]
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


def load_image_model(model: str = "builtin"):
    """``(unet, scheduler_config, description)``: a built-in digits model (``BUILTINS``) or a local diffusers
    folder (a pipeline folder with ``model_index.json``, or a ``UNet2DModel`` folder with ``config.json``
    beside a ``scheduler/`` or ``scheduler_config.json``)."""
    from revsde.apps.sample_diffusers import load_pipeline

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
        from revsde.integrations.diffusers import PREDICTION_TYPES
        from revsde.model import ScoreModel
        from revsde.sde.vp import DiscreteVPSDE
        from revsde.apps.image.model import UNetNet, flow_score_model

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
        from revsde.solve import sample

        options = dict(self.options)
        sampler = options.pop("sampler")
        if "shift" in options:
            from revsde.grids import Shifted

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
    from revsde.apps.mixture.configs import DLG, dlg_sampler, dlg_snapshots
    from revsde.apps.image.noise_classifier import load_weights

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
