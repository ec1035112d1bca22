"""The configurations of ``revsde bench image``: diffusers' schedulers and revsde's samplers
(through ``RevSDEScheduler``, or ``revsde.sample`` itself for what no scheduler expresses: ``native``)
on one network, Denoising MCMC's settings for the digits model, and the ``--quick`` grid; for a
flow-matching model (``flow_configs``) diffusers' four flow schedulers against revsde's samplers on
rectified flow."""
from __future__ import annotations

from revsde.apps.mixture.pipeline_bench import SchedulerConfig


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
        SchedulerConfig("unipc 2", r, {"sampler": "unipc", "order": 2}),
        SchedulerConfig("unipc 3", r, {"sampler": "unipc", "order": 3}),
        SchedulerConfig("unipc 2 logsnr", r, {"sampler": "unipc", "order": 2, "grid": "logsnr"}),
        SchedulerConfig("unipc 3 logsnr", r, {"sampler": "unipc", "order": 3, "grid": "logsnr"}),
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


#: ``revsde bench image --quick``: few configurations, two NFEs, few samples (minutes on two CPU cores)
QUICK = {"labels": ("mrs 2", "mrs 2 logsnr", "diffusers DPM-Solver++ 2M", "diffusers UniPC",
                    "diffusers DDIM"), "nfes": (5, 10), "n": 500}


# --- flow matching (rectified flow, diffusers' "flow_prediction") ---------------------------------------
#: what makes diffusers' multistep solvers run on flow sigmas with a flow-predicting network (shift 1)
FLOW_MULTISTEP = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}


def flow_diffusers_configs() -> list[SchedulerConfig]:
    """diffusers' flow-matching schedulers at shift 1 (the model's scheduler config), and the two best
    multistep ones at shift 1.5."""
    dpm = "DPMSolverMultistepScheduler"
    return [
        SchedulerConfig("diffusers FlowMatchEuler", "FlowMatchEulerDiscreteScheduler"),
        SchedulerConfig("diffusers FlowMatchHeun", "FlowMatchHeunDiscreteScheduler"),
        SchedulerConfig("diffusers DPM-Solver++ 2M flow", dpm,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, **FLOW_MULTISTEP}),
        SchedulerConfig("diffusers DPM-Solver++ 3M flow", dpm,
                        {"algorithm_type": "dpmsolver++", "solver_order": 3, **FLOW_MULTISTEP}),
        SchedulerConfig("diffusers UniPC flow", "UniPCMultistepScheduler", dict(FLOW_MULTISTEP)),
        # the best of them on the shift revsde's rows use (chosen on held-out seeds), so that a grid is
        # not mistaken for a solver
        SchedulerConfig("diffusers DPM-Solver++ 3M flow shift 1.5", dpm,
                        {"algorithm_type": "dpmsolver++", "solver_order": 3, **FLOW_MULTISTEP, "flow_shift": 1.5}),
        SchedulerConfig("diffusers UniPC flow shift 1.5", "UniPCMultistepScheduler",
                        {**FLOW_MULTISTEP, "flow_shift": 1.5}),
    ]


def flow_revsde_configs() -> list[SchedulerConfig]:
    """revsde's samplers on the model's ``RectifiedFlow`` (``revsde.sample``); ``shift``: SD3's static shift
    of the uniform grid (``grids.Shifted``), > 1 spending more of the steps near the noise.

    The shifts were chosen on held-out seeds (5000…5999, 1000 samples; the bench draws 0…1999): mrs 2 at
    5 / 10 NFE on uniform_t 2.06 / 0.88, shift 1.5 1.60 / 0.78, shift 2 1.79 / 0.79, shift 3 2.95 / 0.85,
    shift 0.7 3.67 / 1.17, shift 0.5 8.16 / 1.75, quadratic 9.83 / 1.86; mrs SDE 2 with shift 1.5 1.32 /
    0.99. mrs 3 equals mrs 2 below 6 steps here: its history starts at t = 1, where λ = −∞ leaves the
    first difference no weight. On the velocity (``prediction="velocity"``: the angle φ, finite at t = 1)
    mrs 2 / mrs 3 score 0.73 / 0.68 at 5 NFE and 0.74 / 0.74 at 10 (shift 2: 0.68 / 0.66; shift 1.5 at
    5 NFE 0.85 / 1.06)."""
    return [
        native("mrs 1", "mrs", order=1),  # DDIM = Euler on the flow: FlowMatchEuler's update
        native("mrs 2", "mrs", order=2),
        native("mrs 3", "mrs", order=3),
        native("mrs 2 shift 1.5", "mrs", order=2, shift=1.5),
        native("mrs 2 shift 2", "mrs", order=2, shift=2.0),
        native("mrs 3 shift 3", "mrs", order=3, shift=3.0),
        # the exponential integrator in the angle φ = atan(σ/α) on the velocity: finite at t = 1 (φ = π/2),
        # so the multistep history starts there
        native("mrs 2 velocity", "mrs", order=2, prediction="velocity"),
        native("mrs 3 velocity", "mrs", order=3, prediction="velocity"),
        native("mrs 3 velocity shift 2", "mrs", order=3, prediction="velocity", shift=2.0),
        native("mrs SDE 2", "mrs", order=2, stochastic=True),
        native("mrs SDE 2 shift 1.5", "mrs", order=2, stochastic=True, shift=1.5),
        native("unipc 2", "unipc", order=2),
        native("unipc 3", "unipc", order=3),
        native("unipc 2 shift 1.5", "unipc", order=2, shift=1.5),
        native("revsde ode_heun", "ode_heun"),
        # mrs 2 as a scheduler in the pipeline, on the model's FlowMatchEuler sigmas (1 … 1/1000, then 0)
        SchedulerConfig("RevSDEScheduler mrs 2", "RevSDEScheduler", {"sampler": "mrs", "order": 2}),
    ]


def flow_configs() -> list[SchedulerConfig]:
    return flow_revsde_configs() + flow_diffusers_configs()


#: ``revsde bench image --quick`` on a flow model
QUICK_FLOW = {"labels": ("mrs 2 velocity", "mrs 2", "diffusers FlowMatchEuler", "diffusers DPM-Solver++ 2M flow",
                         "diffusers UniPC flow"), "nfes": (5, 10), "n": 500}


def default_configs(flow: bool = False) -> list[SchedulerConfig]:
    """The configurations of a DDPM model, or of a flow-matching model (``flow``)."""
    return flow_configs() if flow else revsde_configs() + diffusers_configs()


def family_of(config: SchedulerConfig) -> str:
    """"revsde" for RevSDEScheduler and native configurations, "diffusers" for the others."""
    return "revsde" if config.scheduler == NATIVE else config.family
