"""Sampling a local diffusers pipeline folder with any fixed-step revsde sampler.

``sample_diffusers`` loads the folder offline, swaps its scheduler for ``RevSDEScheduler`` built
from the folder's own scheduler config (same training schedule and prediction type; for a
flow-matching folder — SD3, Flux, Wan/Sana-style UniPC or DPM-Solver flow configs — the same
rectified flow and shifted sigmas), runs the pipeline, and returns the images with the counted
network evaluations; ``revsde sample --diffusers`` only parses, prints and writes. The folder is
only read.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from revsde import __version__
from revsde.solve import NonFiniteStateError
from revsde.files import atomic_output
from revsde.apps.mixture.sample import _device


@dataclass
class DiffusersSample:
    """``images``: uint8 ``(n, H, W, C)``; ``nfe``: network evaluations the scheduler answered (with
    classifier-free guidance each is one call on the doubled batch); ``scheduler``: the
    ``RevSDEScheduler`` config used."""

    images: np.ndarray
    nfe: int
    steps: int
    pipeline: str
    path: str
    sampler: str
    seed: int
    scheduler: dict
    prompt: str | None = None
    seconds: float = 0.0
    options: dict = field(default_factory=dict)

    def report(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        prompt = "" if self.prompt is None else f", prompt {self.prompt!r}"
        n, h, w, _ = self.images.shape
        return "\n".join([
            f"pipeline: {self.pipeline} from {self.path}{prompt}",
            f"scheduler: RevSDEScheduler, sampler {self.sampler}{options}, grid {self.scheduler['grid']}, "
            f"final_sigmas_type {self.scheduler['final_sigmas_type']}",
            f"images: {n} of {w}x{h} (seed {self.seed}: image b draws from a generator seeded seed + b)",
            f"NFE: {self.nfe} in {self.steps} steps ({self.seconds:.2f} s)",
        ])

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """``sample_000.png`` …, ``grid.png`` (all images side by side) and ``run.json``; each atomic."""
        from PIL import Image

        folder = Path(folder)
        written = []

        def put(name: str, data: bytes):
            with atomic_output(folder / name) as file:
                file.write(data)
            written.append(folder / name)

        def png(array: np.ndarray) -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, format="png")
            return buffer.getvalue()

        for i, image in enumerate(self.images):
            put(f"sample_{i:03d}.png", png(image))
        put("grid.png", png(np.concatenate(list(self.images), axis=1)))
        meta = {"pipeline": self.pipeline, "path": self.path, "prompt": self.prompt, "sampler": self.sampler,
                "options": self.options, "seed": self.seed, "steps": self.steps, "nfe": self.nfe,
                "seconds": self.seconds, "scheduler": self.scheduler, "version": __version__}
        put("run.json", json.dumps(meta, indent=2, default=str).encode())
        return written


def load_pipeline(path: str | os.PathLike, progress: bool = False):
    """A diffusers pipeline from a local folder (``model_index.json`` inside), never from a hub; a folder
    that names revsde's classes (``UnconditionalPipeline``, ``RevSDEScheduler``) loads with them
    (``integrations.pipelines.load_pipeline``)."""
    from diffusers.utils import logging as diffusers_logging

    from revsde.integrations.pipelines import load_pipeline as load_with_revsde_classes

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--diffusers needs a local pipeline folder; {str(path)!r} is not a folder")
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{str(path)!r} is not a diffusers pipeline folder: it has no model_index.json "
                         "(write one with pipe.save_pretrained(folder))")
    with contextlib.ExitStack() as quiet:
        if not progress:  # loading bars of diffusers and transformers; their notices stay
            quiet.enter_context(_bars_off(diffusers_logging))
            with contextlib.suppress(ImportError):
                from transformers.utils import logging as transformers_logging

                quiet.enter_context(_bars_off(transformers_logging))
        try:
            return load_with_revsde_classes(folder, local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, KeyError, AttributeError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"could not load the diffusers pipeline in {str(path)!r}: {error}") from None


@contextlib.contextmanager
def _bars_off(hf_logging):
    """Progress bars of a Hugging Face library off for the block (both share this logging API)."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def sample_diffusers(path: str | os.PathLike, *, sampler: str = "mrs", steps: int = 20, grid: str | None = None,
                     options: dict | None = None, n: int = 4, seed: int = 0, prompt: str | None = None,
                     negative_prompt: str | None = None, guidance_scale: float | None = None,
                     noise: str = "gaussian", device=None, progress: bool = False,
                     graphs="auto") -> DiffusersSample:
    """Run the pipeline in ``path`` with ``RevSDEScheduler(sampler, **options)`` for ``steps`` steps.

    ``grid`` defaults to ``"discrete"`` (the folder's timestep spacing); ``options`` are the sampler's
    options or any other ``RevSDEScheduler`` key (e.g. ``final_sigmas_type``). Text-conditioned pipelines
    need ``prompt`` (with optional ``negative_prompt`` and ``guidance_scale``); unconditional ones
    refuse it. Image ``b`` draws all its noise from a generator seeded ``seed + b``. ``graphs``: replay
    the UNet from CUDA graphs (``graph_unet``): ``"auto"`` on CUDA devices for pipelines with a UNet
    (transformer pipelines run as they are), ``True`` or ``False``.
    """
    from revsde.integrations.diffusers import RevSDEScheduler, graph_unet

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (got {seed!r})")
    device = _device(device)
    options = dict(options or {})
    parameters = inspect.signature(RevSDEScheduler.__init__).parameters
    valid = [k for k in parameters if k not in ("self", "sampler")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"RevSDEScheduler has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(valid)}")
    keys = {"grid": grid or "discrete", "noise": noise}
    flow_keys = {k for k, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if not set(options) & flow_keys:  # flow keys are checked against the folder's schedule, once loaded
        RevSDEScheduler(sampler=sampler, **keys, **options)  # refuse bad choices before loading anything
    pipe = load_pipeline(path, progress)
    if not hasattr(pipe, "scheduler") or not hasattr(pipe.scheduler, "config"):
        raise ValueError(f"the pipeline in {str(path)!r} ({type(pipe).__name__}) has no scheduler to replace")
    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler=sampler, **keys, **options)
    pipe.set_progress_bar_config(disable=not progress)
    pipe.to(device)
    if graphs not in ("auto", True, False):
        raise ValueError(f"graphs must be 'auto', True or False (got {graphs!r})")
    unet = getattr(pipe, "unet", None)
    if graphs is True and unet is None:
        raise ValueError(f"graphs=True replays a UNet; {type(pipe).__name__} has none (use graphs='auto' or False)")
    if unet is not None and (graphs is True or (graphs == "auto" and device.type == "cuda")):
        graph_unet(unet)

    call = inspect.signature(pipe.__call__).parameters
    generators = [torch.Generator().manual_seed(seed + b) for b in range(n)]
    kwargs = {"num_inference_steps": steps, "generator": generators, "output_type": "np"}
    if "prompt" in call:
        if prompt is None:
            raise ValueError(f"{type(pipe).__name__} is conditioned on text: give a prompt (--prompt TEXT)")
        kwargs.update(prompt=prompt, num_images_per_prompt=n)
        if negative_prompt is not None:
            kwargs["negative_prompt"] = negative_prompt
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
    elif prompt is not None or negative_prompt is not None or guidance_scale is not None:
        raise ValueError(f"{type(pipe).__name__} is unconditional: it takes no prompt or guidance scale")
    elif "batch_size" in call:
        kwargs["batch_size"] = n
    else:
        raise ValueError(f"{type(pipe).__name__} takes neither a prompt nor a batch_size: revsde cannot drive it")

    start = time.perf_counter()
    with torch.no_grad():
        images = pipe(**kwargs).images
    seconds = time.perf_counter() - start
    images = np.asarray(images)
    if not np.isfinite(images).all():
        raise NonFiniteStateError(f"the pipeline returned NaN/Inf pixels (sampler {sampler!r}, {steps} steps)")
    images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    public = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    return DiffusersSample(images=images, nfe=pipe.scheduler.nfe, steps=pipe.scheduler.num_inference_steps,
                           pipeline=type(pipe).__name__, path=str(path), sampler=sampler, seed=seed,
                           scheduler=public, prompt=prompt, seconds=seconds,
                           options=pipe.scheduler.sampler.options())
