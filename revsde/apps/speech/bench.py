"""``revsde bench speech``: PESQ, ESTOI, SI-SDR and real-time factor versus NFE, per sampler.

SGMSE+'s sampler (reverse diffusion + one annealed-Langevin corrector step: 2 NFE per step; 60 NFE is
its published setting) against the MR Sampler on the same OUVE model (ODE and SDE, orders 1–2, data
prediction) at 2, 3, 5, 10 and 20 NFE (2: one step from t = 1 and the final data prediction). Every
configuration enhances the same held-out test pairs with the same seeds; the table reports mean
scores, the reference row (``sgmse`` at 60 NFE) and the NFE at which each sampler first comes within
0.05 PESQ of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from revsde import samplers as samplers_mod
from revsde.files import write_report

CONFIGS = [
    ("sgmse", "sgmse", {}),
    ("mrs ODE data 1", "mrs", {"order": 1}),
    ("mrs ODE data 2", "mrs", {"order": 2}),
    ("mrs SDE data 1", "mrs", {"order": 1, "stochastic": True}),
    ("mrs SDE data 2", "mrs", {"order": 2, "stochastic": True}),
]
NFES = {"sgmse": (10, 20, 30), "mrs": (2, 3, 5, 10, 20)}
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
                     reference_nfe: int = REFERENCE[1], device=None, progress: bool = False, cache_path=None,
                     resume: bool = True, dist=None, log=None) -> SpeechBenchResult:
    """Every configuration at its NFEs (``nfes``: sampler name → NFEs), plus the reference (``sgmse``
    at ``reference_nfe``), on the held-out test pairs (``pairs``: default ``speech_data.test_set()``).

    Cells run through ``harness.run_cells``: cached in ``cache_path`` (``resume=False`` starts afresh),
    split across the ranks of ``dist``, ``log`` told how many came from the cache. A cached cell keeps the
    real-time factor measured when it ran."""
    from revsde.apps.speech.enhance import builtin_path, load_speech_model
    from revsde.apps.bench.fingerprints import file_fingerprint, fingerprint, versions
    from revsde.apps.bench.harness import Cache, Cell, Dist, run_cells
    from revsde.apps.speech.data import test_set
    from revsde.apps.speech.eval import evaluate_speech

    speech = load_speech_model(model, device=device) if isinstance(model, str) else model
    identity = (file_fingerprint(builtin_path() if model == "builtin" else model) if isinstance(model, str)
                else fingerprint(speech))
    pairs = test_set() if pairs is None else pairs
    nfes = {**NFES, **(nfes or {})}
    configs = configs or CONFIGS
    for _, name, options in configs:
        samplers_mod.get(name, **options)  # unknown names and options fail before any work
    cells = [Cell(label, n, {"sampler": name, "options": options}) for label, name, options in configs
             for n in nfes[name]]
    cells.append(Cell("reference", reference_nfe, {"sampler": REFERENCE[0], "options": {}}))

    def evaluate(cell: Cell) -> dict:
        name, options = cell.params["sampler"], cell.params["options"]
        result = evaluate_speech(speech, sampler=name, nfe=cell.nfe, pairs=pairs, seed=seed, options=options,
                                 device=device)
        return {"label": cell.label, "sampler": name, "options": options, "nfe": result["nfe"], "rtf": result["rtf"],
                **{k: result["mean"][k] for k in ("pesq", "estoi", "si_sdr")},
                **{k + "_in": result["mean"][k + "_in"] for k in ("pesq", "estoi", "si_sdr")}}

    settings = {"task": "speech", "model": identity, "pairs": len(pairs), "pairs_digest": fingerprint(list(pairs)),
                "seed": seed, "device": str(device or "cpu"), **versions()}
    cache = Cache(cache_path, settings, resume=resume, writer=dist is None or dist.main)
    records = run_cells(cells, evaluate, cache, dist=dist or Dist(), shard="cells", progress=progress,
                        desc="bench speech", log=log)
    rows = [{k: v for k, v in r.items() if k not in _NOT_IN_ROWS} for r in records]
    inputs = {k: records[-1][k + "_in"] for k in ("pesq", "estoi", "si_sdr")}
    return SpeechBenchResult(model=speech.description, rows=rows[:-1], reference=rows[-1], inputs=inputs,
                             pairs=len(pairs), seconds=sum(r["seconds"] for r in records),
                             nfes=sorted({r["nfe"] for r in rows[:-1]}))


# the harness's bookkeeping and the noisy input's scores (the same in every cell: reported once)
_NOT_IN_ROWS = ("group", "target_nfe", "pesq_in", "estoi_in", "si_sdr_in")


def plot(result: SpeechBenchResult, path: str | os.PathLike) -> None:
    """PESQ, ESTOI and SI-SDR versus NFE (log axis), one line per sampler, reference and input dashed. Atomic."""
    from revsde.apps.bench.harness import plot_curves

    hlines = {f"{REFERENCE[0]} at {result.reference['nfe']} NFE": {k: result.reference[k] for k in result.inputs},
              "noisy input": {**result.inputs, "color": "gray", "linestyle": ":"}}
    plot_curves(result.rows, [("pesq", "PESQ-WB"), ("estoi", "ESTOI"), ("si_sdr", "SI-SDR (dB)")], path,
                logy=False, hlines=hlines, size=(4.4, 4.2), suptitle="Speech enhancement: quality vs NFE on the held-out test pairs")


def write(result: SpeechBenchResult, out_dir) -> dict[str, Path]:
    """``bench_speech.md``, ``.json`` and ``.png`` in ``out_dir`` (written atomically)."""
    return write_report(out_dir, "bench_speech", result.markdown(), result.to_json(), lambda path: plot(result, path))
