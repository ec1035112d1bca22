"""Speed, measured as ratios against a peer run in the same process (never as absolute targets).

``sampler_overhead``: the cost of the sampling loop itself — every sampler driven with a network that
costs nothing (it returns a tensor made once), per step, beside diffusers' ``DPMSolverMultistepScheduler.step``
in the same loop shape, and ``RevSDEScheduler.step`` (the diffusers path). ``peer_overhead``: each sampler's
loop against its equivalents in diffusers, k-diffusion (an optional benchmark extra: ``pip install
'revsde[bench]'``; its rows are skipped with a note without it) and a transcription of score_sde's PC loop, per
network evaluation, the two run alternately in one process. ``graph_speed`` (CUDA only):
a small UNet sampled eagerly and replayed from CUDA graphs at several batch sizes, beside the bare
network's time per call, which is the limit. ``startup``: the wall time of fresh ``revsde`` processes
(``--version``, ``--help``, a tiny ``sample`` run) beside a process that only imports torch, which every
command that samples must pay. ``noise_speed``: per-sample, batch-invariant noise (``seed=``: Philox streams)
beside one shared ``torch.Generator`` for a whole batch, and the per-sample torch generators ``seed=`` used
before. ``revsde bench speed`` prints them and writes them.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from revsde import __version__
from revsde import samplers as samplers_mod
from revsde.files import write_report

from .peers import peer_overhead

#: (label, sampler, options) of the loop-overhead table
OVERHEAD_SAMPLERS = [
    ("mrs (order 2)", "mrs", {}),
    ("mrs (order 3)", "mrs", {"order": 3}),
    ("mrs SDE (order 2)", "mrs", {"stochastic": True}),
    ("ode_euler", "ode_euler", {}),
    ("ode_heun", "ode_heun", {}),
    ("euler_maruyama", "euler_maruyama", {}),
    ("ancestral", "ancestral", {}),
    ("pc (langevin)", "pc", {}),
]


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _interleaved_medians(fns, repeats: int) -> list[float]:
    """Median CPU seconds of this process for each of ``fns`` (single-threaded work), timed in turn ``repeats``
    times after a warm-up: other processes' load on a shared machine, and its drift during the measurement,
    weigh on none of them or on all alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for seconds, fn in zip(times, fns):
            start = time.process_time()
            fn()
            seconds.append(time.process_time() - start)
    return [statistics.median(t) for t in times]


@dataclass
class SpeedResult:
    """Rows of ``{"label", "path", "ms_per_step", "ratio"}`` (ratio to diffusers' DPM-Solver++ step in
    the same run) and, on CUDA, ``graphs`` rows per batch size."""

    overhead: list[dict]
    steps: int
    shape: tuple
    device: str
    graphs: list[dict] = field(default_factory=list)
    threads: int = 1
    startup: list[dict] = field(default_factory=list)
    peers: list[dict] = field(default_factory=list)
    noise: list[dict] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"Sampling-loop overhead per step: a free network (returns a tensor made once), state {tuple(self.shape)}, "
                 f"{self.steps} steps, {self.device}, {self.threads} thread(s); median of repeated runs. "
                 "Ratio: to diffusers' DPMSolverMultistepScheduler.step in the same process.", "",
                 "| loop | path | evals per step | ms per step | ratio per step | ratio per NFE |",
                 "|---|---|---|---|---|---|"]
        for row in self.overhead:
            lines.append(f"| {row['label']} | {row['path']} | {row['evals_per_step']} | {row['ms_per_step']:.4f} | "
                         f"{row['ratio']:.2f}x | {row['ratio_per_nfe']:.2f}x |")
        if self.peers:
            lines += ["", "### Loop overhead against diffusers, k-diffusion and score_sde", "",
                      f"Each loop with a free network (a DDPM noise prediction made once), {self.steps} steps, CPU, one "
                      "thread: µs per network evaluation (NFE), the revsde run and its peer alternately in one "
                      "process (medians); revsde draws its noise from one batch generator, as its peers do.", "",
                      "| revsde | peer | batch | revsde µs/NFE | peer µs/NFE | ratio |", "|---|---|---|---|---|---|"]
            for row in self.peers:
                peer = f"{row['library']} {row['peer']}"
                if "skipped" in row:
                    lines.append(f"| {row['label']} | {peer} | {row['batch']} | | | skipped: {row['skipped']} |")
                else:
                    lines.append(f"| {row['label']} | {peer} | {row['batch']} | {row['revsde_us']:.1f} | "
                                 f"{row['peer_us']:.1f} | {row['ratio']:.2f}x |")
        if self.graphs:
            lines += ["", "CUDA graphs: a small UNet (about 2 M parameters, 32x32), ms per network evaluation "
                      "(NFE) while sampling (mrs, 20 steps), and the bare network's ms per call, eager and "
                      "replayed from its graph (the limit).", "",
                      "| batch | network eager | network graphed (limit) | sampling eager | sampling graphed | "
                      "speed-up | graphed / limit |", "|---|---|---|---|---|---|---|"]
            for g in self.graphs:
                lines.append(f"| {g['batch']} | {g['net_eager_ms']:.3f} | {g['net_ms']:.3f} | {g['eager_ms']:.3f} | "
                             f"{g['graphed_ms']:.3f} | {g['eager_ms'] / g['graphed_ms']:.2f}x | "
                             f"{g['graphed_ms'] / g['net_ms']:.2f} |")
        if self.noise:
            lines += ["", f"Batch-invariant noise: revsde.sample of the exact ring mixture (VP), shape (n, 2), "
                      f"euler_maruyama, {self.noise[0]['steps']} steps, CPU, one thread; CPU ms per run (median, the "
                      "two first columns timed in turn), and the ratio to one shared torch.Generator for the batch "
                      "in the same process.", "",
                      "| n | shared generator | seed= (Philox streams) | ratio | per-sample torch generators | ratio |",
                      "|---|---|---|---|---|---|"]
            for row in self.noise:
                lines.append(f"| {row['n']} | {row['shared_ms']:.1f} | {row['philox_ms']:.1f} | {row['ratio']:.2f}x | "
                             f"{row['torch_ms']:.1f} | {row['torch_ratio']:.2f}x |")
        if self.startup:
            lines += ["", "Start-up: wall time of a fresh process (median), and its ratio to a process that only "
                      "imports torch.", "", "| command | seconds | ratio to `import torch` |", "|---|---|---|"]
            for row in self.startup:
                lines.append(f"| `{row['command']}` | {row['seconds']:.3f} | {row['ratio']:.2f}x |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"overhead": self.overhead, "peers": self.peers, "graphs": self.graphs, "startup": self.startup,
                "noise": self.noise,
                "steps": self.steps, "shape": list(self.shape),
                "device": self.device, "threads": self.threads, "version": __version__,
                "torch": torch.__version__}


def sampler_overhead(steps: int = 50, shape=(1, 3, 32, 32), repeats: int = 20, samplers=None,
                     device="cpu") -> list[dict]:
    """Per-step cost of each loop with a free network, and its ratio to diffusers' DPM-Solver++ step."""
    import diffusers

    from revsde.integrations.diffusers import RevSDEScheduler
    from revsde.model import ScoreModel
    from revsde.solve import sample

    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        output = 0.1 * torch.randn(shape).to(device)  # the free network's answer, made once
        start = torch.randn(shape).to(device)
    dpm = diffusers.DPMSolverMultistepScheduler()

    def scheduler_loop(scheduler):
        def run():
            scheduler.set_timesteps(steps, device=device)
            x = start
            for t in scheduler.timesteps:
                x = scheduler.step(output, t, x).prev_sample
        return run

    base = _median_seconds(scheduler_loop(dpm), repeats) / steps
    rows = [{"label": "diffusers DPM-Solver++ 2M", "path": "DPMSolverMultistepScheduler.step", "evals_per_step": 1,
             "ms_per_step": base * 1e3, "ratio": 1.0, "ratio_per_nfe": 1.0}]
    sde_dpm = diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    per_step = _median_seconds(scheduler_loop(sde_dpm), repeats) / steps
    rows.append({"label": "diffusers SDE-DPM-Solver++ 2M", "path": "DPMSolverMultistepScheduler.step",
                 "evals_per_step": 1, "ms_per_step": per_step * 1e3, "ratio": per_step / base,
                 "ratio_per_nfe": per_step / base})
    model = ScoreModel(lambda x, t: output, RevSDEScheduler().sde)
    for label, name, options in (samplers or OVERHEAD_SAMPLERS):
        evals = samplers_mod.get(name, **options).evals_per_step
        run = lambda: sample(model, shape, sampler=name, steps=steps, device=device, graphs=False, **options)
        scheduler = RevSDEScheduler.from_config(dpm.config, sampler=name, **options)
        for path, loop in (("revsde.sample", run), ("RevSDEScheduler.step", scheduler_loop(scheduler))):
            per_step = _median_seconds(loop, repeats) / steps
            rows.append({"label": label, "path": path, "evals_per_step": evals, "ms_per_step": per_step * 1e3,
                         "ratio": per_step / base, "ratio_per_nfe": per_step / evals / base})
    return rows


def noise_speed(sizes=(64, 1000, 8000), steps: int = 50, repeats: int = 7) -> list[dict]:
    """Per-sample, batch-invariant noise against one shared generator (issue 26's benchmark): ``revsde.sample``
    of the exact ring mixture under VP, shape ``(n, 2)``, euler_maruyama, with ``seed=`` (Philox streams), with
    ``generator=`` one ``torch.Generator`` for the batch (the two timed in turn), and with a list of per-sample
    torch generators (the former ``seed=``; timed once after a warm-up, it is slow). Rows of ms per run and
    ratios to the shared generator."""
    from revsde.nets.gmm import GaussianMixture, exact_model
    from revsde.noise import generators_from_seed
    from revsde.sde import VPSDE
    from revsde.solve import sample

    model = exact_model(GaussianMixture.ring(), VPSDE())
    rows = []
    for n in sizes:
        def run(**randomness):
            return lambda: sample(model, (n, 2), sampler="euler_maruyama", steps=steps, graphs=False, **randomness)

        shared, philox = _interleaved_medians([run(generator=torch.Generator().manual_seed(0)), run(seed=0)], repeats)
        per_sample, = _interleaved_medians([lambda: run(generator=generators_from_seed(0, n))()], 1)
        rows.append({"n": n, "steps": steps, "shared_ms": shared * 1e3, "philox_ms": philox * 1e3,
                     "ratio": philox / shared, "torch_ms": per_sample * 1e3, "torch_ratio": per_sample / shared})
    return rows


def small_unet(sample_size: int = 32):
    """A small diffusers UNet (about 2 M parameters) with random weights, for timing only."""
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1,
                           block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D",) * 3,
                           up_block_types=("UpBlock2D",) * 3).eval()


def graph_speed(batches=(1, 4, 16), steps: int = 20, repeats: int = 5, device="cuda") -> list[dict]:
    """Eager vs CUDA-graph replay of a small UNet while sampling, per NFE, and the bare network."""
    from revsde.model import ScoreModel
    from revsde.solve import sample
    from revsde import sde as sde_mod

    device = torch.device(device)
    unet = small_unet().to(device)
    net = lambda x, t: unet(x, t).sample
    model = ScoreModel(net, sde_mod.DiscreteVPSDE.from_schedule())  # DDPM's linear table
    graphed = model.graphed()
    rows = []
    sync = torch.cuda.synchronize
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch, 3, 32, 32, device=device)
            t = torch.full((batch,), 500.0, device=device)

            def bare(f):
                def go():
                    for _ in range(steps):
                        f(x, t)
                    sync()
                return go

            def run(m, graphs):
                def go():
                    sample(m, (batch, 3, 32, 32), sampler="mrs", steps=steps, device=device, graphs=graphs)
                    sync()
                return go

            rows.append({"batch": batch,
                         "net_eager_ms": _median_seconds(bare(net), repeats) / steps * 1e3,
                         "net_ms": _median_seconds(bare(graphed.net), repeats) / steps * 1e3,
                         "eager_ms": _median_seconds(run(model, False), repeats) / steps * 1e3,
                         "graphed_ms": _median_seconds(run(graphed, True), repeats) / steps * 1e3,
                         "captures": graphed.net.captures})
    return rows


def startup(repeats: int = 3) -> list[dict]:
    """Median wall time of fresh processes: ``python -c "import torch"`` (the peer), then ``revsde --version``,
    ``revsde --help`` and ``revsde sample`` on 100 samples, 5 steps, no plot (one thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        commands = [("import torch", [sys.executable, "-c", "import torch"]),
                    ("revsde --version", [sys.executable, "-m", "revsde", "--version"]),
                    ("revsde --help", [sys.executable, "-m", "revsde", "--help"]),
                    ("revsde sample --n 100 --steps 5 --no-plot",
                     [sys.executable, "-m", "revsde", "sample", "--n", "100", "--steps", "5", "--no-plot",
                      "--no-progress", "-o", os.path.join(tmp, "s.npz")])]
        rows = []
        for label, argv in commands:
            run = lambda: subprocess.run(argv, env=env, check=True, capture_output=True)
            rows.append({"command": label, "seconds": _median_seconds(run, repeats)})
    for row in rows:
        row["ratio"] = row["seconds"] / rows[0]["seconds"]
    return rows


def run_speed(steps: int = 50, repeats: int = 20, shape=(1, 3, 32, 32), gpu: bool | None = None) -> SpeedResult:
    """The overhead, peer and noise tables (CPU, one thread, as the tests run) and, with CUDA, the graphs table."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overhead = sampler_overhead(steps, shape, repeats)
        peers = peer_overhead(steps)
        noise = noise_speed()
    finally:
        torch.set_num_threads(threads)
    gpu = torch.cuda.is_available() if gpu is None else gpu
    if gpu and not torch.cuda.is_available():
        raise ValueError("--gpu asked for, but this torch build sees no CUDA device")
    graphs = graph_speed() if gpu else []
    return SpeedResult(overhead=overhead, steps=steps, shape=tuple(shape), device="cpu", graphs=graphs,
                       startup=startup(), noise=noise, peers=peers)


def write(result: SpeedResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``bench_speed.md`` and ``.json`` in ``out_dir`` (written atomically)."""
    return write_report(out_dir, "bench_speed", result.markdown(), result.to_json())
