"""``revsde bench restore``: PSNR/SSIM on the held-out photos versus NFE, per sampler.

The MR Sampler's claim, measured on our models: ``mrs`` at ≤ 10 NFE comes within 0.1 dB PSNR of IR-SDE's
posterior sampling at 100 NFE. Every configuration restores the same degraded images (fixed seeds) from
the same prior draws; the table gives the mean PSNR/SSIM, the reference row (posterior, 100 NFE) and the
NFE at which each sampler first comes within 0.1 dB of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from revsde import samplers as samplers_mod
from revsde.files import write_report

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
                      progress: bool = False, cache_path=None, resume: bool = True, dist=None,
                      log=None) -> RestoreBenchResult:
    """Every configuration at every NFE, plus the reference (posterior sampling at ``reference_nfe``),
    on the held-out photos (``images``: a subset of their names).

    Cells run through ``harness.run_cells``: cached in ``cache_path`` (``resume=False`` starts afresh),
    split across the ranks of ``dist``, ``log`` told how many came from the cache."""
    from revsde.apps.bench.fingerprints import file_fingerprint, fingerprint, versions
    from revsde.apps.bench.harness import Cache, Cell, Dist, run_cells
    from revsde.apps.restore.restore import builtin_path, load_restore_model
    from revsde.apps.restore.data import HELD_OUT, photos
    from revsde.apps.restore.eval import evaluate_restore

    score_model, description = load_restore_model(model, task) if isinstance(model, str) else (model, "the model")
    identity = (file_fingerprint(builtin_path(task) if model == "builtin" else model) if isinstance(model, str)
                else fingerprint(model))
    unknown = sorted(set(images or ()) - set(HELD_OUT))
    if unknown:
        raise ValueError(f"images {unknown} are not held-out photos ({', '.join(HELD_OUT)})")
    images = _crop(photos(tuple(images or HELD_OUT)), crop)
    configs = configs or CONFIGS
    per_step = {label: samplers_mod.get(name, **options).evals_per_step for label, name, options in configs}
    cells = [Cell(label, n, {"sampler": name, "options": options}) for label, name, options in configs for n in nfes]
    cells.append(Cell("reference", reference_nfe, {"sampler": REFERENCE[0], "options": {}}))
    per_step["reference"] = samplers_mod.get(REFERENCE[0]).evals_per_step

    def evaluate(cell: Cell) -> dict:
        name, options = cell.params["sampler"], cell.params["options"]
        result = evaluate_restore(score_model, task, nfe=cell.nfe // per_step[cell.label], sampler=name,
                                  images=images, seed=seed, **options)
        return {"label": cell.label, "sampler": name, "options": options, "nfe": result["nfe"],
                "psnr": result["mean"]["psnr"], "ssim": result["mean"]["ssim"],
                "psnr_in": result["mean"]["psnr_in"], "ssim_in": result["mean"]["ssim_in"]}

    settings = {"task": "restore", "restore_task": task, "model": identity, "crop": crop, "seed": seed,
                "images": list(images), **versions()}
    cache = Cache(cache_path, settings, resume=resume, writer=dist is None or dist.main)
    records = run_cells(cells, evaluate, cache, dist=dist or Dist(), shard="cells", progress=progress,
                        desc=f"bench restore {task}", log=log)
    inputs = records[-1]
    rows = [{k: v for k, v in r.items() if k not in _NOT_IN_ROWS} for r in records]
    return RestoreBenchResult(task=task, model=description, rows=rows[:-1], reference=rows[-1],
                              input_psnr=inputs["psnr_in"], input_ssim=inputs["ssim_in"], images=list(images),
                              crop=crop, seconds=sum(r["seconds"] for r in records), nfes=list(nfes))


# the harness's bookkeeping and the degraded input's scores (the same in every cell: reported once)
_NOT_IN_ROWS = ("group", "target_nfe", "psnr_in", "ssim_in")


def plot(result: RestoreBenchResult, path: str | os.PathLike) -> None:
    """PSNR versus NFE, one line per sampler, the reference and the input as dashed lines. Atomic."""
    from revsde.apps.bench.harness import plot_curves

    plot_curves(result.rows, [("psnr", "mean PSNR (dB)")], path, logy=False, size=(8, 5),
                title=f"{result.task} (input {result.input_psnr:.2f} dB)",
                hlines={f"{REFERENCE[0]} at {result.reference['nfe']} NFE": {"psnr": result.reference["psnr"]},
                        f"reference − {WITHIN_DB} dB": {"psnr": result.reference["psnr"] - WITHIN_DB,
                                                        "color": "gray", "linestyle": ":"}})


def write(result: RestoreBenchResult, out_dir) -> dict[str, Path]:
    """``bench_restore_<task>.md``, ``.json`` and ``.png`` in ``out_dir`` (written atomically)."""
    return write_report(out_dir, f"bench_restore_{result.task}", result.markdown(), result.to_json(),
                        lambda path: plot(result, path))
