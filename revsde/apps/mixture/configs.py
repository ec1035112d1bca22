"""The configurations ``revsde bench gmm`` compares: revsde's samplers with their options and grids,
diffusers' schedulers (DDPM-style and flow-matching) with theirs, and Denoising MCMC's budget per NFE
(``dlg_*``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from revsde.solve import sample

@dataclass
class Config:
    """One curve: a revsde sampler with options, or a diffusers scheduler (``scheduler`` factory)."""

    label: str
    sampler: str | None = None
    options: dict = field(default_factory=dict)
    evals_per_step: int = 1
    scheduler: Callable | None = None
    tolerances: tuple = ()  # adaptive samplers: one run per tolerance instead of per NFE
    problems: tuple = ("vp", "mr")
    flow: bool = False  # a diffusers flow-matching scheduler (fed the velocity at σ = timestep / 1000)

    def steps_for(self, nfe: int) -> int:
        # diffusers' Heun makes 2 N − 1 evaluations for N steps (the last is first-order)
        heun = self.scheduler is not None and self.evals_per_step == 2
        return max(1, (nfe + 1) // 2 if heun else nfe // self.evals_per_step)


def revsde_configs() -> list[Config]:
    configs = []
    for order in (1, 2, 3):
        for prediction in ("data", "noise", "velocity"):
            configs.append(Config(f"mrs ODE {order} {prediction}", "mrs", {"order": order, "prediction": prediction}))
    for order in (1, 2):
        for prediction in ("data", "noise"):
            configs.append(Config(f"mrs SDE {order} {prediction}", "mrs",
                                  {"order": order, "prediction": prediction, "stochastic": True}))
    # the same solvers on diffusers' kind of grid (uniform in t): SDE-DPM-Solver++(2M) needs it at low NFE
    for label, options in [("mrs ODE 2 data", {"order": 2}), ("mrs ODE 3 data", {"order": 3}),
                           ("mrs SDE 2 data", {"order": 2, "stochastic": True})]:
        configs.append(Config(f"{label} uniform_t", "mrs", {**options, "grid": "uniform_t"}))
    # UniPC (predictor + corrector, no extra NFE), its bh1 form, and UniP alone
    for order in (2, 3):
        configs.append(Config(f"unipc {order}", "unipc", {"order": order}))
    configs += [Config("unipc 2 bh1", "unipc", {"order": 2, "variant": "bh1"}),
                Config("unipc 3 uniform_t", "unipc", {"order": 3, "grid": "uniform_t"}),
                Config("unip 3 (no corrector)", "unipc", {"order": 3, "corrector": False})]
    # Denoising MCMC (Kim & Ye) in front of an integrator: the same integrator with and without DLG
    for integrator, options in DLG_INTEGRATORS:
        configs.append(Config(f"DLG + {integrator}", "dmcmc", {"integrator": options["sampler"],
                                                              "integrator_options": options["options"]}))
    configs += [
        Config("posterior", "posterior"),
        Config("euler_maruyama", "euler_maruyama"),
        # on 2-D data per-sample Langevin norms are heavy-tailed (pc's docstring): score_sde's batch norms
        Config("pc (reverse diffusion + Langevin, batch norms)", "pc", {"langevin_norms": "batch"}, evals_per_step=2),
        Config("ode_heun", "ode_heun", evals_per_step=2),
        Config("ode_rk45", "ode_rk45", tolerances=(3e-1, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4)),
    ]
    return configs + flow_configs()


def flow_configs() -> list[Config]:
    """revsde's samplers on the rectified-flow problem: the data-prediction MR Sampler (= DPM-Solver++ on
    flow; order 1 is the flow's Euler step), the same with SD3's time shift (``shift``), the velocity form,
    the SDE forms and the classic solvers. Noise-prediction SDE forms cannot start at α = 0 (refused)."""
    flow = ("flow", "flow192")
    configs = []
    for order in (1, 2, 3):
        configs.append(Config(f"mrs ODE {order} data", "mrs", {"order": order}, problems=flow))
    configs += [
        Config("mrs ODE 2 data midpoint", "mrs", {"order": 2, "second_order": "midpoint"}, problems=flow),
        Config("mrs ODE 2 noise", "mrs", {"order": 2, "prediction": "noise"}, problems=flow),
        Config("mrs ODE 2 velocity", "mrs", {"order": 2, "prediction": "velocity"}, problems=flow),
        Config("mrs SDE 1 data", "mrs", {"order": 1, "stochastic": True}, problems=flow),
        Config("mrs SDE 2 data", "mrs", {"order": 2, "stochastic": True}, problems=flow),
    ]
    for shift in (0.5, 2.0, 3.0):
        for order in (2, 3):
            configs.append(Config(f"mrs ODE {order} data shift {shift:g}", "mrs", {"order": order, "shift": shift},
                                  problems=flow))
    # the velocity form integrates in the angle φ = atan(σ/α), where the straight path is a quarter circle
    for order, shift in [(1, 0.5), (2, 0.5), (3, 0.5), (2, 0.3)]:
        configs.append(Config(f"mrs ODE {order} velocity shift {shift:g}", "mrs",
                              {"order": order, "prediction": "velocity", "shift": shift}, problems=flow))
    configs += [Config("posterior", "posterior", problems=flow), Config("euler_maruyama", "euler_maruyama", problems=flow),
                Config("ode_heun", "ode_heun", evals_per_step=2, problems=flow),
                Config("ode_rk45", "ode_rk45", tolerances=(3e-1, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4), problems=flow)]
    return configs


#: integrators benchmarked behind Denoising Langevin Gibbs, by their labels above
DLG_INTEGRATORS = [("mrs ODE 2 data", {"sampler": "mrs", "options": {"order": 2}}),
                   ("ode_heun", {"sampler": "ode_heun", "options": {}}),
                   ("euler_maruyama", {"sampler": "euler_maruyama", "options": {}})]
#: DLG as Kim & Ye run it: persistent chains, each giving ``snapshots`` outputs; one-time init + burn-in
#: (the init pass on the outputs' grid unless ``init_steps`` is set); the MCMC steps per output from the
#: budget (``dlg_budget``) unless ``mcmc_steps`` fixes them. Every other key is a dmcmc option.
DLG = {"snapshots": 10, "burn_in_steps": 10, "levels": 100, "eta": 0.5}
BUDGET_KEYS = ("snapshots", "levels", "mcmc_steps")


def dlg_budget(nfe: int, evals_per_step: int = 1, snapshots: int = DLG["snapshots"],
               burn_in: int = DLG["burn_in_steps"], init_steps: int | None = None,
               mcmc_steps: int | None = None) -> tuple[int, int]:
    """``(integrator steps N, MCMC steps m)`` so that the NFE per output, ``m + N·e + 1`` (Tweedie) plus the
    one-time init pass (``init_steps·e``, or ``N·e`` on the outputs' grid) and burn-in shared by
    ``snapshots`` outputs, comes nearest ``nfe`` with ``m ≥ 1``: about half the budget to the chains and half
    to the integrator; with ``mcmc_steps`` given, m is that and N fills the budget (ties: fewer steps)."""
    best = None
    for steps in range(1, nfe + 1):
        once = ((init_steps or steps) * evals_per_step + burn_in) / snapshots
        m = round(nfe - 1 - steps * evals_per_step - once) if mcmc_steps is None else mcmc_steps
        if m < 1:
            break
        per_output = m + steps * evals_per_step + 1 + once
        if mcmc_steps is None:
            key = (round(abs(per_output - nfe)), abs(m - steps * evals_per_step))  # within ½ NFE, then balanced
        else:
            key = (abs(per_output - nfe), steps)
        if best is None or key < best[0]:
            best = (key, steps, m)
    return (1, mcmc_steps or 1) if best is None else best[1:]


def dlg_sampler(noise_classifier, nfe: int, options: dict, settings: dict = DLG):
    """``(dmcmc sampler, integrator steps)`` for a target NFE per output: ``options`` hold ``integrator``
    and ``integrator_options`` (and any other dmcmc option); ``settings`` as ``DLG``; MCMC and integrator
    steps from ``dlg_budget``."""
    from revsde import samplers as samplers_mod

    per_step = samplers_mod.get(options["integrator"], **options.get("integrator_options", {})).evals_per_step or 1
    steps, mcmc = dlg_budget(nfe, per_step, settings["snapshots"], settings["burn_in_steps"],
                             settings.get("init_steps"), settings.get("mcmc_steps"))
    dmcmc_options = {k: v for k, v in settings.items() if k not in BUDGET_KEYS}
    smp = samplers_mod.get("dmcmc", noise_classifier=noise_classifier, mcmc_steps=mcmc,
                           **{**dmcmc_options, **options})
    return smp, steps


def dlg_snapshots(model, smp, x_init: torch.Tensor, steps: int, snapshots: int = DLG["snapshots"],
                  **sample_options):
    """``snapshots`` successive outputs of the persistent chains of ``smp`` (the first run starts them
    from ``x_init``): ``(chains, snapshots, …)`` and the NFE per output, the chains' one-time init pass
    and burn-in shared among their snapshots."""
    outputs, total = [], 0
    for _ in range(snapshots):
        sol = sample(model, x_init=x_init, sampler=smp, steps=steps, **sample_options)
        outputs.append(sol.x)
        total += sol.nfe
    return torch.stack(outputs, 1), total / snapshots


def diffusers_configs() -> list[Config]:
    """diffusers' schedulers (VP only), configured from the same DDPM table."""
    import diffusers as d

    def make(cls, **kwargs):
        return lambda: cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                           **kwargs)

    return [Config(label, scheduler=factory, evals_per_step=per_step, problems=("vp",)) for label, factory, per_step in [
        ("diffusers DPM-Solver++ 2M", make(d.DPMSolverMultistepScheduler, solver_order=2), 1),
        ("diffusers DPM-Solver++ 3M", make(d.DPMSolverMultistepScheduler, solver_order=3), 1),
        ("diffusers SDE-DPM-Solver++ 2M", make(d.DPMSolverMultistepScheduler, solver_order=2,
                                               algorithm_type="sde-dpmsolver++"), 1),
        ("diffusers UniPC", make(d.UniPCMultistepScheduler), 1),
        ("diffusers DDIM", make(d.DDIMScheduler, clip_sample=False), 1),  # the ring reaches |x| = 2.5
        ("diffusers Euler", make(d.EulerDiscreteScheduler), 1),
        ("diffusers Heun", make(d.HeunDiscreteScheduler), 2),
    ]] + diffusers_flow_configs()


def diffusers_flow_configs() -> list[Config]:
    """diffusers' flow-matching schedulers on the rectified-flow problem (SD3's, and those of Wan/Sana
    with ``use_flow_sigmas``), without shift and with SD3's shift 3."""
    import diffusers as d

    flow_dpm = dict(use_flow_sigmas=True, prediction_type="flow_prediction")
    out = []
    for shift in (1.0, 3.0, 0.5):
        tag = "" if shift == 1.0 else f" shift {shift:g}"
        out += [
            (f"diffusers FlowMatchEuler{tag}", lambda s=shift: d.FlowMatchEulerDiscreteScheduler(shift=s), 1),
            (f"diffusers FlowMatchHeun{tag}", lambda s=shift: d.FlowMatchHeunDiscreteScheduler(shift=s), 2),
            (f"diffusers DPM-Solver++ 2M flow{tag}",
             lambda s=shift: d.DPMSolverMultistepScheduler(solver_order=2, flow_shift=s, **flow_dpm), 1),
            (f"diffusers DPM-Solver++ 3M flow{tag}",
             lambda s=shift: d.DPMSolverMultistepScheduler(solver_order=3, flow_shift=s, **flow_dpm), 1),
            (f"diffusers UniPC flow{tag}", lambda s=shift: d.UniPCMultistepScheduler(flow_shift=s, **flow_dpm), 1),
        ]
    out.append(("diffusers FlowMatchEuler stochastic",
                lambda: d.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), 1))
    return [Config(label, scheduler=factory, evals_per_step=per_step, problems=("flow", "flow192"), flow=True)
            for label, factory, per_step in out]
