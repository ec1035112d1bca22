"""``revsde bench --task restore``: PSNR/SSIM on the held-out photos versus NFE, per sampler.

The MR Sampler's claim, measured on our models: ``mrs`` at ≤ 10 NFE comes within 0.1 dB PSNR of IR-SDE's
posterior sampling at 100 NFE. Every configuration restores the same degraded images (fixed seeds) from
the same prior draws; the table gives the mean PSNR/SSIM, the reference row (posterior, 100 NFE) and the
NFE at which each sampler first comes within 0.1 dB of it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import samplers as samplers_mod
from .files import save_figure, write_report

CONFIGS = [
    ("mrs ODE data 1", "mrs", {"order": 1}),
    ("mrs ODE data 2", "mrs", {"order": 2}),
    ("mrs ODE data 3", "mrs", {"order": 3}),
    ("mrs ODE noise 2", "mrs", {"order": 2, "prediction": "noise"}),
    ("mrs SDE data 1", "mrs", {"order": 1, "stochastic": True}),
    ("mrs SDE data 2", "mrs", {"order": 2, "stochastic": True}),
    ("mrs SDE noise 2", "mrs", {"order": 2, "stochastic": True, "prediction": "noise"}),
    ("posterior", "posterior", {}),
    ("euler_maruyama", "euler_maruyama", {}),
]
REFERENCE = ("posterior", 100)
WITHIN_DB = 0.1


@dataclass
class RestoreBenchResult:
    task: str
    model: str
    rows: list[dict]
    reference: dict
    input_psnr: float
    input_ssim: float
    images: list[str]
    crop: int | None
    seconds: float = 0.0
    nfes: list[int] = field(default_factory=list)

    def reaches(self, label: str) -> int | None:
        """The smallest NFE at which ``label`` is within ``WITHIN_DB`` of the reference PSNR."""
        hits = [r["nfe"] for r in self.rows if r["label"] == label and r["psnr"] >= self.reference["psnr"] - WITHIN_DB]
        return min(hits) if hits else None

    def markdown(self) -> str:
        labels = list(dict.fromkeys(r["label"] for r in self.rows))
        crop = f", centre {self.crop}×{self.crop} crops" if self.crop else ""
        lines = [f"Restoration `{self.task}` with {self.model} on the held-out photos ({', '.join(self.images)}"
                 f"{crop}); mean PSNR (dB) / SSIM. Degraded input: {self.input_psnr:.2f} dB / {self.input_ssim:.4f}. "
                 f"Reference: {REFERENCE[0]} at {REFERENCE[1]} NFE, {self.reference['psnr']:.2f} dB / "
                 f"{self.reference['ssim']:.4f}. Total time {self.seconds:.0f} s.", "",
                 "| sampler | " + " | ".join(f"NFE {n}" for n in self.nfes) + f" | within {WITHIN_DB} dB of the "
                 "reference at NFE |", "|---" * (len(self.nfes) + 2) + "|"]
        for label in labels:
            cells = []
            for n in self.nfes:
                row = next((r for r in self.rows if r["label"] == label and r["nfe"] == n), None)
                cells.append("—" if row is None else f"{row['psnr']:.2f} / {row['ssim']:.4f}")
            reach = self.reaches(label)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {reach if reach is not None else 'not reached'} |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"task": self.task, "model": self.model, "rows": self.rows, "reference": self.reference,
                "input_psnr": self.input_psnr, "input_ssim": self.input_ssim, "images": self.images,
                "crop": self.crop, "seconds": self.seconds, "nfes": self.nfes,
                "reaches": {label: self.reaches(label) for label in dict.fromkeys(r["label"] for r in self.rows)}}


def _crop(images: dict, size: int | None) -> dict:
    if size is None:
        return images
    out = {}
    for name, x in images.items():
        h, w = x.shape[-2:]
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        out[name] = x[..., top:top + size, left:left + size]
    return out


def run_restore_bench(task: str = "denoise", model="builtin", nfes=(2, 3, 5, 10, 20), *, configs=None,
                      crop: int | None = 128, seed: int = 0, images=None, reference_nfe: int = REFERENCE[1],
                      progress: bool = False) -> RestoreBenchResult:
    """Every configuration at every NFE, plus the reference (posterior sampling at ``reference_nfe``),
    on the held-out photos (``images``: a subset of their names)."""
    from tqdm.auto import tqdm

    from .restore import load_restore_model
    from .restore_data import HELD_OUT, photos
    from .restore_eval import evaluate_restore

    score_model, description = load_restore_model(model, task) if isinstance(model, str) else (model, "the model")
    unknown = sorted(set(images or ()) - set(HELD_OUT))
    if unknown:
        raise ValueError(f"images {unknown} are not held-out photos ({', '.join(HELD_OUT)})")
    images = _crop(photos(tuple(images or HELD_OUT)), crop)
    configs = configs or CONFIGS
    jobs = [(label, name, options, n) for label, name, options in configs for n in nfes]
    jobs.append(("reference", REFERENCE[0], {}, reference_nfe))
    start = time.perf_counter()
    rows, reference, inputs = [], None, None
    for label, name, options, n in tqdm(jobs, desc=f"bench restore {task}", disable=not progress):
        steps = n // samplers_mod.get(name, **options).evals_per_step
        result = evaluate_restore(score_model, task, nfe=steps, sampler=name, images=images, seed=seed, **options)
        row = {"label": label, "sampler": name, "options": options, "nfe": result["nfe"],
               "psnr": result["mean"]["psnr"], "ssim": result["mean"]["ssim"]}
        inputs = result["mean"]
        if label == "reference":
            reference = row
        else:
            rows.append(row)
    return RestoreBenchResult(task=task, model=description, rows=rows, reference=reference,
                              input_psnr=inputs["psnr_in"], input_ssim=inputs["ssim_in"], images=list(images),
                              crop=crop, seconds=time.perf_counter() - start, nfes=list(nfes))


def plot(result: RestoreBenchResult, path: str | os.PathLike) -> None:
    """PSNR versus NFE, one line per sampler, the reference and the input as dashed lines. Atomic."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for label in dict.fromkeys(r["label"] for r in result.rows):
        pts = sorted((r["nfe"], r["psnr"]) for r in result.rows if r["label"] == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-" if label.startswith("mrs") else ":", marker="o",
                ms=3, label=label)
    ax.axhline(result.reference["psnr"], color="black", linestyle="--",
               label=f"{REFERENCE[0]} at {REFERENCE[1]} NFE")
    ax.axhline(result.reference["psnr"] - WITHIN_DB, color="gray", linestyle=":", linewidth=1,
               label=f"reference − {WITHIN_DB} dB")
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(f"{result.task}: PSNR vs NFE (input {result.input_psnr:.2f} dB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write(result: RestoreBenchResult, out_dir) -> dict[str, Path]:
    """``bench_restore_<task>.md``, ``.json`` and ``.png`` in ``out_dir`` (written atomically)."""
    return write_report(out_dir, f"bench_restore_{result.task}", result.markdown(), result.to_json(),
                        lambda path: plot(result, path))
