"""Model files read safely, checked, and reported in one line.

Every reader of weights goes through here, so a file that cannot be used is a ``ModelFileError`` (a
``ValueError``: ``revsde`` prints it as one line with exit status 2) that names the file and what is
wrong with it, never a parser's traceback, and never a suggestion to load with ``weights_only=False``:

- ``read_metadata`` / ``load_tensors``: ``.safetensors`` files. ``load_tensors`` verifies the checksum of
  the tensors that every file revsde writes carries in its metadata (``CHECKSUM_KEY``, made by
  ``tensors_checksum``; ``save_tensors`` adds it), so weights damaged after they were written fail
  clearly instead of giving garbage. Files without one (other tools' files, older exports) still load.
- ``torch_load``: ``.pt``/``.pth`` files with ``torch.load(weights_only=True)``: tensors and plain values
  only; a file that asks for anything else is refused with the reason.
- ``reading(path)``: a block in which any failure of a parser on ``path`` becomes a ``ModelFileError``.
"""
from __future__ import annotations

import contextlib
import hashlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

#: the metadata key of the tensors' checksum (``tensors_checksum``) in a ``.safetensors`` file revsde writes
CHECKSUM_KEY = "revsde.tensors_sha256"


class ModelFileError(ValueError):
    """A model file that is missing, unreadable or damaged: ``"{what} {path}: {reason}"``."""

    def __init__(self, what: str, path, reason: str):
        super().__init__(f"{what} {path}: {reason}")
        self.what, self.path, self.reason = what, Path(path), reason


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict: each tensor's name, dtype, shape and bytes, in name order (so the same
    weights give the same checksum whatever the file's layout or header order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a ``.safetensors`` file of ``tensors`` with ``metadata`` and their checksum added."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    return save(tensors, metadata={**(metadata or {}), CHECKSUM_KEY: tensors_checksum(tensors)})


def _unsafe_advice_removed(message: str) -> str:
    """torch's weights-only refusal without its advice to reload with ``weights_only=False``: only the reason."""
    keep = []
    for line in message.splitlines():
        line = line.strip()
        if not line or "weights_only" in line or line.startswith(("Please file an issue", "Check the documentation")):
            continue
        keep.append(re.sub(r"^WeightsUnpickler error:\s*", "", line))
    return " ".join(keep) or "it holds more than tensors and plain values"


def _parse_failure(path: Path, error: BaseException) -> str:
    """What a parser's exception means for the user (one line)."""
    from safetensors import SafetensorError

    from .restricted_pickle import RefusedGlobal

    if isinstance(error, SafetensorError):
        return f"not a readable .safetensors file ({error})"
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
        return ("refused: a weights file may hold only tensors and plain values, and this one asks for more "
                f"({_unsafe_advice_removed(str(error))}); revsde never runs code stored in a model file")
    if isinstance(error, RefusedGlobal):
        return f"refused: {error}"
    if isinstance(error, EOFError) or (path.is_file() and path.stat().st_size == 0):
        return "empty or cut short (the file ends before its data does)"
    try:
        with open(path, "rb") as file:
            head = file.read(2)
    except OSError as err:
        return f"cannot read ({err.strerror or err})"
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        return "not a PyTorch checkpoint (neither the zip archive nor the pickle that torch.save writes)"
    return f"not a readable PyTorch checkpoint ({type(error).__name__}: {error})"


@contextlib.contextmanager
def reading(path, what: str = "model file"):
    """Any failure of a parser on ``path`` inside the block is a ``ModelFileError`` naming ``what`` and the
    reason (keep the block to the parser's call: a ``ModelFileError`` raised in it passes as it is)."""
    path = Path(path)
    try:
        yield
    except ModelFileError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a parser raises on these bytes, the file is to blame
        raise ModelFileError(what, path, _parse_failure(path, error)) from None


def _existing(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(what, path, "no such file")
    return path


def read_metadata(path, what: str = "model file") -> dict[str, str]:
    """The metadata of a ``.safetensors`` file (``{}`` if it has none)."""
    from safetensors import safe_open

    path = _existing(path, what)
    with reading(path, what), safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def verify_checksum(tensors: dict[str, torch.Tensor], metadata: dict, path, what: str = "model file") -> None:
    """``ModelFileError`` when ``metadata`` holds a checksum the tensors do not match (none: nothing to check)."""
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None:
        return
    actual = tensors_checksum(tensors)
    if actual != stored:
        raise ModelFileError(what, path, f"the weights are damaged: their checksum is {actual[:16]}…, the file "
                                         f"says {stored[:16]}… (it changed after it was written; copy or export "
                                         "it again)")


def load_tensors(path, device="cpu", what: str = "model file") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file on ``device``, their checksum verified where the file has one."""
    from safetensors.torch import load_file

    path = _existing(path, what)
    metadata = read_metadata(path, what)
    with reading(path, what):
        tensors = load_file(str(path))
    verify_checksum(tensors, metadata, path, what)
    return {k: v.to(device) for k, v in tensors.items()} if str(device) != "cpu" else tensors


def torch_load(path, map_location="cpu", what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)``: tensors and plain values; anything else is refused with
    a ``ModelFileError`` that says why (and never suggests an unsafe load)."""
    path = _existing(path, what)
    with reading(path, what), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols says nothing to the user
        return torch.load(path, map_location=map_location, weights_only=True)
