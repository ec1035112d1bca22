"""Batch runs over files: inputs from files, folders and globs, an output folder checked before any work,
output paths that never overwrite an input, and a per-file report (a failing file is recorded and the run
goes on). Discovery skips revsde's own temporaries and an output folder that lies inside an input folder,
and a run first removes the temporaries that killed runs left beside its outputs."""
from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from revsde.files import is_temp, remove_stale_temps

#: the most network evaluations a file may be given: far past where any sampler stops improving, and a
#: bound that catches a mistyped number before it asks for an allocation no machine has
MAX_NFE = 10_000


def check_nfe(nfe, least: int = 1) -> None:
    """``ValueError`` unless ``nfe`` is an integer in ``[least, MAX_NFE]``."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not least <= nfe <= MAX_NFE:
        raise ValueError(f"--nfe must be an integer from {least} to {MAX_NFE} (got {nfe!r})")


def fixed_step_sampler(sampler: str, options: dict | None = None):
    """The registry's ``sampler`` with ``options``; ``ValueError`` for an adaptive one (a run's cost is
    given as ``--nfe``, which only a fixed-step sampler can keep)."""
    from revsde import samplers as samplers_mod

    smp = samplers_mod.get(sampler, **(options or {}))
    if smp.adaptive:
        raise ValueError(f"sampler {sampler!r} is adaptive: give a fixed-step sampler for --nfe")
    return smp


def run_settings(recommended: dict | None, sampler: str | None = None, nfe: int | None = None,
                 options: dict | None = None, *, default_nfe: dict | None = None,
                 card: str = "the model card's best setting") -> tuple[str, int, dict, str]:
    """``(sampler, nfe, options, origin)`` of a ``restore`` or ``enhance`` run. What the caller gives wins;
    with no sampler (or the recommended one), no NFE and no options, the model card's ``recommended``
    setting (``{"sampler", "nfe", "options"}``); otherwise ``default_nfe`` of the sampler (10 where it
    names none), and ``mrs`` where no sampler is given or recommended. ``origin`` says which, for the log
    (``card`` for the recommendation)."""
    options = dict(options or {})
    if recommended and sampler in (None, recommended["sampler"]) and nfe is None and not options:
        return recommended["sampler"], int(recommended["nfe"]), dict(recommended.get("options", {})), card
    sampler = sampler or (recommended["sampler"] if recommended else "mrs")
    if nfe is None:
        return sampler, (default_nfe or {}).get(sampler, 10), options, "the default"
    return sampler, nfe, options, "as given"


@dataclass
class FileResult:
    """One input: ``status`` is "ok", "skipped" or "failed" (with ``message``)."""

    input: Path
    output: Path | None
    status: str
    message: str = ""
    seconds: float = 0.0
    nfe: int = 0


@dataclass
class BatchReport:
    """The results of a batch run, in input order; ``done`` names what "ok" means in the summary."""

    done: str = "done"
    results: list[FileResult] = field(default_factory=list)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.results) for s in ("ok", "skipped", "failed")}
        return f"{counts['ok']} {self.done}, {counts['skipped']} skipped, {counts['failed']} failed"


def _inside(path: Path, folder: Path) -> bool:
    return folder in path.parents


def _glob_root(pattern: str) -> Path:
    """The folder a glob searches from: its leading parts without wildcards."""
    parts = Path(pattern).parts
    literal = parts[:next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*literal) if literal else Path(".")


def expand_inputs(inputs: list[str], suffixes, kind: str = "files", *,
                  exclude: str | os.PathLike | None = None) -> list[tuple[Path, Path]]:
    """``(file, name relative to its input)`` for files, folders (their files with one of ``suffixes``,
    recursively) and globs; ``kind`` names those files in messages ("images", "audio files").

    Folders and globs never yield revsde's temporaries (``files.is_temp``), nor files in the folder
    ``exclude`` (the output folder) when it lies inside the folder searched: a second run over a folder
    does not take the first run's outputs for inputs. A temporary named as an input is refused.
    """
    found: list[tuple[Path, Path]] = []
    out = Path(exclude).resolve() if exclude is not None else None

    def wanted(p: Path, root: Path) -> bool:
        if is_temp(p):
            return False
        return out is None or not (_inside(out, root) and _inside(p.resolve(), out))

    for item in inputs:
        magic = glob.has_magic(item)
        matches = sorted(glob.glob(item, recursive=True)) if magic else [item]
        root = _glob_root(item).resolve() if magic else None
        if not matches:
            raise ValueError(f"no file matches {item!r}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                base = path.resolve()
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                               and wanted(p, base))
                found += [(p, p.relative_to(path)) for p in files]
            elif path.exists():
                if magic and not wanted(path, root):
                    continue
                if is_temp(path):
                    raise ValueError(f"input {match!r} is a temporary file of a revsde run, not an input")
                found.append((path, Path(path.name)))
            else:
                raise ValueError(f"input {match!r} does not exist")
    if not found:
        raise ValueError(f"no {kind} ({', '.join(sorted(suffixes))}) among the inputs {inputs}")
    return found


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` if outputs can be written there (it may not exist yet: then the nearest folder above it
    must be writable); else a ``ValueError`` that says what is wrong. Checked before any work."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: is a file, not a folder; give a folder for the outputs "
                         "(it is created if it does not exist)")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"-o {out}: cannot create the folder: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        where = "the folder" if base == out else f"the folder {base}, where it would be created,"
        raise ValueError(f"-o {out}: {where} is not writable (permission denied); choose another -o folder")
    return out


def plan_batch(inputs: list[str], out_dir: str | os.PathLike, suffixes,
               kind: str = "files") -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs of a batch run, everything checked before any work: the output folder is
    usable (``check_output_folder``), the inputs exist (``expand_inputs``, which leaves out the output
    folder), and no output overwrites an input or another output (``plan_outputs``)."""
    check_output_folder(out_dir)
    return plan_outputs(expand_inputs(inputs, suffixes, kind, exclude=out_dir), out_dir)


def plan_outputs(files: list[tuple[Path, Path]], out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs; refuses an output that is an input or two inputs onto one output."""
    out = Path(out_dir)
    inputs = {p.resolve() for p, _ in files}
    pairs, seen = [], {}
    for path, rel in files:
        target = out / rel
        resolved = target.resolve()
        if resolved in inputs:
            raise ValueError(f"the output for {path} would overwrite the input {target}: choose another -o folder")
        if resolved in seen:
            raise ValueError(f"{path} and {seen[resolved]} would both be written to {target}")
        seen[resolved] = path
        pairs.append((path, target))
    return pairs


def run_batch(pairs: list[tuple[Path, Path]], process: Callable[[Path, Path], int], report: BatchReport, *,
              expected: tuple = (OSError,), skip_existing: bool = False, progress: bool = False,
              log: Callable[[str], None] | None = None, desc: str = "files", unit: str = "file") -> BatchReport:
    """Call ``process(input, output) -> nfe`` for each pair, recording each outcome in ``report``.

    An output that exists is skipped with ``skip_existing``. An exception is the file's failure, not
    the run's: ``expected`` ones are reported by their message, others with their type too. First, the
    temporaries that runs killed mid-write left beside the outputs are removed (``remove_stale_temps``).
    """
    from tqdm.auto import tqdm

    for stale in remove_stale_temps(target.parent for _, target in pairs):
        if log is not None:
            log(f"removed {stale}: a temporary file left by an interrupted run")
    for path, target in tqdm(pairs, desc=desc, unit=unit, disable=not progress):
        if skip_existing and target.exists():
            report.results.append(FileResult(path, target, "skipped", "output exists"))
            if log is not None:
                log(f"skipped: {path} ({target} exists)")
            continue
        start = time.perf_counter()
        try:
            nfe = process(path, target)
        except expected as error:
            result = FileResult(path, None, "failed", str(error))
        except Exception as error:  # noqa: BLE001 - one bad file must not stop a batch; it is reported
            result = FileResult(path, None, "failed", f"{type(error).__name__}: {error}")
        else:
            result = FileResult(path, target, "ok", seconds=time.perf_counter() - start, nfe=nfe)
        report.results.append(result)
        if log is not None:
            log(f"{result.status}: {path}" + (f" -> {target}" if result.status == "ok" else f" ({result.message})"))
    return report
