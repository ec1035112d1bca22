"""The one benchmark harness behind ``revsde bench``: a grid of cells, each cached when done, so an
interrupted run resumes; work split across ``torchrun`` processes; tables and log-log plots.

A *cell* is one point of a task's grid: a curve (``label``: a revsde sampler with options, or a peer
such as a diffusers scheduler) at one target NFE. A task turns its grid into ``Cell``s and gives an
``evaluate(cell) -> dict`` that returns the cell's record (``nfe`` actually used, metrics, seconds).
``run_cells`` evaluates every cell that its ``Cache`` does not already hold and appends each finished
record to the cache file as one JSON line, flushed and fsynced: a run that is killed loses at most the
cell in progress, and rerunning the same command picks up where it stopped.

The cache's first line records the run's ``settings`` (model, samples, seeds, …). A cache written
with other settings is never mixed into a new run: ``Cache`` refuses it and names the setting that
differs (``--no-resume`` starts afresh).

Distributed runs (``torchrun --nproc_per_node=N -m revsde bench …``): ``Dist.from_env()`` joins the
process group that torchrun describes (gloo on CPU, NCCL on CUDA). Tasks whose cells are costly per
sample shard *seeds* across ranks with ``shard_seeds`` (EDM's scheme: one generator per seed, so every
sample is the same whatever the number of processes) and put them back together with
``Dist.gather_by_seed``; the other tasks shard whole cells (``run_cells`` gives rank r the cells r,
r + N, …). Either way only rank 0 writes the cache and the reports.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch


# --- cells and their cache ------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One grid point: curve ``label`` at target ``nfe``; ``params`` are what the task needs to run it
    (JSON-serialisable: sampler name, options, scheduler class, tolerance…)."""

    label: str
    nfe: int | None
    params: dict = field(default_factory=dict, hash=False, compare=False)
    group: str = ""  # a task's sub-problem ("vp", "mr", an image task…)

    @property
    def key(self) -> str:
        return json.dumps([self.group, self.label, self.nfe, self.params], sort_keys=True, default=str)


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Cache:
    """Finished cells of one run, kept in a JSON-lines file (``None`` path: in memory only).

    Line 1: ``{"settings": …}``; every further line ``{"key": …, "record": …}``. A torn last line (the
    process killed mid-write) is ignored, and cut off by a writer so the next record starts a line of its
    own. Records are kept as JSON gives them back (tuples as lists), so a resumed run sees exactly what
    the run that wrote them saw. ``resume=False`` discards what the file holds.
    """

    def __init__(self, path: str | os.PathLike | None, settings: dict, *, resume: bool = True, writer: bool = True):
        self.path = None if path is None else Path(path)
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self.records: dict[str, dict] = {}
        self.writer = writer
        if self.path is None:
            return
        if resume and self.path.exists():
            self._load()
        elif writer:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps({"settings": self.settings}, sort_keys=True) + "\n")
            os.replace(tmp, self.path)

    def _load(self) -> None:
        text = self.path.read_text()
        if self.writer and text and not text.endswith("\n"):
            # a line torn by a kill mid-write: cut it off, or the next record would be glued onto it
            with open(self.path, "r+") as file:
                file.truncate(len(text[:text.rfind("\n") + 1].encode()))
        lines = text.splitlines()
        try:
            head = json.loads(lines[0])["settings"] if lines else None
        except (ValueError, KeyError, TypeError):
            head = None
        if head is None:
            raise ValueError(f"{self.path} is not a revsde bench cache (no settings line): remove it or pass "
                             "--no-resume")
        if head != self.settings:
            differ = sorted(k for k in set(head) | set(self.settings) if head.get(k) != self.settings.get(k))
            raise ValueError(f"{self.path} caches a run with other settings ({', '.join(differ)} differ: "
                             + "; ".join(f"{k}: cached {head.get(k)!r}, now {self.settings.get(k)!r}" for k in differ[:4])
                             + "); pass --no-resume to start afresh or choose another output folder")
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                self.records[entry["key"]] = entry["record"]
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill mid-write: that cell runs again

    def get(self, cell: Cell) -> dict | None:
        return self.records.get(cell.key)

    def put(self, cell: Cell, record: dict) -> None:
        record = json.loads(json.dumps(record, default=_json_default))
        self.records[cell.key] = record
        if self.path is None or not self.writer:
            return
        line = json.dumps({"key": cell.key, "record": record}) + "\n"
        with open(self.path, "a") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --- distributed ----------------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    initialised_here: bool = False

    @classmethod
    def from_env(cls, device: str | torch.device | None = None) -> "Dist":
        """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), gloo on CPU and NCCL on CUDA."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed; run without torchrun")
        here = False
        if not dist.is_initialized():
            cuda = device is not None and torch.device(device).type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo")
            here = True
        return cls(dist.get_rank(), dist.get_world_size(), here)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_by_seed(self, seeds: list[int], x: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """Samples drawn on every rank, ``(seeds, x)`` sorted by seed, on every rank (CPU tensors)."""
        parts = self.gather_objects((list(seeds), x.detach().cpu()))
        all_seeds = [s for part, _ in parts for s in part]
        stacked = torch.cat([t for _, t in parts]) if parts else x
        order = sorted(range(len(all_seeds)), key=all_seeds.__getitem__)
        return [all_seeds[i] for i in order], stacked[order]

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialised_here = False


def shard_seeds(seeds: list[int], rank: int, world: int, max_batch: int) -> list[list[int]]:
    """EDM's split: the seed list cut into ``ceil(len / (max_batch · world)) · world`` near-equal
    batches, rank ``r`` taking batches ``r, r + world, …`` (every rank gets the same number of batches,
    some possibly empty)."""
    if max_batch < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need max_batch >= 1 and 0 <= rank < world (got {max_batch}, {rank}, {world})")
    n_batches = max(1, math.ceil(len(seeds) / (max_batch * world))) * world
    batches = [b.tolist() for b in torch.as_tensor(list(seeds), dtype=torch.int64).tensor_split(n_batches)]
    return batches[rank::world]


# --- running the grid ------------------------------------------------------------------------------
def run_cells(cells: Iterable[Cell], evaluate: Callable[[Cell], dict], cache: Cache | None = None, *,
              dist: Dist | None = None, shard: str = "cells", progress: bool = False, desc: str = "bench",
              log: Callable[[str], None] | None = None) -> list[dict]:
    """The record of every cell, in order: from ``cache`` when it holds it, else ``evaluate(cell)``.

    Each record gets ``label``, ``group``, ``target_nfe`` and ``seconds`` filled in (unless ``evaluate``
    set them). ``shard="cells"``: with several ranks each evaluates every ``world``-th missing cell and the
    records are exchanged after each round; ``shard="seeds"``: every rank takes part in every cell (the
    task splits the samples) and rank 0's record is kept. Rank 0's cache decides what is missing (it is
    sent to the other ranks first), so every rank runs the same rounds and returns the same records.
    ``log`` (rank 0 only) hears ``resumed: K of N cells from PATH`` when the cache already held some.
    """
    from tqdm.auto import tqdm

    if shard not in ("cells", "seeds"):
        raise ValueError(f"shard must be 'cells' or 'seeds' (got {shard!r})")
    dist = dist or Dist()
    cache = cache if cache is not None else Cache(None, {})
    cells = list(cells)
    if dist.world > 1:
        held = dist.gather_objects({c.key: cache.get(c) for c in cells if cache.get(c) is not None})[0]
        for cell in cells:
            cache.records.pop(cell.key, None)
        cache.records.update(held)
    missing = [c for c in cells if cache.get(c) is None]
    if log is not None and dist.main and len(missing) < len(cells):
        log(f"resumed: {len(cells) - len(missing)} of {len(cells)} cells from {cache.path or 'memory'}")
    bar = tqdm(total=len(cells), initial=len(cells) - len(missing), desc=desc,
               disable=not progress or not dist.main)
    step = dist.world if shard == "cells" else 1
    for start in range(0, len(missing), step):
        batch = missing[start:start + step]
        mine = batch[dist.rank] if shard == "cells" and dist.rank < len(batch) else (batch[0] if shard == "seeds" else None)
        record = None
        if mine is not None:
            begin = time.perf_counter()
            record = dict(evaluate(mine))
            record.setdefault("seconds", time.perf_counter() - begin)
            record.setdefault("label", mine.label)
            record.setdefault("group", mine.group)
            record.setdefault("target_nfe", mine.nfe)
        if shard == "cells":
            for cell, rec in zip(batch, dist.gather_objects(record)):
                if rec is not None:
                    cache.put(cell, rec)
        else:
            cache.put(batch[0], dist.gather_objects(record)[0])
        bar.update(len(batch))
    bar.close()
    return [dict(cache.get(c)) for c in cells]


# --- reports ------------------------------------------------------------------------------------------
def markdown_table(records: list[dict], metric: str, nfes: Iterable[int], *, title: str = "", fmt: str = "{:.3g}",
                   best: str | None = None) -> str:
    """``| label | NFE … |`` with ``metric`` per target NFE; ``(n)`` after a value whose actual NFE differs.
    ``best="min"``/``"max"`` puts the best value of each column in bold."""
    nfes = list(nfes)
    labels = list(dict.fromkeys(r["label"] for r in records))
    cell = {(r["label"], r["target_nfe"]): r for r in records}
    winners = {}
    if best in ("min", "max"):
        for n in nfes:
            values = [cell[(lb, n)][metric] for lb in labels if (lb, n) in cell and _finite(cell[(lb, n)].get(metric))]
            if values:
                winners[n] = (min if best == "min" else max)(values)
    lines = [f"| {title or metric} | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for label in labels:
        out = []
        for n in nfes:
            r = cell.get((label, n))
            if r is None or r.get(metric) is None:
                out.append("—")
                continue
            text = fmt.format(r[metric]) + ("" if r.get("nfe") in (None, n) else f" ({r['nfe']})")
            out.append(f"**{text}**" if winners.get(n) == r[metric] else text)
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_curves(records: list[dict], panels: list[tuple[str, str]], path, *, title: str = "", logy: bool = True,
                hlines: dict | None = None, suptitle: str = "", size: tuple[float, float] = (7.5, 5.5)) -> None:
    """One panel per ``(metric, y label)``, each ``size`` inches, drawn by ``draw_curves``, in one atomically
    written PNG."""
    from matplotlib.figure import Figure

    from revsde.files import save_figure

    fig = Figure(figsize=(size[0] * len(panels), size[1]), layout="constrained")
    draw_curves(fig.subplots(1, len(panels), squeeze=False)[0], records, panels, title=title, logy=logy, hlines=hlines)
    if suptitle:
        fig.suptitle(suptitle)
    save_figure(fig, path)


def draw_curves(axes, records: list[dict], panels: list[tuple[str, str]], *, title: str = "", logy: bool = True,
                hlines: dict | None = None) -> None:
    """Into ``axes`` (one per panel): metric versus the NFE actually used, log x (and y unless ``logy=False``),
    one line per label (revsde's MR Sampler and DMCMC solid, diffusers dashed, others dotted), the legend
    in the last panel. ``hlines`` maps a name to a horizontal reference drawn in every panel, as
    ``{name: {metric: value, …}}``, black dashed unless the dict also gives ``color`` or ``linestyle``."""
    import matplotlib
    import matplotlib.ticker

    labels = list(dict.fromkeys(r["label"] for r in records))
    colors = matplotlib.colormaps["tab20"]
    nfes = sorted({r["nfe"] for r in records if r.get("nfe")})
    for ax, (metric, ylabel) in zip(axes, panels):
        for k, label in enumerate(labels):
            pts = sorted((r["nfe"], r[metric]) for r in records
                         if r["label"] == label and r.get("nfe") and _finite(r.get(metric)))
            if not pts:
                continue
            style = "--" if label.startswith("diffusers") else ("-" if label.startswith(("mrs", "dmcmc")) else ":")
            ys = [max(p[1], 1e-12) if logy else p[1] for p in pts]
            ax.plot([p[0] for p in pts], ys, style, marker="os^vD"[k % 5], ms=3, color=colors(k % 20), label=label)
        for name, values in (hlines or {}).items():
            if _finite(values.get(metric)):
                ax.axhline(values[metric], color=values.get("color", "black"), linestyle=values.get("linestyle", "--"),
                           linewidth=1, label=name)
        ax.set_xscale("log")
        if 0 < len(nfes) <= 8:  # label the NFEs run as plain numbers (a short log axis crowds 2×10⁰ 3×10⁰ …)
            ax.set_xticks(nfes, [str(n) for n in nfes])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {ylabel}" if title else ylabel, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[len(panels) - 1].legend(fontsize=7)
