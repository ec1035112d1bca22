"""What ``RevSDEScheduler`` reads from a diffusers scheduler config, and what those keys mean.

The valid values of each key, the integer timesteps of ``timestep_spacing`` and the times of a
DDPM-style table (``VPSchedule``; flow-matching configs: ``flow_schedule``), and the two output
conventions a config can name: a learned variance stacked after the prediction (``variance_type``)
and Imagen's dynamic thresholding of x̂₀ (``thresholding``).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import grids as grids_mod

#: sampler options a config may carry (``None``: the sampler's default)
SAMPLER_OPTIONS = ("order", "prediction", "stochastic", "lower_order_final", "denoise_last", "warmup",
                   "second_order", "third_order", "predictor", "corrector", "snr", "corrector_steps",
                   "langevin_norms", "denoise", "discretization", "variance", "variant", "eta")
PREDICTION_TYPES = {"epsilon": "noise", "sample": "data", "v_prediction": "velocity"}
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
#: the network's output is the prediction alone (DDPM's fixed_* name its own noise, which samplers choose here)
FIXED_VARIANCE_TYPES = (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
#: the output holds 2C channels: the prediction, then a variance that no sampler here uses
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


def discrete_timesteps(num_train_timesteps: int, steps: int, spacing: str = "linspace", steps_offset: int = 0,
                       *, allow_zero: bool = False) -> np.ndarray:
    """The integer timesteps DPMSolverMultistep / UniPC use for ``timestep_spacing`` (decreasing).

    ``steps == num_train_timesteps`` gives every index once, ``N − 1 .. 0``, whatever the spacing (as
    DDPMScheduler; DPMSolverMultistep repeats one index under ``linspace`` and collapses under
    ``leading`` there). ``allow_zero``: the last timestep may be index 0, the table's first point (it
    is then the last evaluation and its x̂₀ the result: ``final_sigmas_type="zero"``); otherwise every
    timestep lies above 0, where the last step ends.
    """
    n_train = num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n_train:
        raise ValueError(f"num_inference_steps must be an integer in [1, {n_train}] for a schedule of "
                         f"{n_train} training steps (got {steps!r})")
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)} (got {spacing!r})")
    if steps == n_train:
        ts = np.arange(n_train - 1, -1, -1)
    elif spacing == "linspace":
        ts = np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = n_train // (steps + 1)
        ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1] + steps_offset
    else:
        ts = np.arange(n_train, 0, -n_train / steps).round() - 1
    ts = ts.astype(np.int64)
    lowest = 0 if allow_zero else 1
    if ts[-1] < lowest or not (np.diff(ts) < 0).all() or ts[0] > n_train - 1:
        hint = ("; with final_sigmas_type='sigma_min' the last step ends at index 0, so the timesteps must lie "
                "above it: use fewer steps or final_sigmas_type='zero'" if ts[-1] == 0 and not allow_zero
                else ": use fewer steps")
        raise ValueError(f"timestep_spacing={spacing!r} with {steps} steps gives timesteps {ts.tolist()[:8]}…, "
                         f"which are not distinct, decreasing and in [{lowest}, {n_train - 1}]{hint}")
    return ts


class VPSchedule:
    """The times of a DDPM-style config: the discrete VP SDE of its training table (DDPM index i is
    time ``i/(N − 1)``), ``timestep_spacing``'s integer timesteps or a continuous ``revsde.grids`` grid.

    ``final_zero``: the last timestep may be index 0 (``final_sigmas_type="zero"``)."""

    integer_timesteps = True

    def __init__(self, sde, num_train_timesteps: int, grid: str, timestep_spacing: str, steps_offset: int,
                 final_zero: bool):
        self.sde, self.num_train_timesteps, self.grid_name = sde, num_train_timesteps, grid
        self.timestep_spacing, self.steps_offset, self.final_zero = timestep_spacing, steps_offset, final_zero

    def grid(self, steps: int | None = None, *, sigmas=None, mu=None, timesteps=None) -> torch.Tensor:
        """Evaluation times of ``steps`` steps, or of custom decreasing ``timesteps`` in model units (then the
        grid ends at the table's first point; with ``final_zero`` they may end at index 0 itself)."""
        if sigmas is not None or mu is not None:
            raise ValueError("sigmas and mu apply to flow-matching schedules (flow_schedule); a DDPM-style table "
                             "takes num_inference_steps or timesteps")
        if (steps is None) == (timesteps is None):
            raise ValueError("give exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            ts = torch.as_tensor(timesteps).flatten().to(torch.float64)
            self.time(ts)
            lowest = 0 if self.final_zero else 1e-12
            if ts.numel() < 1 or not bool((ts[1:] < ts[:-1]).all()) or float(ts[-1]) < lowest:
                raise ValueError("custom timesteps must be strictly decreasing and above 0 (0, the table's first "
                                 "point, is where the grid ends; it may be the last timestep with "
                                 "final_sigmas_type='zero')")
            return self._discrete_grid(ts)
        if self.grid_name == "discrete":
            ts = discrete_timesteps(self.num_train_timesteps, steps, self.timestep_spacing, self.steps_offset,
                                    allow_zero=self.final_zero)
            return self._discrete_grid(torch.from_numpy(ts).double())
        return grids_mod.get(self.grid_name)(self.sde, steps)

    def _discrete_grid(self, ts: torch.Tensor) -> torch.Tensor:
        """The times of timesteps ``ts``, then where the last step ends: the table's first point, or one
        index below it where the last timestep is index 0 itself (final σ = 0: the run ends with that
        evaluation's x̂₀ and never goes there; the sampler's plan there extrapolates λ)."""
        end = -1.0 if float(ts[-1]) == 0 else 0.0
        return torch.cat([ts, ts.new_tensor([end])]) / (self.num_train_timesteps - 1)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """DDPM indices of times ``t``: int64 where all are integers, else float32."""
        model_t = self.sde.model_time(t)
        if bool(((model_t - model_t.round()).abs() < 1e-6).all()):  # i/(N−1)·(N−1) is off by an ulp
            return model_t.round().to(torch.int64)
        return model_t.to(torch.float32)

    def time(self, timesteps) -> torch.Tensor:
        """The time of DDPM indices (float64), which must lie in the table."""
        n = self.num_train_timesteps - 1
        t = torch.as_tensor(timesteps).to(torch.float64) / n
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"timesteps must lie in [0, {n}] (the training table's indices)")
        return t


def check_output_keys(variance_type, thresholding, dynamic_thresholding_ratio, sample_max_value) -> None:
    """Validate the keys that say how to read the network's output (the threshold's values only where
    ``thresholding`` is on)."""
    valid = FIXED_VARIANCE_TYPES + LEARNED_VARIANCE_TYPES
    if variance_type not in valid:
        raise ValueError(f"RevSDEScheduler supports variance_type in {{{', '.join(map(repr, valid))}}} "
                         f"(got {variance_type!r})")
    if thresholding not in (False, True):
        raise ValueError(f"thresholding must be True or False (got {thresholding!r})")
    if not thresholding:
        return  # the two values below are unused
    ratio_ok = isinstance(dynamic_thresholding_ratio, (int, float)) and not isinstance(dynamic_thresholding_ratio, bool)
    if not ratio_ok or not 0 < dynamic_thresholding_ratio <= 1:
        raise ValueError(f"dynamic_thresholding_ratio must be a number in (0, 1] (got {dynamic_thresholding_ratio!r})")
    max_ok = isinstance(sample_max_value, (int, float)) and not isinstance(sample_max_value, bool)
    if not max_ok or not sample_max_value >= 1:
        raise ValueError("sample_max_value must be a number >= 1: the threshold s is clamped to [1, sample_max_value] "
                         f"(got {sample_max_value!r})")


def prediction_channels(model_output: torch.Tensor, channels: int, variance_type) -> torch.Tensor:
    """The prediction in ``model_output``: its first ``channels`` channels under a learned variance."""
    if variance_type not in LEARNED_VARIANCE_TYPES:
        return model_output
    if model_output.ndim < 2 or model_output.shape[1] != 2 * channels:
        raise ValueError(f"variance_type={variance_type!r}: the network's output must hold 2 × {channels} channels "
                         f"(the prediction, then the variance); got shape {tuple(model_output.shape)}")
    return model_output[:, :channels]


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): per sample, ``s`` = the ``ratio`` quantile of
    ``|x̂₀|`` clamped to ``[1, max_value]``; x̂₀ clipped to ``[−s, s]`` and divided by ``s``."""
    flat = x0.reshape(x0.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()  # quantile needs one of them
    s = torch.quantile(work.abs(), ratio, dim=1).clamp(1, max_value)[:, None]
    return (torch.clamp(work, -s, s) / s).to(x0.dtype).reshape(x0.shape)
