"""``revsde bench --task speech``: PESQ, ESTOI, SI-SDR and real-time factor versus NFE, per sampler.

SGMSE+'s sampler (reverse diffusion + one annealed-Langevin corrector step: 2 NFE per step; 60 NFE is
its published setting) against the MR Sampler on the same OUVE model (ODE and SDE, orders 1–2, data
prediction) at 5, 10 and 20 NFE. Every configuration enhances the same held-out test pairs with the
same seeds; the table reports mean scores, the reference row (``sgmse`` at 60 NFE) and the NFE at
which each sampler first comes within 0.05 PESQ of it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import samplers as samplers_mod
from .files import save_figure, write_report

CONFIGS = [
    ("sgmse", "sgmse", {}),
    ("mrs ODE data 1", "mrs", {"order": 1}),
    ("mrs ODE data 2", "mrs", {"order": 2}),
    ("mrs SDE data 1", "mrs", {"order": 1, "stochastic": True}),
    ("mrs SDE data 2", "mrs", {"order": 2, "stochastic": True}),
]
NFES = {"sgmse": (10, 20, 30), "mrs": (5, 10, 20)}
REFERENCE = ("sgmse", 60)
WITHIN_PESQ = 0.05


@dataclass
class SpeechBenchResult:
    model: str
    rows: list[dict]
    reference: dict
    inputs: dict
    pairs: int
    seconds: float = 0.0
    nfes: list[int] = field(default_factory=list)

    def reaches(self, label: str) -> int | None:
        """The smallest NFE at which ``label`` is within ``WITHIN_PESQ`` of the reference PESQ."""
        hits = [r["nfe"] for r in self.rows if r["label"] == label
                and r["pesq"] >= self.reference["pesq"] - WITHIN_PESQ]
        return min(hits) if hits else None

    def markdown(self) -> str:
        ref, inp = self.reference, self.inputs
        lines = [f"Speech enhancement with {self.model} on the {self.pairs} held-out test pairs (held-out voices, "
                 f"sentences and noises, SNR −5…15 dB); mean PESQ-WB / ESTOI / SI-SDR (dB), real-time factor on "
                 f"this machine. Noisy input: {inp['pesq']:.3f} / {inp['estoi']:.3f} / {inp['si_sdr']:.2f}. "
                 f"Reference: {REFERENCE[0]} at {REFERENCE[1]} NFE, {ref['pesq']:.3f} / {ref['estoi']:.3f} / "
                 f"{ref['si_sdr']:.2f} (RTF {ref['rtf']:.2f}). Total time {self.seconds:.0f} s.", "",
                 "| sampler | NFE | PESQ | ESTOI | SI-SDR | RTF | ΔPESQ vs reference |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(self.rows, key=lambda r: (r["label"], r["nfe"])) + [{**ref, "label": "reference"}]:
            lines.append(f"| {r['label']} | {r['nfe']} | {r['pesq']:.3f} | {r['estoi']:.3f} | {r['si_sdr']:.2f} | "
                         f"{r['rtf']:.3f} | {r['pesq'] - ref['pesq']:+.3f} |")
        lines += ["", f"NFE at which each sampler first comes within {WITHIN_PESQ} PESQ of the reference:", ""]
        for label in dict.fromkeys(r["label"] for r in self.rows):
            reach = self.reaches(label)
            lines.append(f"- {label}: {reach if reach is not None else 'not within the NFEs run'}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"model": self.model, "rows": self.rows, "reference": self.reference, "inputs": self.inputs,
                "pairs": self.pairs, "seconds": self.seconds, "nfes": self.nfes,
                "reaches": {label: self.reaches(label) for label in dict.fromkeys(r["label"] for r in self.rows)}}


def run_speech_bench(model="builtin", *, configs=None, nfes: dict | None = None, pairs=None, seed: int = 0,
                     reference_nfe: int = REFERENCE[1], device=None, progress: bool = False) -> SpeechBenchResult:
    """Every configuration at its NFEs (``nfes``: sampler name → NFEs), plus the reference (``sgmse``
    at ``reference_nfe``), on the held-out test pairs (``pairs``: default ``speech_data.test_set()``)."""
    from tqdm.auto import tqdm

    from .enhance import load_speech_model
    from .speech_data import test_set
    from .speech_eval import evaluate_speech

    speech = load_speech_model(model, device=device) if isinstance(model, str) else model
    pairs = test_set() if pairs is None else pairs
    nfes = {**NFES, **(nfes or {})}
    jobs = [(label, name, options, n) for label, name, options in (configs or CONFIGS) for n in nfes[name]]
    jobs.append(("reference", REFERENCE[0], {}, reference_nfe))
    start = time.perf_counter()
    rows, reference, inputs = [], None, None
    for label, name, options, n in tqdm(jobs, desc="bench speech", disable=not progress):
        samplers_mod.get(name, **options)  # unknown names and options fail before any work
        result = evaluate_speech(speech, sampler=name, nfe=n, pairs=pairs, seed=seed, options=options, device=device)
        row = {"label": label, "sampler": name, "options": options, "nfe": result["nfe"], "rtf": result["rtf"],
               **{k: result["mean"][k] for k in ("pesq", "estoi", "si_sdr")}}
        inputs = {k: result["mean"][k + "_in"] for k in ("pesq", "estoi", "si_sdr")}
        if label == "reference":
            reference = row
        else:
            rows.append(row)
    return SpeechBenchResult(model=speech.description, rows=rows, reference=reference, inputs=inputs,
                             pairs=len(pairs), seconds=time.perf_counter() - start,
                             nfes=sorted({r["nfe"] for r in rows}))


def plot(result: SpeechBenchResult, path: str | os.PathLike) -> None:
    """PESQ, ESTOI and SI-SDR versus NFE (log axis), one line per sampler, reference and input dashed. Atomic."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2), layout="constrained")
    for ax, (key, name) in zip(fig.subplots(1, 3), (("pesq", "PESQ-WB"), ("estoi", "ESTOI"), ("si_sdr", "SI-SDR (dB)"))):
        for label in dict.fromkeys(r["label"] for r in result.rows):
            pts = sorted((r["nfe"], r[key]) for r in result.rows if r["label"] == label)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-" if label.startswith("mrs") else ":", marker="o",
                    ms=3, label=label)
        ax.axhline(result.reference[key], color="black", linestyle="--", label=f"{REFERENCE[0]} at {REFERENCE[1]} NFE")
        ax.axhline(result.inputs[key], color="gray", linestyle=":", label="noisy input")
        ax.set_xscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle("Speech enhancement: quality vs NFE on the held-out test pairs")
    save_figure(fig, path)


def write(result: SpeechBenchResult, out_dir) -> dict[str, Path]:
    """``bench_speech.md``, ``.json`` and ``.png`` in ``out_dir`` (written atomically)."""
    return write_report(out_dir, "bench_speech", result.markdown(), result.to_json(), lambda path: plot(result, path))
