"""``RevSDEScheduler``: any revsde sampler as a diffusers scheduler (DESIGN §6).

    pipe.scheduler = RevSDEScheduler.from_config(pipe.scheduler.config, sampler="mrs", order=2)

The scheduler builds the discrete VP SDE of the training schedule in the config it replaces
(``DiscreteVPSDE.from_schedule``: DDPM index = the model's time), or for a flow-matching config
(FlowMatch*, or DPM-Solver / UniPC / DEIS with ``use_flow_sigmas``) ``RectifiedFlow`` on diffusers'
sigmas for that config, and each ``step()`` answers one ``Query`` of the same sampler generator that
``revsde.sample`` drives: one implementation of the maths. ``timesteps`` are the sampler's
evaluation times in model units, repeated where a step evaluates more than once (``order`` =
evaluations per step, as diffusers' Heun). The config keys it reads and what they mean are in
``scheduler_config`` (DDPM-style tables) and ``flow_schedule`` (flow matching); a config that is
neither is refused. A run between ``set_timesteps`` and its last ``step()`` (the sampler's ``Driver``,
its noise, DiT's mirrored batches) is a ``scheduler_run.SchedulerRun``.

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
from ..noise import NOISES
from ..sde.vp import DiscreteVPSDE
from .graphed_unet import GraphedUNetOutput, graph_unet  # noqa: F401  (their home before issue 22)
from .flow_schedule import (FLOW_MATCH_CLASSES, FLOW_PREDICTION_TYPES, FLOW_SCHEDULES, FlowSchedule,
                            config_schedule)
from .scheduler_config import (FINAL_SIGMAS_TYPES, LEARNED_VARIANCE_TYPES, PREDICTION_TYPES,  # noqa: F401
                               SAMPLER_OPTIONS, TIMESTEP_SPACINGS, VPSchedule, check_output_keys, discrete_timesteps,
                               dynamic_threshold, prediction_channels)
from .scheduler_run import SchedulerRun


@dataclass
class RevSDESchedulerOutput(BaseOutput):
    """``prev_sample``: the state to evaluate next (or the result); ``pred_original_sample``: x̂₀ of
    this evaluation."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class RevSDEScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a revsde sampler on the config's discrete VP SDE or rectified flow.

    ``sampler``: a registry name with query times known in advance (all but ``ode_rk45`` and
    ``torchsde``); its options as values (``order``, ``prediction``, ``stochastic``, ``corrector``,
    ``snr``, …; ``None`` keeps the sampler's default). ``grid``: ``"discrete"`` (diffusers'
    DPMSolverMultistep/UniPC integer timesteps for ``timestep_spacing``, then the table's first
    point; for a flow schedule, diffusers' sigmas for the config) or a continuous grid of
    ``revsde.grids`` (``logsnr``, ``karras``, ``uniform_t``, ``quadratic``) over the whole table
    (DDPM-style tables only). ``final_sigmas_type``: ``"zero"`` — the last step goes to
    σ = 0, i.e. returns x̂₀ of its first evaluation, as diffusers' solvers do — or ``"sigma_min"``
    (the sampler's own last step, to the table's first point; for a flow schedule, to t = 0). With as
    many steps as training steps the discrete timesteps are every index, down to 0, whose x̂₀ is then
    the result (``"zero"`` only).
    ``noise``: ``"gaussian"`` or ``"brownian"`` (a fixed Brownian path, the same at every step count),
    drawn from the ``generator`` passed to ``step`` (one, or a list with one per sample), else from a
    seed drawn from torch's global generator. The rest are keys of the config it replaces: the
    training schedule (``rescale_betas_zero_snr``: sampling starts at diffusers' finite stand-in
    ᾱ = 2⁻²⁴), ``prediction_type`` (epsilon, sample or v_prediction; flow_prediction, epsilon or
    sample for a flow schedule), ``variance_type`` (``learned`` /
    ``learned_range``: the output's second half of channels, a variance, is dropped; DDPM's ``fixed_*``
    and ``None``: the output is the prediction alone), and ``thresholding`` (Imagen's dynamic
    thresholding of every x̂₀ at ``dynamic_thresholding_ratio``, ``sample_max_value``; the sampler then
    uses the thresholded x̂₀ and the noise it implies, as DPMSolverMultistep does).

    ``flow_schedule`` (``None``: the DDPM table of ``beta_*``) names the flow-matching family whose
    sigmas the keyword-only keys after it describe (``"flow_match"``: ``shift``,
    ``use_dynamic_shifting`` with the pipeline's ``mu``, ``time_shift_type``, ``shift_terminal``,
    ``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas``, ``invert_sigmas``;
    ``"dpm_solver"`` and ``"unipc"``: ``flow_shift``, …; see ``flow_schedule``): the SDE is then
    ``RectifiedFlow`` and ``from_config`` fills it in from a FlowMatch config or a
    ``use_flow_sigmas=True`` one. In a DDPM-style config ``use_karras_sigmas`` and its kin, the
    replaced scheduler's grid choice, are ignored (``grid`` chooses) and ``flow_shift`` is unused, as
    there in diffusers.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + list(FLOW_MATCH_CLASSES[:2])

    @register_to_config
    def __init__(self, sampler: str = "mrs", order: int | None = None, prediction: str | None = None,
                 stochastic: bool | None = None, lower_order_final: bool | None = None,
                 denoise_last: bool | None = None, warmup: str | None = None, second_order: str | None = None,
                 third_order: str | None = None, predictor: str | None = None, corrector: str | None = None,
                 snr: float | None = None, corrector_steps: int | None = None, langevin_norms: str | None = None,
                 denoise: bool | None = None, discretization: str | None = None, variance: str | None = None,
                 variant: str | None = None, eta: float | None = None, grid: str = "discrete",
                 final_sigmas_type: str = "zero", noise: str = "gaussian", num_train_timesteps: int = 1000,
                 beta_start: float = 0.0001, beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas=None, prediction_type: str = "epsilon", timestep_spacing: str = "linspace",
                 steps_offset: int = 0, rescale_betas_zero_snr: bool = False, variance_type: str | None = None,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 sample_max_value: float = 1.0, *, flow_schedule: str | None = None, shift: float = 1.0,
                 use_dynamic_shifting: bool = False, time_shift_type: str = "exponential",
                 shift_terminal: float | None = None, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False, invert_sigmas: bool = False,
                 flow_shift: float = 1.0):
        given = dict(order=order, prediction=prediction, stochastic=stochastic, lower_order_final=lower_order_final,
                     denoise_last=denoise_last, warmup=warmup, second_order=second_order, third_order=third_order,
                     predictor=predictor, corrector=corrector, snr=snr, corrector_steps=corrector_steps,
                     langevin_norms=langevin_norms, denoise=denoise, discretization=discretization, variance=variance,
                     variant=variant, eta=eta)
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
        flow = flow_schedule is not None
        predictions = FLOW_PREDICTION_TYPES if flow else PREDICTION_TYPES
        for key, value, valid in (("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES),
                                  ("noise", noise, NOISES), ("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS),
                                  ("prediction_type", prediction_type, tuple(predictions))):
            if value not in valid:
                hint = {("prediction_type", False): " for a DDPM-style table (flow_prediction needs a flow_schedule)",
                        ("prediction_type", True): " for a flow schedule (v_prediction is the VP velocity)"}
                raise ValueError(f"RevSDEScheduler supports {key} in {{{', '.join(valid)}}} (got {value!r})"
                                 + hint.get((key, flow), ""))
        check_output_keys(variance_type, thresholding, dynamic_thresholding_ratio, sample_max_value)
        table = None
        if not flow or (flow_schedule == "unipc" and use_karras_sigmas):
            table = DiscreteVPSDE.from_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule,
                                                trained_betas, rescale_betas_zero_snr)
        if flow:
            if grid != "discrete":
                raise ValueError(f"a flow schedule samples on diffusers' sigmas for its config (grid='discrete'; got "
                                 f"grid={grid!r}); pass custom sigmas to set_timesteps for another grid")
            ac = table.alphas_cumprod.float() if table is not None else None
            self._schedule = FlowSchedule(
                flow_schedule, num_train_timesteps, shift=shift, use_dynamic_shifting=use_dynamic_shifting,
                time_shift_type=time_shift_type, shift_terminal=shift_terminal, use_karras_sigmas=use_karras_sigmas,
                use_exponential_sigmas=use_exponential_sigmas, use_beta_sigmas=use_beta_sigmas,
                invert_sigmas=invert_sigmas, flow_shift=flow_shift,
                vp_sigmas=None if ac is None else ((1 - ac) / ac) ** 0.5)
            self.sde = self._schedule.sde
            self.alphas_cumprod = None
        else:
            flow_keys = dict(shift=shift != 1, use_dynamic_shifting=use_dynamic_shifting,
                             shift_terminal=shift_terminal is not None, invert_sigmas=invert_sigmas)
            wrong = [key for key, set_ in flow_keys.items() if set_]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: flow-matching keys, which need a flow_schedule (one of "
                                 f"{', '.join(FLOW_SCHEDULES)}; from_config of a flow scheduler's config sets it)")
            self.sde = table
            self.alphas_cumprod = self.sde.alphas_cumprod.float()
            self._schedule = VPSchedule(self.sde, num_train_timesteps, grid, timestep_spacing, steps_offset,
                                        final_sigmas_type == "zero")
        self._kind = predictions[prediction_type]
        # read once, not in every step()
        self._final_zero = final_sigmas_type == "zero"
        self._negate = flow and invert_sigmas
        self._learned_variance = variance_type in LEARNED_VARIANCE_TYPES
        #: timesteps per logical step (diffusers' meaning), not the solver's convergence order
        self.order = self.sampler.evals_per_step
        self.init_noise_sigma = 1.0
        self.timesteps: torch.Tensor | None = None
        #: flow schedules: diffusers' sigmas of the grid (one per step, then the end)
        self.sigmas: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._grid = self._query_t = self._query_model_t = self._query_model_list = None
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
        does not inherit ``order``). A flow-matching config gets its ``flow_schedule`` (and a FlowMatch
        config ``prediction_type="flow_prediction"``); a config that is neither DDPM-style nor flow
        is refused. The replaced scheduler's own sampler choices (``solver_order``, ``algorithm_type``,
        FlowMatch's ``stochastic_sampling``) are not carried over: the sampler is ``sampler``'s. Only
        ``stochastic_sampling=True`` with no sampler named is refused: its full re-noising of x̂₀ at
        every step (``x_next = (1 − σ_next) x̂₀ + σ_next z``) is no revsde sampler's, so name a
        stochastic one (``sampler="mrs", stochastic=True``, ``"euler_maruyama"``, …)."""
        if config is not None:
            config = dict(config)
            config.pop("_use_default_values", None)  # the values as written (for our own config, the same)
            merged = {**config, **kwargs}
            if "flow_schedule" not in merged:  # a diffusers scheduler's config: which process it samples
                family = config_schedule(merged, cls._get_init_keys(cls))
                if family is not None:
                    config["flow_schedule"] = family
                    if family == "flow_match":
                        config.setdefault("prediction_type", "flow_prediction")
                if merged.get("stochastic_sampling") and "sampler" not in merged:
                    raise ValueError("this FlowMatch config has stochastic_sampling=True, which re-noises x̂₀ "
                                     "fully at every step (x_next = (1 - sigma_next) x0 + sigma_next z), as no "
                                     "revsde sampler does: name a sampler (a stochastic one: sampler='mrs', "
                                     "stochastic=True, or 'euler_maruyama', 'ancestral', ...)")
            if "sampler" in kwargs:
                config = {k: v for k, v in config.items() if k not in SAMPLER_OPTIONS or k in kwargs}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # --- the schedule ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def flow(self) -> bool:
        """Whether the SDE is rectified flow (a ``flow_schedule``)."""
        return self.config.flow_schedule is not None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, *, sigmas=None,
                      mu: float | None = None):
        """Evaluation times of ``num_inference_steps`` steps, or of custom decreasing ``timesteps`` in
        model units (then the grid ends at the table's first point; with ``final_sigmas_type="zero"``
        they may end at index 0 itself, whose x̂₀ is then the result). A flow schedule also takes
        custom ``sigmas`` (shifted as the config says, as Flux passes them) and ``mu``, the dynamic
        shift (``use_dynamic_shifting``; ignored otherwise, as diffusers does)."""
        grid = self._schedule.grid(num_inference_steps, sigmas=sigmas, mu=mu, timesteps=timesteps)
        steps = grid.shape[0] - 1
        query_t = self.sampler.query_times(grid)
        if self.config.final_sigmas_type == "zero":  # the last step: its first evaluation, then x̂₀
            query_t = query_t[: (steps - 1) * self.order + 1]
        model_t = self._schedule.model_time(query_t)
        self._grid, self._query_t, self._query_model_t = grid, query_t, model_t.to(torch.float64)
        self._query_model_list = self._query_model_t.tolist()
        self.timesteps = model_t.to(device=device)
        self.sigmas = self._schedule.sigmas(grid) if self.flow else None
        self.num_inference_steps = steps
        self._begin_index = None
        self._reset_run()

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
        """Identity: the state is the variable the network was trained on."""
        return sample

    def _coefficients(self, timesteps, like: torch.Tensor):
        if self.flow:
            t = self._flow_times(timesteps, like.shape[0]).to(like.device)
        else:
            t = self._schedule.time(timesteps).to(like.device)
        shape = (-1,) + (1,) * (like.ndim - 1)
        alpha = self.sde.alpha(t).reshape(shape).to(like.dtype)
        sigma = self.sde.sigma(t).reshape(shape).to(like.dtype)
        return alpha, sigma

    def _flow_times(self, timesteps, batch: int) -> torch.Tensor:
        """The flow time of ``timesteps``, as diffusers' flow schedulers read it: the next evaluation's
        during a run (inpainting), ``timesteps[begin_index]`` before one (img2img), else each value's
        entry in ``timesteps`` (or ``timesteps / N`` where it has none)."""
        index = self._step_index if self._step_index is not None else self._begin_index
        if self._query_t is not None and index is not None and index < self._query_t.shape[0]:
            return self._query_t[index].expand(batch)
        values = torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu().expand(batch)
        t = self._schedule.time(values)
        if self._query_model_t is not None:
            match = torch.isclose(values[:, None], self._query_model_t[None], rtol=1e-6, atol=1e-4)
            found = match.any(dim=1)
            t = torch.where(found, self._query_t[match.to(torch.int8).argmax(dim=1)], t)
        return t

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The forward marginal ``α x₀ + σ ε`` at ``timesteps`` (model units, scalar or per sample; for a
        flow schedule read as ``scale_noise`` reads them)."""
        alpha, sigma = self._coefficients(timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """Flow matching's forward process ``σ noise + (1 − σ) sample`` (SD3 img2img and inpainting):
        σ of ``timesteps[begin_index]`` before a run, of the next evaluation during one."""
        if not self.flow:
            raise ValueError("scale_noise is flow matching's forward process; a DDPM-style table noises with "
                             "add_noise(original_samples, noise, timesteps)")
        return self.add_noise(sample, noise, timestep)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The v-prediction target ``α ε − σ x₀`` (DDPM-style tables)."""
        if self.flow:
            raise ValueError("get_velocity is the VP v-prediction target; a flow model's target is noise - sample")
        alpha, sigma = self._coefficients(timesteps, sample)
        return alpha * noise - sigma * sample

    # --- stepping -------------------------------------------------------------------------------
    def _reset_run(self):
        self._run: SchedulerRun | None = None
        self._step_index = None

    @property
    def nfe(self) -> int:
        """Network evaluations answered in the current run."""
        return 0 if self._run is None else self._run.driver.nfe

    @property
    def _done(self) -> bool:
        return self._run is not None and self._run.done

    @property
    def _query(self):
        return None if self._run is None else self._run.query

    def _start(self, sample: torch.Tensor, timestep, generator) -> SchedulerRun:
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
        self._step_index = index
        return SchedulerRun(self.sampler, self.sde, self._grid[index // per_query:], sample, generator,
                            self.config.noise)

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
        run = self._run
        if run is None:
            run = self._run = self._start(sample, timestep, generator)
        elif not run.accepts(sample):
            raise ValueError("step() got a sample that differs from the prev_sample it returned: RevSDEScheduler's "
                             "samplers keep their own state (multistep history, Runge–Kutta stages), so the "
                             "latents may not be edited between steps (as 4-channel inpainting does); use a "
                             "9-channel inpainting model, or set_timesteps() to start a new run")
        query = run.query
        expected = self._query_model_list[self._step_index]
        on_host = not torch.is_tensor(timestep) or timestep.device.type == "cpu"  # reading it costs no sync
        if on_host and abs(float(timestep) - expected) > 1e-4 + 1e-6 * abs(expected):
            raise ValueError(f"step() got timestep {float(timestep):g} where the sampler evaluates at {expected:g} "
                             f"(entry {self._step_index} of scheduler.timesteps): step through scheduler.timesteps "
                             "in order, after set_timesteps()")
        run.use_generator(generator, sample.shape[0])
        if self._learned_variance:
            model_output = prediction_channels(model_output, query.x.shape[1], self.config.variance_type)
        if model_output.shape != query.x.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)}, the sample {tuple(query.x.shape)}")
        value = model_output.to(query.x.dtype)
        if self._negate:  # invert_sigmas: the network's time runs backwards, its output is −flow
            value = -value
        pred = Prediction(self._kind, value, query.x, query.t, run.sde)
        if self.config.thresholding:
            x0 = dynamic_threshold(pred.data, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
            pred = Prediction("data", x0, query.x, query.t, run.sde)
        last = self._step_index == self._query_model_t.shape[0] - 1
        self._step_index += 1
        x, denoised = run.answer(pred, final=last and self._final_zero, last_step=self.num_inference_steps - 1)
        prev_sample = run.returned = x.to(sample.dtype)
        denoised = denoised.to(sample.dtype)
        if not return_dict:
            return prev_sample, denoised
        return RevSDESchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
