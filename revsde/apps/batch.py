"""Batch runs over files: inputs from files, folders and globs, output paths that never overwrite an
input, and a per-file report (a failing file is recorded and the run goes on)."""
from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


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


def expand_inputs(inputs: list[str], suffixes, kind: str = "files") -> list[tuple[Path, Path]]:
    """``(file, name relative to its input)`` for files, folders (their files with one of ``suffixes``,
    recursively) and globs; ``kind`` names those files in messages ("images", "audio files")."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            raise ValueError(f"no file matches {item!r}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
                found += [(p, p.relative_to(path)) for p in files]
            elif path.exists():
                found.append((path, Path(path.name)))
            else:
                raise ValueError(f"input {match!r} does not exist")
    if not found:
        raise ValueError(f"no {kind} ({', '.join(sorted(suffixes))}) among the inputs {inputs}")
    return found


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
    the run's: ``expected`` ones are reported by their message, others with their type too.
    """
    from tqdm.auto import tqdm

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
