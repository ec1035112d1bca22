"""``revsde bench image``: FD (or FID), KID and precision/recall versus NFE of an unconditional
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
resumes. The configurations, and ``QUICK``, the small grid of ``revsde bench image --quick``, are in
``image_configs``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from revsde.files import write_report
from revsde.apps.bench.fingerprints import fingerprint, versions
from revsde.apps.bench.harness import Cache, Cell, Dist, markdown_table, plot_curves, run_cells
from revsde.apps.image.scores import FeatureSpace, digits_space, inception_space, score
from revsde.apps.image.configs import NATIVE, default_configs, family_of
from revsde.apps.image.runners import (NativeRunner, is_flow, is_flow_model, load_image_model, model_folder,
                                       native_steps_for_nfe, sample_dlg, sample_native, sample_seeds)
from revsde.apps.mixture.pipeline_bench import SchedulerConfig, steps_for_nfe

STEM = "bench_image"
FLOW_STEM = "bench_image_flow"
NFES = (5, 10, 20, 50)


def stem_of(model: str) -> str:
    """The report's file stem: ``bench_image``, or ``bench_image_flow`` for a flow-matching model."""
    return FLOW_STEM if is_flow_model(model) else STEM


# --- the model ----------------------------------------------------------------------------------------


# --- sampling one cell ----------------------------------------------------------------------------------


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
    from revsde.integrations.pipelines import UnconditionalPipeline

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

        from revsde.nets.fid_inception import ENV_VAR

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
        from revsde.apps.image.data import digits

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
