"""What ``RevSDEScheduler`` reads from a flow-matching scheduler config: the rectified-flow times
(diffusers' sigmas) of each family of diffusers schedulers, and the timesteps its network sees.

On rectified flow ``x_t = (1 − t) x₀ + t ε`` diffusers' flow σ *is* the time t, so a schedule is
the list of σ at which the network is evaluated, then the end of the last step (t = 0, the data).
Three families make those σ differently, and ``flow_schedule`` names which one a config follows:

- ``"flow_match"``: ``FlowMatchEulerDiscreteScheduler`` (SD3, Flux, …), ``FlowMatchHeunDiscreteScheduler``
  and ``FlowMatchLCMScheduler``: ``num_inference_steps`` points from σ = 1 down to the shifted
  ``1/num_train_timesteps``, shifted (again) by ``shift`` — or by Flux's ``time_shift`` with the
  pipeline's ``mu`` under ``use_dynamic_shifting`` — stretched to end at ``shift_terminal``, and
  optionally respaced (``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``).
  ``invert_sigmas`` (Mochi) feeds the network 1 − σ and flips the sign of its output. Timesteps
  are the float ``σ · num_train_timesteps``.
- ``"dpm_solver"``: ``DPMSolverMultistepScheduler``, ``DPMSolverSinglestepScheduler``,
  ``DEISMultistepScheduler`` and ``SASolverScheduler`` with ``use_flow_sigmas=True`` (Sana):
  ``1 − linspace(1, 1/N, n + 1)`` reversed, shifted by ``flow_shift`` (``e^mu`` when a pipeline
  passes ``mu``), without its final 0.
- ``"unipc"``: ``UniPCMultistepScheduler`` with ``use_flow_sigmas=True`` (Wan): ``linspace(1, 1/N, n + 1)``
  without its last point, shifted by ``flow_shift`` (or ``time_shift`` with ``mu``), stretched to
  ``shift_terminal``, the first point moved 1e-6 below 1; ``use_karras_sigmas`` maps the DDPM
  table's Karras σ to ``σ/(1 + σ)``.

In the last two the network sees integer timesteps ``int(σ · N)`` (diffusers truncates them) while
the solver steps on the exact σ; ``FlowSchedule.model_time`` gives the same values at every time a
sampler evaluates. Every grid ends at t = 0 (diffusers' ``final_sigmas_type`` end values other
than 0 are properties of its own solvers): with ``final_sigmas_type="zero"`` the last step is x̂₀
of its first evaluation, as every diffusers flow scheduler's last step.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import grids as grids_mod
from ..sde.flow import RectifiedFlow

FLOW_SCHEDULES = ("flow_match", "dpm_solver", "unipc")
#: keys only the FlowMatch schedulers have
FLOW_MATCH_KEYS = ("shift", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "invert_sigmas",
                   "stochastic_sampling")
#: the FlowMatch classes whose sigmas "flow_match" reproduces (other flow classes are refused)
FLOW_MATCH_CLASSES = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler")
#: the keys of a DDPM-style (VP) training table
BETA_KEYS = ("beta_start", "beta_end", "beta_schedule", "trained_betas")
FLOW_PREDICTION_TYPES = {"flow_prediction": "flow", "epsilon": "noise", "sample": "data"}
SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def config_schedule(config: dict, known_keys) -> str | None:
    """The ``flow_schedule`` a diffusers scheduler config follows (``None``: a DDPM-style table).

    A config that is neither — no training table (``beta_*``, ``trained_betas``) and no flow keys,
    such as EDM's or score_sde's VE σ — is refused, as is a flow config whose sigmas no family here
    reproduces."""
    name = config.get("_class_name") or ""
    shown = name or "the config"
    if "Flow" in name and name not in FLOW_MATCH_CLASSES:
        raise ValueError(f"{name} is a flow scheduler whose sigmas RevSDEScheduler does not reproduce; it reads "
                         f"{', '.join(FLOW_MATCH_CLASSES)} configs and DPM-Solver / DEIS / SA-Solver / UniPC configs "
                         "with use_flow_sigmas=True. Keep the pipeline's scheduler")
    if name in FLOW_MATCH_CLASSES or any(key in config for key in FLOW_MATCH_KEYS):
        return "flow_match"
    if config.get("use_flow_sigmas"):
        for key in ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas") + (
                () if _is_unipc(config) else ("use_karras_sigmas",)):
            if config.get(key):
                raise ValueError(f"{shown} sets use_flow_sigmas=True and {key}=True: diffusers then steps on σ that "
                                 "are not flow times, a schedule RevSDEScheduler does not reproduce")
        return "unipc" if _is_unipc(config) else "dpm_solver"
    if config.get("prediction_type") == "flow_prediction":
        raise ValueError(f"{shown} has prediction_type='flow_prediction' without use_flow_sigmas=True: a flow "
                         "network on a DDPM (VP) table is not a process RevSDEScheduler samples")
    if not any(key in config for key in BETA_KEYS):
        foreign = sorted(k for k in config if not k.startswith("_") and k not in known_keys)
        if foreign or (name and name != "RevSDEScheduler"):
            said = f" (keys {', '.join(foreign)})" if foreign else ""
            raise ValueError(f"{shown}{said} is neither a DDPM-style training table (beta_start, beta_end, "
                             "beta_schedule or trained_betas) nor a flow-matching schedule (FlowMatch*, or "
                             "use_flow_sigmas=True): RevSDEScheduler cannot tell which process its network was "
                             "trained on. Keep the pipeline's scheduler")
    return None


def _is_unipc(config: dict) -> bool:
    name = config.get("_class_name") or ""
    return name.startswith("UniPC") or (not name and "predict_x0" in config)


class FlowSchedule:
    """Rectified-flow times for one family's sigmas (``RectifiedFlow`` with ``time_scale`` = N).

    The keys are the replaced config's, validated here before any work; ``vp_sigmas`` (the DDPM
    table's σ/α, increasing) is needed only by UniPC's Karras σ."""

    def __init__(self, family: str, num_train_timesteps: int, *, shift: float = 1.0,
                 use_dynamic_shifting: bool = False, time_shift_type: str = "exponential",
                 shift_terminal: float | None = None, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False, invert_sigmas: bool = False,
                 flow_shift: float = 1.0, vp_sigmas: torch.Tensor | None = None):
        flags = dict(use_dynamic_shifting=use_dynamic_shifting, use_karras_sigmas=use_karras_sigmas,
                     use_exponential_sigmas=use_exponential_sigmas, use_beta_sigmas=use_beta_sigmas,
                     invert_sigmas=invert_sigmas)
        _check_keys(family, shift, flow_shift, flags, time_shift_type, shift_terminal)
        self.family, self.num_train_timesteps = family, int(num_train_timesteps)
        self.shift, self.flow_shift, self.use_dynamic_shifting = float(shift), float(flow_shift), use_dynamic_shifting
        self.time_shift_type, self.shift_terminal, self.invert_sigmas = time_shift_type, shift_terminal, invert_sigmas
        self.spacing = next((k for k in SPACINGS if flags[k]), None)
        self.vp_sigmas = vp_sigmas
        self.sde = RectifiedFlow(time_scale=self.num_train_timesteps)
        #: the network's timesteps are integers (diffusers' multistep solvers truncate σ · N)
        self.integer_timesteps = family != "flow_match"
        if family == "flow_match":  # FlowMatch's σ range, from its float32 table of N shifted points
            table = torch.from_numpy(np.linspace(1, self.num_train_timesteps, self.num_train_timesteps,
                                                 dtype=np.float32)[::-1].copy()) / self.num_train_timesteps
            if not use_dynamic_shifting:
                table = self.shift * table / (1 + (self.shift - 1) * table)
            self._sigma_max, self._sigma_min = table[0].item(), table[-1].item()

    # --- the grid -------------------------------------------------------------------------------
    def grid(self, steps: int | None = None, *, sigmas=None, mu: float | None = None, timesteps=None) -> torch.Tensor:
        """The float64 times of ``steps`` evaluations (diffusers' sigmas for the config), then 0.

        ``sigmas``: custom σ before the config's shift (as Flux passes them); ``timesteps``: custom
        timesteps in model units, evaluated as given (σ = timesteps / N, not shifted: diffusers
        shifts its sigmas but evaluates the network at the unshifted timesteps, and warns);
        ``mu``: the dynamic shift (required with ``use_dynamic_shifting``, else ignored)."""
        n = self._check_steps(steps, sigmas, timesteps)
        if self.use_dynamic_shifting and mu is None and not (self.family == "dpm_solver" or timesteps is not None):
            raise ValueError("use_dynamic_shifting=True: pass the pipeline's mu to set_timesteps "
                             "(revsde.grids.flux_mu(image_seq_len, ...) computes Flux's)")
        if timesteps is not None:
            ts = np.asarray(timesteps, dtype=np.float32).reshape(-1)
            t = torch.from_numpy(ts / np.float32(self.num_train_timesteps)).double()
            if self.invert_sigmas:
                t = 1 - t
        elif self.family == "flow_match":
            t = self._flow_match(n, sigmas, mu)
        elif self.family == "dpm_solver":
            t = self._dpm_solver(n, sigmas, mu)
        else:
            t = self._unipc(n, sigmas, mu)
        if t.ndim != 1 or not bool(((t > 0) & (t <= 1)).all()) or not bool((t[1:] < t[:-1]).all()):
            raise ValueError(f"the flow times {t.tolist()[:8]}… are not strictly decreasing in (0, 1]: check the "
                             "custom sigmas / timesteps, or use fewer steps")
        return torch.cat([t, t.new_zeros(1)])

    def _check_steps(self, steps, sigmas, timesteps) -> int:
        if sigmas is not None and timesteps is not None:
            raise ValueError("pass sigmas or timesteps, not both: RevSDEScheduler evaluates the network at "
                             "timesteps = σ · num_train_timesteps")
        given = sigmas if sigmas is not None else timesteps
        if given is not None:
            count = int(np.asarray(given).size)
            if steps is not None and steps != count:
                raise ValueError(f"num_inference_steps ({steps}) must equal the number of custom sigmas / timesteps "
                                 f"({count}), or be left out")
            steps = count
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1 (got {steps!r})")
        return int(steps)

    def _shifted(self, sigmas: np.ndarray, mu: float | None, static: float) -> np.ndarray:
        if self.use_dynamic_shifting and mu is not None:
            return grids_mod.time_shift(sigmas, mu, self.time_shift_type)
        return grids_mod.static_shift(sigmas, static)

    def _stretched(self, sigmas: np.ndarray) -> np.ndarray:
        """LTX-Video's stretch so that the last σ is ``shift_terminal`` (diffusers' ``stretch_shift_to_terminal``)."""
        if not self.shift_terminal:
            return sigmas
        one_minus = 1 - sigmas
        return 1 - one_minus / (one_minus[-1] / (1 - self.shift_terminal))

    def _flow_match(self, n: int, sigmas, mu) -> torch.Tensor:
        """``FlowMatchEulerDiscreteScheduler.set_timesteps`` step by step (float64, then float32 σ)."""
        N = self.num_train_timesteps
        if sigmas is None:
            sigmas = np.linspace(self._sigma_max * N, self._sigma_min * N, n) / N
        else:
            sigmas = np.array(sigmas).astype(np.float32)
        sigmas = self._stretched(self._shifted(sigmas, mu, self.shift))
        if self.spacing is not None:
            sigmas = _respaced(self.spacing, sigmas[0].item(), sigmas[-1].item(), n)
        return torch.from_numpy(np.asarray(sigmas)).to(torch.float32).double()

    def _dpm_solver(self, n: int, sigmas, mu) -> torch.Tensor:
        """``DPMSolverMultistepScheduler.set_timesteps`` with ``use_flow_sigmas`` (and DEIS, SA-Solver, singlestep)."""
        shift = math.exp(mu) if (self.use_dynamic_shifting and mu is not None) else self.flow_shift
        if sigmas is None:
            sigmas = 1.0 - np.linspace(1, 1 / self.num_train_timesteps, n + 1)
            return torch.from_numpy(np.flip(grids_mod.static_shift(sigmas, shift))[:-1].copy())
        return torch.from_numpy(grids_mod.static_shift(np.asarray(sigmas, dtype=np.float64), shift))

    def _unipc(self, n: int, sigmas, mu) -> torch.Tensor:
        """``UniPCMultistepScheduler.set_timesteps`` with ``use_flow_sigmas``."""
        if self.spacing == "use_karras_sigmas":  # the DDPM table's Karras σ (σ/α), as flow times
            if sigmas is not None:
                raise ValueError("custom sigmas with use_karras_sigmas=True: the Karras σ span the DDPM table")
            ve = np.flip(self.vp_sigmas.numpy())
            ve = _respaced(self.spacing, ve[0].item(), ve[-1].item(), n)
            return torch.from_numpy(ve / (ve + 1))
        if sigmas is None:
            sigmas = np.linspace(1, 1 / self.num_train_timesteps, n + 1)[:-1]
        sigmas = self._stretched(self._shifted(np.asarray(sigmas, dtype=np.float64), mu, self.flow_shift))
        if abs(sigmas[0] - 1) < 1e-6:  # diffusers keeps log α finite at the first step
            sigmas = sigmas.copy()
            sigmas[0] -= 1e-6
        return torch.from_numpy(np.asarray(sigmas, dtype=np.float64))

    # --- times the network sees -----------------------------------------------------------------
    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps of times ``t``: float32 ``σ · N`` (``(1 − σ) · N`` with ``invert_sigmas``), or
        ``int(σ · N)`` for the multistep families, as diffusers computes them."""
        N = self.num_train_timesteps
        if self.integer_timesteps:
            return (t.double() * N).to(torch.int64)
        sigma = t.to(torch.float32)
        return ((1.0 - sigma) if self.invert_sigmas else sigma) * N

    def time(self, timesteps) -> torch.Tensor:
        """The flow time t of timesteps in model units (float64), the inverse of ``model_time``."""
        t = torch.as_tensor(timesteps).to(torch.float64) / self.num_train_timesteps
        return 1 - t if self.invert_sigmas else t

    def sigmas(self, grid: torch.Tensor) -> torch.Tensor:
        """diffusers' ``sigmas`` for a grid: its float32 σ, ending at 0 (1 − σ, ending at 1, when inverted)."""
        sigma = grid.to(torch.float32)
        return 1.0 - sigma if self.invert_sigmas else sigma

    def prediction_sign(self) -> float:
        """−1 where ``invert_sigmas`` runs the network's time backwards (its output is −flow)."""
        return -1.0 if self.invert_sigmas else 1.0


_FAMILY_CLASSES = {"flow_match": "FlowMatch schedulers", "dpm_solver": "DPM-Solver / DEIS / SA-Solver",
                   "unipc": "UniPC"}


def _check_keys(family: str, shift, flow_shift, flags: dict, time_shift_type, shift_terminal) -> None:
    """Validate a flow schedule's keys before any work; a key of another family is refused, not ignored."""
    if family not in FLOW_SCHEDULES:
        raise ValueError(f"flow_schedule must be None or one of {', '.join(FLOW_SCHEDULES)} (got {family!r})")
    for key, value in (("shift", shift), ("flow_shift", flow_shift)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive number (got {value!r})")
    for key, value in flags.items():
        if value not in (False, True):
            raise ValueError(f"{key} must be True or False (got {value!r})")
    if sum(flags[k] for k in SPACINGS) > 1:
        raise ValueError("give at most one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")
    if time_shift_type not in grids_mod.TIME_SHIFT_TYPES:
        raise ValueError(f"time_shift_type must be one of {', '.join(grids_mod.TIME_SHIFT_TYPES)} "
                         f"(got {time_shift_type!r})")
    number = isinstance(shift_terminal, (int, float)) and not isinstance(shift_terminal, bool)
    if shift_terminal is not None and not (number and 0 < shift_terminal < 1):
        raise ValueError(f"shift_terminal must be None or a number in (0, 1) (got {shift_terminal!r})")
    foreign = {"flow_match": ("flow_shift",),
               "dpm_solver": ("shift", "shift_terminal", "invert_sigmas") + SPACINGS,
               "unipc": ("shift", "invert_sigmas", "use_exponential_sigmas", "use_beta_sigmas")}[family]
    given = dict(flags, shift=shift != 1, flow_shift=flow_shift != 1, shift_terminal=shift_terminal is not None)
    wrong = [key for key in foreign if given[key]]
    if wrong:
        raise ValueError(f"flow_schedule={family!r} has no {', '.join(wrong)} (diffusers' {_FAMILY_CLASSES[family]} "
                         "ignore or lack it); leave it at its default")
    if family == "dpm_solver" and flags["use_dynamic_shifting"] and time_shift_type != "exponential":
        raise ValueError("flow_schedule='dpm_solver' shifts dynamically by e^mu only: time_shift_type must be "
                         "'exponential'")


def _respaced(spacing: str, sigma_max: float, sigma_min: float, n: int) -> np.ndarray:
    """diffusers' ``_convert_to_karras`` (ρ = 7), ``_convert_to_exponential`` and ``_convert_to_beta``
    (α = β = 0.6) between the schedule's ends."""
    if spacing == "use_karras_sigmas":
        rho = 7.0
        ramp = np.linspace(0, 1, n)
        max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        return (max_inv + ramp * (min_inv - max_inv)) ** rho
    if spacing == "use_exponential_sigmas":
        return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))
    import scipy.stats

    ppf = [scipy.stats.beta.ppf(q, 0.6, 0.6) for q in 1 - np.linspace(0, 1, n)]
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in ppf])
