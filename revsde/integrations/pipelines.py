"""An unconditional image pipeline that runs any diffusers scheduler the way Stable Diffusion does.

``DDPMPipeline`` calls ``step(..., generator=...)`` (UniPC and Heun do not take one), and skips
``init_noise_sigma`` and ``scale_model_input`` (so σ-parameterised schedulers such as Euler start from
the wrong prior and feed the network unscaled inputs). ``UnconditionalPipeline`` follows the Stable
Diffusion loop instead: ``set_timesteps`` on the device, latents scaled by ``init_noise_sigma``,
``scale_model_input`` before every network call, and ``eta`` / ``generator`` passed to ``step`` only
where its signature takes them. Flow-matching schedulers (``FlowMatchEulerDiscreteScheduler`` and its
kin) have neither ``init_noise_sigma`` nor ``scale_model_input``: their prior is N(0, I) and the
network sees the state as it is, and the network is called with the scheduler's timesteps (σ · 1000).

``load_pipeline(path)`` loads a saved pipeline folder that uses revsde's classes (``RevSDEScheduler``,
``ExactMixtureUNet``, ``UnconditionalPipeline``) in a fresh process.
"""
from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt", "raw")


class UnconditionalPipeline(DiffusionPipeline):
    """``unet``: any model called ``unet(x, t).sample`` with ``config.sample_size`` and ``config.in_channels``
    (``UNet2DModel``, ``ExactMixtureUNet``); ``scheduler``: any diffusers scheduler or ``RevSDEScheduler``.

    ``output_type``: ``"pil"``, ``"np"`` (``(B, H, W, C)`` in [0, 1]), ``"pt"`` (``(B, C, H, W)`` in [0, 1]) or
    ``"raw"`` (the final state, neither rescaled nor clamped: what sample-quality metrics should see).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def prepare_extra_step_kwargs(self, generator, eta):
        """``eta`` and ``generator`` for ``scheduler.step``, each only if its signature takes it (as SD)."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in accepted:
            extra["eta"] = eta
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    def _image_shape(self, batch_size: int) -> tuple:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.unet.config.in_channels, *size)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 50, generator=None, eta: float = 0.0,
                 output_type: str = "pil", return_dict: bool = True, mu: float | None = None):
        """``mu``: the dynamic shift of a flow-matching scheduler with ``use_dynamic_shifting`` (passed to
        ``set_timesteps`` only when given)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)} (got {output_type!r})")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"a list of generators must hold one per sample ({batch_size}; got {len(generator)})")
        device = self._execution_device

        # 1. Timesteps on the device, then the prior at the scheduler's scale.
        self.scheduler.set_timesteps(num_inference_steps, device=device, **({} if mu is None else {"mu": mu}))
        timesteps = self.scheduler.timesteps
        latents = randn_tensor(self._image_shape(batch_size), generator=generator, device=device,
                               dtype=self.unet.dtype)
        latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)
        scale_input = getattr(self.scheduler, "scale_model_input", lambda sample, t: sample)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 2. Denoising loop: the scheduler scales the input, the network predicts, the scheduler steps.
        for t in self.progress_bar(timesteps):
            model_input = scale_input(latents, t)
            model_output = self.unet(model_input, t).sample
            latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs, return_dict=False)[0]

        # 3. Output: the raw state, or images in [0, 1] as DDPMPipeline makes them.
        if output_type == "raw":
            image = latents
        else:
            image = (latents / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                image = image.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


#: the revsde modules whose classes a saved pipeline folder may name as components
COMPONENT_MODULES = ("revsde.integrations.diffusers", "revsde.integrations.mixture_unet")


def load_pipeline(path, pipeline_class=None, **kwargs) -> DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained(path, **kwargs)`` for a folder saved with revsde's classes.

    diffusers (0.42) resolves a component's library from ``model_index.json`` only among the modules
    the process has already imported (it does not import code a folder names), so in a fresh process
    a folder whose scheduler is ``["revsde.integrations.diffusers", "RevSDEScheduler"]`` is refused.
    This imports revsde's component modules first (``COMPONENT_MODULES``: revsde's own code only).
    ``pipeline_class``: the class to load with; by default ``UnconditionalPipeline`` where the folder
    names it, else ``DiffusionPipeline`` (which picks diffusers' class from the folder). Components the
    folder was saved without (``[null, null]`` in ``model_index.json``, e.g. SD3 without its T5
    encoder) are passed as ``None``, which diffusers' loader needs to be told.
    """
    for name in COMPONENT_MODULES:
        importlib.import_module(name)
    index_file = Path(path) / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    if pipeline_class is None:
        pipeline_class = UnconditionalPipeline if index.get("_class_name") == UnconditionalPipeline.__name__ \
            else DiffusionPipeline
    # components saved as left out ([null, null]: SD3 without its T5) must be passed as None to load
    absent = {name: None for name, value in index.items()
              if not name.startswith("_") and value in ([None, None], None) and name not in kwargs}
    return pipeline_class.from_pretrained(path, **absent, **kwargs)
