"""Output files written atomically: readers see the old file or the complete new one, never a torn one.

The temporaries beside an output are named ``.NAME.revsde-PID.TAG`` (``temp_path``): ``is_temp`` tells
them from inputs, and ``remove_stale_temps`` deletes those whose process has died (a run killed with
SIGKILL leaves them behind), never a running process's. "Running" is judged on this machine: two
machines writing into one shared folder at the same time could take each other's for stale.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

#: ``.NAME.revsde-PID.TAG`` with TAG ``float.wav``, ``part`` or ``XXXXXXXX.tmp`` (``atomic_output``); and the
#: unmarked ``.NAME.PID.float.wav`` / ``.NAME.PID.part`` that ``enhance`` wrote before temporaries were marked
_TEMP = re.compile(r"^\..+\.(?:revsde-(\d+)\.(?:float\.wav|part|[a-z0-9_]+\.tmp)|(\d+)\.(?:float\.wav|part))$")


def temp_path(path: str | os.PathLike, tag: str) -> Path:
    """This process's temporary ``tag`` beside ``path``: ``.NAME.revsde-PID.TAG``."""
    path = Path(path)
    return path.with_name(f".{path.name}.revsde-{os.getpid()}.{tag}")


def temp_owner(path: str | os.PathLike) -> int | None:
    """The process id in a revsde temporary's name; None for any other name."""
    match = _TEMP.match(Path(path).name)
    return None if match is None else int(match.group(1) or match.group(2))


def is_temp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as revsde names its temporaries (never an input)."""
    return temp_owner(path) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a number no process can have: leave the file alone)
    return True


def remove_stale_temps(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the revsde temporaries in ``folders`` (not recursively) whose process no longer runs; returns them."""
    removed = []
    for folder in {Path(f) for f in folders}:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            pid = temp_owner(entry)
            if pid is not None and pid != os.getpid() and entry.is_file() and not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return sorted(removed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` (creating its folder) when the block ends.

    The data goes to a temporary file in the same folder, is flushed to disk, and is then renamed
    over ``path`` with ``os.replace``; if the block raises, the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_path(path, "").name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG to ``path`` atomically."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    with atomic_output(path) as file:
        file.write(buffer.getvalue())


def write_report(out_dir: str | os.PathLike, stem: str, markdown: str, data, plot=None) -> dict[str, Path]:
    """``stem.md`` (``markdown``), ``stem.json`` (``data``) and, given ``plot(path)``, ``stem.png`` in
    ``out_dir``, each written atomically; returns their paths by kind ("md", "json", "png")."""
    import json

    out = Path(out_dir)
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json"}
    with atomic_output(paths["md"]) as file:
        file.write((markdown.rstrip("\n") + "\n").encode())
    with atomic_output(paths["json"]) as file:
        file.write(json.dumps(data, indent=1).encode())
    if plot is not None:
        paths["png"] = out / f"{stem}.png"
        plot(paths["png"])
    return paths
