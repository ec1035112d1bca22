"""What a benchmark cache's settings are made of: digests of what a cell computes with (files by their
content, modules by their weights, other objects by their attributes) and the package versions, so a
cache written by another model, input or version is never mixed into a new run (``harness.Cache``)."""
from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import torch


def versions(*packages: str) -> dict:
    """revsde's and torch's versions and those of ``packages`` (None where not installed), for a cache's
    settings: a new version may compute other numbers."""
    from importlib import metadata

    from revsde import __version__

    out = {"revsde": __version__, "torch": torch.__version__}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_fingerprint(path: str | os.PathLike) -> str:
    """``name:size:sha256[:16]`` of a file's content: the same file wherever it was copied to."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name}:{path.stat().st_size}:{digest.hexdigest()[:16]}"


def fingerprint(obj) -> str:
    """A digest of what an object computes with, for a cache's settings: a file path by its content; a
    module by its class and ``state_dict``; tensors and arrays by dtype, shape and bytes; other objects
    by their class and attributes, recursively (functions by their qualified name)."""
    digest = hashlib.sha256()
    _feed(digest, obj, set())
    return digest.hexdigest()[:16]


def _feed(digest, obj, seen: set) -> None:
    def put(*parts):
        for part in parts:
            digest.update(str(part).encode() + b"\0")

    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        put(type(obj).__name__, repr(obj))
    elif isinstance(obj, os.PathLike) and Path(obj).is_file():
        put("file", file_fingerprint(obj))
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        put("tensor", t.dtype, tuple(t.shape))
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif type(obj).__module__ == "numpy" and hasattr(obj, "tobytes"):
        put("array", getattr(obj, "dtype", ""), getattr(obj, "shape", ""))
        digest.update(obj.tobytes())
    elif id(obj) in seen:
        put("seen", type(obj).__qualname__)
    elif isinstance(obj, torch.nn.Module):
        seen.add(id(obj))
        put("module", type(obj).__qualname__)
        _feed(digest, dict(obj.state_dict()), seen)
    elif isinstance(obj, dict):
        seen.add(id(obj))
        put("dict", len(obj))
        for key in sorted(obj, key=str):
            put(key)
            _feed(digest, obj[key], seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        seen.add(id(obj))
        put(type(obj).__name__, len(obj))
        for item in sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj:
            _feed(digest, item, seen)
    elif inspect.isroutine(obj):
        put("routine", getattr(obj, "__qualname__", type(obj).__qualname__))
    else:
        seen.add(id(obj))
        put("object", type(obj).__module__, type(obj).__qualname__)
        state = getattr(obj, "__dict__", None)
        if state is None and hasattr(type(obj), "__slots__"):
            state = {k: getattr(obj, k) for k in type(obj).__slots__ if hasattr(obj, k)}
        if state is not None:
            _feed(digest, dict(state), seen)
        elif " at 0x" not in repr(obj):  # a value such as torch.float32; never an address
            put(repr(obj))
