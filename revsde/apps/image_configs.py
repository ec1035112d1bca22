"""The configurations of ``revsde bench --task image``: diffusers' schedulers and revsde's samplers
(through ``RevSDEScheduler``, or ``revsde.sample`` itself for what no scheduler expresses: ``native``)
on one network, Denoising MCMC's settings for the digits model, and the ``--quick`` grid."""
from __future__ import annotations

from .pipeline_bench import SchedulerConfig


def diffusers_configs() -> list[SchedulerConfig]:
    dpm = "DPMSolverMultistepScheduler"
    return [
        SchedulerConfig("diffusers DDIM", "DDIMScheduler"),
        SchedulerConfig("diffusers DPM-Solver++ 2M", dpm, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        SchedulerConfig("diffusers DPM-Solver++ 3M", dpm, {"algorithm_type": "dpmsolver++", "solver_order": 3}),
        SchedulerConfig("diffusers DPM-Solver++ 2M karras", dpm, {"solver_order": 2, "use_karras_sigmas": True}),
        SchedulerConfig("diffusers DPM-Solver++ 2M lu_lambdas", dpm, {"solver_order": 2, "use_lu_lambdas": True}),
        SchedulerConfig("diffusers SDE-DPM-Solver++ 2M", dpm, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        SchedulerConfig("diffusers UniPC", "UniPCMultistepScheduler"),
        SchedulerConfig("diffusers Euler", "EulerDiscreteScheduler"),
        SchedulerConfig("diffusers Euler ancestral", "EulerAncestralDiscreteScheduler"),
        SchedulerConfig("diffusers Heun", "HeunDiscreteScheduler"),
        SchedulerConfig("diffusers DDPM", "DDPMScheduler"),
    ]


#: ``scheduler`` of a configuration that runs ``revsde.sample`` itself instead of a pipeline scheduler
NATIVE = "revsde.sample"


def native(label: str, sampler: str, **options) -> SchedulerConfig:
    """A configuration sampled by ``revsde.sample`` on the pipeline's network (samplers no scheduler can
    express, such as ``ode_rk45`` or ``dmcmc``); same seeds, same priors, NFE counted by the driver."""
    return SchedulerConfig(label, NATIVE, {"sampler": sampler, **options})


def revsde_configs() -> list[SchedulerConfig]:
    r, mrs = "RevSDEScheduler", {"sampler": "mrs"}
    return [
        SchedulerConfig("mrs 2", r, {**mrs, "order": 2}),
        SchedulerConfig("mrs 3", r, {**mrs, "order": 3}),
        SchedulerConfig("mrs 2 logsnr", r, {**mrs, "order": 2, "grid": "logsnr"}),
        SchedulerConfig("mrs 3 logsnr", r, {**mrs, "order": 3, "grid": "logsnr"}),
        SchedulerConfig("mrs 3 karras", r, {**mrs, "order": 3, "grid": "karras"}),
        SchedulerConfig("mrs SDE 2 logsnr", r, {**mrs, "order": 2, "stochastic": True, "grid": "logsnr"}),
        SchedulerConfig("revsde ode_heun", r, {"sampler": "ode_heun"}),
        SchedulerConfig("revsde euler_maruyama", r, {"sampler": "euler_maruyama"}),
        native("revsde ode_rk45", "ode_rk45"),
        # Denoising MCMC (Kim & Ye) in front of the same integrators: persistent chains, see sample_dlg
        native("DLG + mrs 2 logsnr", "dmcmc", integrator="mrs", integrator_options={"order": 2}, grid="logsnr",
               dlg=DLG_IMAGE),
        native("DLG + mrs 3 logsnr", "dmcmc", integrator="mrs", integrator_options={"order": 3}, grid="logsnr",
               dlg=DLG_IMAGE),
    ]


#: DLG on the digits model (``bench.DLG``'s keys). Kim & Ye's recipe (10 snapshots per chain, burn-in
#: 10 at η = 0.5, init pass on the outputs' 4-step grid, re-noised by 0.5) gave FD-digits 5.16 at 10.4
#: NFE against 0.85 for mrs 2 logsnr alone: chains started from a 4-step sample barely mix away from it,
#: and 10 snapshots of a chain are nearly one sample to FD. Measured on 2000 outputs (3 seed sets):
#: a 10-step init pass (Kim & Ye also run theirs with its own N = 20) re-noised to σ̃ = 1.5 and η = 2
#: (the reference's 0.5 on [0, 1] data is 2 on our [−1, 1]) keep the chains' snapshots near the data
#: (2000 independent chains: 0.67); 3 snapshots of 2 MCMC steps each with a sampled level and the last
#: iterate kept decorrelate them enough. This bench at 10 NFE, 2000 samples, seeds from 0 / 10000 / 20000:
#: DLG + mrs 3 logsnr 0.654 / 0.787 / 0.689 against 1.03 / 1.23 / 1.36 alone; DLG + mrs 2 logsnr 0.665 /
#: 0.822 / 0.721 against 0.852 / 0.785 / 0.794.
DLG_IMAGE = {"snapshots": 3, "burn_in_steps": 0, "mcmc_steps": 2, "init_steps": 10, "init_noise": 1.5,
             "eta": 2.0, "noise_level": "sample", "keep": "last"}


#: ``revsde bench --quick``: few configurations, two NFEs, few samples (minutes on two CPU cores)
QUICK = {"labels": ("mrs 2", "mrs 2 logsnr", "diffusers DPM-Solver++ 2M", "diffusers UniPC",
                    "diffusers DDIM"), "nfes": (5, 10), "n": 500}


def default_configs() -> list[SchedulerConfig]:
    return revsde_configs() + diffusers_configs()


def family_of(config: SchedulerConfig) -> str:
    """"revsde" for RevSDEScheduler and native configurations, "diffusers" for the others."""
    return "revsde" if config.scheduler == NATIVE else config.family
