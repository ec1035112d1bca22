"""``RevSDEScheduler``: any revsde sampler as a diffusers scheduler (DESIGN §6).

    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler="mrs", order=2)

The scheduler builds the discrete VP SDE of the training schedule in the config it replaces
(``DiscreteVPSDE.from_schedule``: DDPM index = the model's time), and each ``step()`` answers one
``Query`` of the same sampler generator that ``revsde.sample`` drives: one implementation of the
maths. ``timesteps`` are the sampler's evaluation times in model units, repeated where a step
evaluates more than once (``order`` = evaluations per step, as diffusers' Heun). The config keys it
reads and what they mean are in ``scheduler_config``; flow-matching configs are refused.

A pipeline saved with this scheduler records it as ``["revsde.integrations.diffusers",
"RevSDEScheduler"]``. diffusers (0.42) resolves such a library only among the modules the process
has already imported (it does not import code a folder names), so in a fresh process import this
module before ``DiffusionPipeline.from_pretrained``, or load with
``revsde.integrations.pipelines.load_pipeline(path)``, which does both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from .. import grids as grids_mod
from .. import samplers as samplers_mod
from ..model import Prediction
from ..noise import BrownianNoise, GaussianNoise, draw_entropy, generators_from_seed
from ..samplers.base import Query, Step
from ..sde.vp import DiscreteVPSDE
from ..sde.cached import GridCoefficients
from ..solve import FiniteGuard, _state_dtype, check_finite
from .scheduler_config import (FINAL_SIGMAS_TYPES, NOISES, PREDICTION_TYPES, SAMPLER_OPTIONS,  # noqa: F401
                               TIMESTEP_SPACINGS, check_not_flow, check_output_keys, discrete_timesteps,
                               dynamic_threshold, prediction_channels)


@dataclass
class RevSDESchedulerOutput(BaseOutput):
    """``prev_sample``: the state to evaluate next (or the result); ``pred_original_sample``: x̂₀ of
    this evaluation."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class RevSDEScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a revsde sampler on the config's discrete VP SDE.

    ``sampler``: a registry name with query times known in advance (all but ``ode_rk45`` and
    ``torchsde``); its options as values (``order``, ``prediction``, ``stochastic``, ``corrector``,
    ``snr``, …; ``None`` keeps the sampler's default). ``grid``: ``"discrete"`` (diffusers'
    DPMSolverMultistep/UniPC integer timesteps for ``timestep_spacing``, then the table's first
    point) or a continuous grid of ``revsde.grids`` (``logsnr``, ``karras``, ``uniform_t``,
    ``quadratic``) over the whole table. ``final_sigmas_type``: ``"zero"`` — the last step goes to
    σ = 0, i.e. returns x̂₀ of its first evaluation, as diffusers' solvers do — or ``"sigma_min"``
    (the sampler's own last step, to the table's first point). With as many steps as training steps
    the discrete timesteps are every index, down to 0, whose x̂₀ is then the result (``"zero"`` only).
    ``noise``: ``"gaussian"`` or ``"brownian"`` (a fixed Brownian path, the same at every step count),
    drawn from the ``generator`` passed to ``step`` (one, or a list with one per sample), else from a
    seed drawn from torch's global generator. The rest are keys of the config it replaces: the
    training schedule (``rescale_betas_zero_snr``: sampling starts at diffusers' finite stand-in
    ᾱ = 2⁻²⁴), ``prediction_type`` (epsilon, sample or v_prediction), ``variance_type`` (``learned`` /
    ``learned_range``: the output's second half of channels, a variance, is dropped; DDPM's ``fixed_*``
    and ``None``: the output is the prediction alone), and ``thresholding`` (Imagen's dynamic
    thresholding of every x̂₀ at ``dynamic_thresholding_ratio``, ``sample_max_value``; the sampler then
    uses the thresholded x̂₀ and the noise it implies, as DPMSolverMultistep does).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]

    @register_to_config
    def __init__(self, sampler: str = "mrs", order: int | None = None, prediction: str | None = None,
                 stochastic: bool | None = None, lower_order_final: bool | None = None,
                 denoise_last: bool | None = None, warmup: str | None = None, second_order: str | None = None,
                 third_order: str | None = None, predictor: str | None = None, corrector: str | None = None,
                 snr: float | None = None, corrector_steps: int | None = None, langevin_norms: str | None = None,
                 denoise: bool | None = None, discretization: str | None = None, variance: str | None = None, grid: str = "discrete",
                 final_sigmas_type: str = "zero", noise: str = "gaussian", num_train_timesteps: int = 1000,
                 beta_start: float = 0.0001, beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas=None, prediction_type: str = "epsilon", timestep_spacing: str = "linspace",
                 steps_offset: int = 0, rescale_betas_zero_snr: bool = False, variance_type: str | None = None,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 sample_max_value: float = 1.0):
        given = dict(order=order, prediction=prediction, stochastic=stochastic, lower_order_final=lower_order_final,
                     denoise_last=denoise_last, warmup=warmup, second_order=second_order, third_order=third_order,
                     predictor=predictor, corrector=corrector, snr=snr, corrector_steps=corrector_steps,
                     langevin_norms=langevin_norms, denoise=denoise, discretization=discretization, variance=variance)
        self.sampler = samplers_mod.get(sampler, **{k: v for k, v in given.items() if v is not None})
        if self.sampler.adaptive or self.sampler.evals_per_step is None:
            raise ValueError(f"sampler {sampler!r} chooses its steps as it goes, but a diffusers pipeline iterates "
                             "timesteps fixed in advance; use revsde.sample for it, or a fixed-step sampler")
        try:
            self.sampler.query_times(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
        except ValueError as err:
            raise ValueError(f"RevSDEScheduler cannot drive this sampler: {err}") from None
        if grid != "discrete" and grid not in grids_mod.available():
            raise ValueError(f"grid must be 'discrete' or one of {', '.join(grids_mod.available())} (got {grid!r})")
        for key, value, valid in (("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES),
                                  ("noise", noise, NOISES), ("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS),
                                  ("prediction_type", prediction_type, tuple(PREDICTION_TYPES))):
            if value not in valid:
                raise ValueError(f"RevSDEScheduler supports {key} in {{{', '.join(valid)}}} (got {value!r})")
        check_output_keys(variance_type, thresholding, dynamic_thresholding_ratio, sample_max_value)
        self.sde = DiscreteVPSDE.from_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule,
                                               trained_betas, rescale_betas_zero_snr)
        self.alphas_cumprod = self.sde.alphas_cumprod.float()
        #: timesteps per logical step (diffusers' meaning), not the solver's convergence order
        self.order = self.sampler.evals_per_step
        self.init_noise_sigma = 1.0
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._grid = self._query_model_t = None
        self._begin_index = None
        self._reset_run()

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``, reading the schedule the replaced scheduler really used.

        A diffusers config lists the keys its class left at their defaults in ``_use_default_values``,
        and diffusers' ``from_config`` skips them, so the new class's defaults would silently replace
        the old class's (``HeunDiscreteScheduler()``'s β 0.00085–0.012 would become 1e-4–0.02): here
        every value is taken as written. Naming a ``sampler`` drops the sampler
        options the config carries from an earlier sampler (``from_config(rev.config, sampler="pc")``
        does not inherit ``order``). A flow-matching config is refused (not supported yet)."""
        if config is not None:
            config = dict(config)
            check_not_flow({**config, **kwargs})
            config.pop("_use_default_values", None)  # the values as written (for our own config, the same)
            if "sampler" in kwargs:
                config = {k: v for k, v in config.items() if k not in SAMPLER_OPTIONS or k in kwargs}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # --- the schedule ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _model_time_to_t(self, timesteps) -> torch.Tensor:
        n = self.config.num_train_timesteps - 1
        t = torch.as_tensor(timesteps).to(torch.float64) / n
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"timesteps must lie in [0, {n}] (the training table's indices)")
        return t

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None):
        """Evaluation times of ``num_inference_steps`` steps, or of custom decreasing ``timesteps`` in
        model units (then the grid ends at the table's first point; with ``final_sigmas_type="zero"``
        they may end at index 0 itself, whose x̂₀ is then the result)."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("give exactly one of num_inference_steps or timesteps")
        zero = self.config.final_sigmas_type == "zero"
        if timesteps is not None:
            ts = torch.as_tensor(timesteps).flatten().to(torch.float64)
            self._model_time_to_t(ts)
            lowest = 0 if zero else 1e-12
            if ts.numel() < 1 or not bool((ts[1:] < ts[:-1]).all()) or float(ts[-1]) < lowest:
                raise ValueError("custom timesteps must be strictly decreasing and above 0 (0, the table's first "
                                 "point, is where the grid ends; it may be the last timestep with "
                                 "final_sigmas_type='zero')")
            grid = self._discrete_grid(ts)
        elif self.config.grid == "discrete":
            ts = discrete_timesteps(self.config.num_train_timesteps, num_inference_steps,
                                    self.config.timestep_spacing, self.config.steps_offset, allow_zero=zero)
            grid = self._discrete_grid(torch.from_numpy(ts).double())
        else:
            grid = grids_mod.get(self.config.grid)(self.sde, num_inference_steps)
        steps = grid.shape[0] - 1
        query_t = self.sampler.query_times(grid)
        if self.config.final_sigmas_type == "zero":  # the last step: its first evaluation, then x̂₀
            query_t = query_t[: (steps - 1) * self.order + 1]
        model_t = self.sde.model_time(query_t)
        integral = bool(((model_t - model_t.round()).abs() < 1e-6).all())  # i/(N−1)·(N−1) is off by an ulp
        if integral:
            model_t = model_t.round()
        self._grid, self._query_model_t = grid, model_t
        self.timesteps = model_t.to(device=device, dtype=torch.int64 if integral else torch.float32)
        self.num_inference_steps = steps
        self._begin_index = None
        self._reset_run()

    def _discrete_grid(self, ts: torch.Tensor) -> torch.Tensor:
        """The times of timesteps ``ts``, then where the last step ends: the table's first point, or one
        index below it where the last timestep is index 0 itself (final σ = 0: the run ends with that
        evaluation's x̂₀ and never goes there; the sampler's plan there extrapolates λ)."""
        end = -1.0 if float(ts[-1]) == 0 else 0.0
        return torch.cat([ts, ts.new_tensor([end])]) / (self.config.num_train_timesteps - 1)

    # --- diffusers conventions ------------------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next evaluation (``None`` before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start the next run at ``timesteps[begin_index]`` (img2img); it must open a step."""
        self._begin_index = int(begin_index)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity: the state is the VP variable the network was trained on."""
        return sample

    def _coefficients(self, timesteps, like: torch.Tensor):
        t = self._model_time_to_t(timesteps).to(like.device)
        shape = (-1,) + (1,) * (like.ndim - 1)
        alpha = self.sde.alpha(t).reshape(shape).to(like.dtype)
        sigma = self.sde.sigma(t).reshape(shape).to(like.dtype)
        return alpha, sigma

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The forward marginal ``α x₀ + σ ε`` at ``timesteps`` (model units, scalar or per sample)."""
        alpha, sigma = self._coefficients(timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The v-prediction target ``α ε − σ x₀``."""
        alpha, sigma = self._coefficients(timesteps, sample)
        return alpha * noise - sigma * sample

    # --- stepping -------------------------------------------------------------------------------
    def _reset_run(self):
        self._run = self._query = self._returned = self._noise = None
        self._step_index = None
        self._done = self._mirrored = False
        #: network evaluations answered in the current run
        self.nfe = 0

    def _start(self, sample: torch.Tensor, timestep, generator):
        per_query = self.order
        if self._begin_index is not None:
            index = self._begin_index
        else:
            matches = torch.nonzero(torch.isclose(self._query_model_t, torch.as_tensor(float(timestep),
                                                                                       dtype=torch.float64),
                                                  rtol=1e-6, atol=1e-4)).flatten()
            index = int(matches[0]) if matches.numel() else 0
        if index % per_query or index >= self._query_model_t.shape[0]:
            raise ValueError(f"a run must begin at the first evaluation of a step: index {index} of "
                             f"{self._query_model_t.shape[0]} timesteps, {per_query} per step")
        first_step = index // per_query
        batch, device = sample.shape[0], sample.device
        dtype = _state_dtype(sample.dtype, None, None)
        grid = self._grid[first_step:, None].expand(-1, batch).to(device).contiguous()
        if generator is None:
            generator = generators_from_seed(int(torch.randint(2**31, ())), batch, device)
        elif not isinstance(generator, torch.Generator) and len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} for a batch of {batch}: give one per sample")
        if self.config.noise == "gaussian":
            self._noise = GaussianNoise(tuple(sample.shape), generator, dtype=dtype, device=device)
        else:
            entropy = draw_entropy(generator, batch)
            self._noise = BrownianNoise(tuple(sample.shape), float(grid.min()), float(grid.max()),
                                        entropy[0] if isinstance(generator, torch.Generator) else entropy,
                                        dtype=dtype, device=device)
        self._kind = PREDICTION_TYPES[self.config.prediction_type]
        self._step_index = index
        self._grid_sde = GridCoefficients(self.sde, grid)  # as revsde.sample: once per grid, on device
        self._guard = FiniteGuard(self.sampler, device)
        self._run = self.sampler.run(self._grid_sde, grid, sample.to(dtype), None, self._noise)
        self._query = next(self._run)

    def _advance(self, pred: Prediction) -> torch.Tensor:
        """Answer the pending query; run the sampler to its next query (or its end)."""
        try:
            request = self._run.send(pred)
            while isinstance(request, Step):
                self._guard(self._first_half(request) if self._mirrored else request, self.nfe)
                request = self._run.send(None)
        except StopIteration as stop:
            self._finish()
            return stop.value
        if not isinstance(request, Query):
            raise TypeError(f"sampler {self.sampler.name!r} yielded {type(request).__name__}; expected Query or Step")
        self._query = request
        return request.x

    def _mirrors_first_half(self, sample: torch.Tensor) -> bool:
        """Whether ``sample`` is the returned prev_sample with its second half overwritten by its first:
        DiT's guidance loop steps both halves of a doubled batch and keeps only the first."""
        half, odd = divmod(sample.shape[0], 2)
        if odd or sample.shape != self._returned.shape or not self.sampler.batch_independent:
            return False
        return torch.equal(sample[:half], self._returned[:half]) and torch.equal(sample[half:], sample[:half])

    @staticmethod
    def _first_half(step: Step) -> Step:
        half = step.x.shape[0] // 2
        return Step(step.i, step.x[:half], step.t[:half], nfe=step.nfe)

    @staticmethod
    def _mirror(v: torch.Tensor) -> torch.Tensor:
        half = v.shape[0] // 2
        return torch.cat([v[:half], v[:half]])

    def _finish(self):
        if self._run is not None:
            self._run.close()
        self._done = True
        self._guard.flush()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, **kwargs):
        """Answer one network evaluation: ``model_output`` at (``sample``, ``timestep``). Returns the
        state to evaluate next (``prev_sample``), or the result after the last entry of ``timesteps``.
        The state is kept in float32 (float64 if ``sample`` is) whatever the output's precision;
        ``prev_sample`` has ``sample``'s dtype. Extra keyword arguments (``eta``, …) are ignored.

        The sample must be the ``prev_sample`` returned before (the samplers keep their own state), with
        one exception: a doubled batch whose second half was overwritten by its first (DiT's guidance
        loop). Its first half is then the run; every later ``prev_sample`` repeats it in both halves."""
        if self._grid is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self._done:
            raise ValueError("this run has ended (all timesteps were stepped); call set_timesteps() to start another")
        if self._run is None:
            self._start(sample, timestep, generator)
        elif sample is not self._returned and not torch.equal(sample, self._returned):
            if not self._mirrors_first_half(sample):
                raise ValueError("step() got a sample that differs from the prev_sample it returned: RevSDEScheduler's "
                                 "samplers keep their own state (multistep history, Runge–Kutta stages), so the "
                                 "latents may not be edited between steps (as 4-channel inpainting does); use a "
                                 "9-channel inpainting model, or set_timesteps() to start a new run")
            self._mirrored = True
        query = self._query
        expected = float(self._query_model_t[self._step_index])
        on_host = not torch.is_tensor(timestep) or timestep.device.type == "cpu"  # reading it costs no sync
        if on_host and abs(float(timestep) - expected) > 1e-4 + 1e-6 * abs(expected):
            raise ValueError(f"step() got timestep {float(timestep):g} where the sampler evaluates at {expected:g} "
                             f"(entry {self._step_index} of scheduler.timesteps): step through scheduler.timesteps "
                             "in order, after set_timesteps()")
        if generator is not None and isinstance(self._noise, GaussianNoise):
            if not isinstance(generator, torch.Generator) and len(generator) != sample.shape[0]:
                raise ValueError(f"generator is a list of {len(generator)} for a batch of {sample.shape[0]}: "
                                 "give one per sample")
            self._noise.generator = generator
        model_output = prediction_channels(model_output, query.x.shape[1], self.config.variance_type)
        if model_output.shape != query.x.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)}, the sample {tuple(query.x.shape)}")
        pred = Prediction(self._kind, model_output.to(query.x.dtype), query.x, query.t, self._grid_sde)
        if self.config.thresholding:
            x0 = dynamic_threshold(pred.data, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
            pred = Prediction("data", x0, query.x, query.t, self._grid_sde)
        self.nfe += 1
        last = self._step_index == self._query_model_t.shape[0] - 1
        self._step_index += 1
        if last and self.config.final_sigmas_type == "zero":
            x = pred.data
            self._finish()
        else:
            x = self._advance(pred)
        denoised = pred.data
        if self._mirrored:
            x, denoised = self._mirror(x), self._mirror(denoised)
        if self._done and not bool(torch.isfinite(x).all()):
            check_finite(self.sampler, Step(self.num_inference_steps - 1, x, query.t), self.nfe)
        prev_sample = x.to(sample.dtype)
        self._returned = prev_sample
        denoised = denoised.to(sample.dtype)
        if not return_dict:
            return prev_sample, denoised
        return RevSDESchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)


@dataclass
class GraphedUNetOutput(BaseOutput):
    """What a UNet's forward returns after ``graph_unet`` (``.sample`` and ``[0]`` as diffusers' own)."""

    sample: torch.Tensor


def graph_unet(unet, **options):
    """Replay a diffusers UNet's forward from CUDA graphs (``revsde.kernels.GraphedModel``), in place.

    The pipeline keeps calling ``unet(sample, t, encoder_hidden_states=…, …)``: tensors with the
    batch (the text embeddings, both guidance branches at once) go into the graph's static buffers,
    a scalar ``t`` is broadcast to the batch, and other keyword values (``None``, flags) key the graph.
    Off CUDA every call is the UNet's own forward. ``unet.revsde_graphed`` is the ``GraphedModel``
    (its ``captures``, ``replays``). Returns ``unet``.
    """
    from ..kernels.graphs import GraphedModel

    if hasattr(unet, "revsde_graphed"):
        return unet
    original = unet.forward
    graphed = GraphedModel(lambda x, t, **kw: original(x, t, return_dict=False, **kw)[0], **options)

    def forward(sample, timestep, *args, return_dict: bool = True, **kwargs):
        if args:  # UNet2DConditionModel's third positional argument
            if len(args) > 1 or "encoder_hidden_states" in kwargs:
                raise TypeError("a graphed UNet takes sample, timestep and encoder_hidden_states positionally; "
                                "pass the rest as keywords")
            kwargs["encoder_hidden_states"] = args[0]
        out = graphed(sample, timestep, **kwargs)
        return GraphedUNetOutput(sample=out) if return_dict else (out,)

    unet.forward = forward
    unet.revsde_graphed = graphed
    return unet
