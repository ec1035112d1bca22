"""Output files written atomically: readers see the old file or the complete new one, never a torn one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
