"""Measure every registered sampler's convergence order on Gaussian data (the numbers behind the tests).

ODE samplers (default options, default grid): global error against the closed-form PF-ODE map of
Gaussian data. SDE samplers: strong error against a fine-grid solution on the same Brownian path,
on a two-mode mixture. The MR SDE uses the linear θ table (smooth between indices). Prints a
markdown table of the log-log slopes.

    python scripts/measure_orders.py [--sdes vp,ve,mr,ouve]
"""
from __future__ import annotations

import argparse
import math

import torch

import revsde
from revsde import sde as S
from revsde.nets.gmm import GaussianMixture, exact_model

SDES = {"vp": S.VPSDE, "subvp": S.SubVPSDE, "ve": S.VESDE,
        "mr": lambda: S.MRSDE(schedule="linear"), "ouve": S.OUVESDE}
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)


def slope(ns, errors):
    x = [math.log(1 / n) for n in ns]
    y = [math.log(e) for e in errors]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def setup(sde_name, batch, seed):
    sde = SDES[sde_name]()
    mixture = GaussianMixture.gaussian([0.5, -0.3], [[1.0, 0.3], [0.3, 0.5]])
    mu = MU if sde_name in ("mr", "ouve") else None
    mean, cov = mixture.marginal_moments(sde, sde.t_max, mu)
    gen = torch.Generator().manual_seed(seed)
    x = mean + torch.randn(batch, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return sde, mixture, mu, x


def ode_order(name, sde_name):
    smp = revsde.samplers.get(name)
    sde, mixture, mu, x = setup(sde_name, 64, 3)
    exact = mixture.pf_ode_map(sde, x, sde.t_max, sde.t_min, mu)
    base = {1.0: 64, 2.0: 16, 3.0: 16, 4.0: 32}[smp.order]
    ns = [base * 2**k for k in range(4)]
    errors = []
    for n in ns:
        sol = revsde.sample(exact_model(mixture, sde), x_init=x, sampler=smp, steps=n,
                            mu=None if mu is None else mu.expand(64, -1))
        errors.append(float((sol.x - exact).abs().max()))
    return slope(ns, errors), errors[-1]


def strong_order(smp, sde_name, ns=(32, 64, 128, 256), reference=2048):
    sde, _, mu, x = setup(sde_name, 256, 5)
    # two modes: a drift nonlinear in x (on Gaussian data some methods, e.g. SRA1, gain half an order)
    mixture = GaussianMixture([0.3, 0.7], [[1.0, 0.5], [-0.8, -0.2]],
                              [[[0.2, 0.05], [0.05, 0.1]], [[0.15, 0.0], [0.0, 0.3]]])
    noise = revsde.BrownianNoise((256, 2), sde.t_min, sde.t_max, entropy=1234, dtype=torch.float64)
    model = exact_model(mixture, sde)
    mu_b = None if mu is None else mu.expand(256, -1)

    def solve(n):
        return revsde.sample(model, x_init=x, sampler=smp, steps=n, grid="uniform_t", mu=mu_b, noise=noise).x

    ref = solve(reference)
    errors = [float((solve(n) - ref).abs().mean()) for n in ns]
    return slope(ns, errors), errors[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdes", default="vp,subvp,ve,mr,ouve")
    args = parser.parse_args()
    sdes = args.sdes.split(",")
    print("| sampler | kind | declared | " + " | ".join(sdes) + " |")
    print("|---|---|---|" + "---|" * len(sdes))
    for name in revsde.samplers.available():
        default = revsde.samplers.get(name)
        if default.adaptive:
            continue
        if default.kind == "ode":
            row = [ode_order(name, s)[0] for s in sdes]
            print(f"| {name} | ODE | {default.order:g} | " + " | ".join(f"{r:.2f}" for r in row) + " |", flush=True)
            continue
        variants = ([{"method": m} for m in revsde.samplers.torchsde_sampler.METHODS]
                    if name == "torchsde" else [{}])
        for options in variants:
            if "denoise" in revsde.samplers.option_names(name):
                options = {**options, "denoise": False}
            if name in ("pc",):
                options = {**options, "corrector": None}
            smp = revsde.samplers.get(name, **options)
            if smp.order is None:
                continue
            row = [strong_order(smp, s)[0] for s in sdes]
            label = name + (f" ({options['method']})" if "method" in options else "")
            label += " (corrector=None)" if name == "pc" else ""
            print(f"| {label} | SDE strong | {smp.order:g} | " + " | ".join(f"{r:.2f}" for r in row) + " |", flush=True)


if __name__ == "__main__":
    main()
