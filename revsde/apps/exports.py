"""The built-in models' files: exporting a training checkpoint's EMA weights as safetensors with their
config (and checksum) in the metadata, reading that config back with the format checked, and the table
of revsde's file formats. Inference reads its models through this module; it never imports training."""
from __future__ import annotations

import json
from pathlib import Path

from revsde.files import atomic_output


def load_checkpoint(path) -> dict:
    """A training checkpoint (``torch.load(weights_only=True)``: tensors and plain values only); a file that
    is not one is a ``ModelFileError`` naming it."""
    from revsde.nets.model_files import torch_load

    return torch_load(path, what="training checkpoint")


def checkpoint_config(state: dict, defaults: dict | None = None) -> dict:
    """A checkpoint's training config with ``trained_steps`` and ``elapsed_s``, as an export stores it."""
    return {**(defaults or {}), **state["config"], "trained_steps": int(state["step"]),
            "elapsed_s": float(state["elapsed_s"])}


def export_ema(checkpoint, path, fmt: str, *, defaults: dict | None = None, flat_keys: tuple = ()) -> Path:
    """Write a checkpoint's (path or dict) EMA weights to ``path`` as safetensors. The metadata holds
    ``format`` = ``fmt``, ``config`` as JSON (the training config plus ``trained_steps`` and
    ``elapsed_s``), ``flat_keys`` of it as plain strings for tools that read metadata only, and the
    tensors' checksum (``model_files.CHECKSUM_KEY``), verified whenever the file is loaded."""
    from revsde.nets.model_files import save_tensors

    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    config = checkpoint_config(state, defaults)
    tensors = {k: v.detach().contiguous().clone() for k, v in state["ema"].items()}
    meta = {"format": fmt, "config": json.dumps(config, sort_keys=True)}
    meta.update({k: json.dumps(config[k]) if isinstance(config[k], (dict, list)) else str(config[k])
                 for k in flat_keys})
    path = Path(path)
    with atomic_output(path) as f:
        f.write(save_tensors(tensors, meta))
    return path


def rewrite_config(path, config: dict) -> Path:
    """Replace the ``config`` in an exported file's metadata (the tensors verified first, so a damaged
    file is not given a fresh checksum; the new file's checksum is written with it), atomically."""
    from revsde.nets.model_files import load_tensors, read_metadata, save_tensors

    meta = {**read_metadata(path), "config": json.dumps(config, sort_keys=True)}
    tensors = load_tensors(path)
    path = Path(path)
    with atomic_output(path) as f:
        f.write(save_tensors(tensors, meta))
    return path


#: what each revsde file format holds, and the command that runs it, for a file given to the wrong one
FORMAT_KINDS = {"revsde.restore/1": "restoration model (for `revsde restore`)",
                "revsde.speech/1": "speech model (for `revsde enhance`)",
                "revsde.image/1": "DDPM (ε-prediction) image model (revsde.apps.image.model.load_weights)",
                "revsde.image_flow/1": "rectified-flow image model (revsde.apps.image.model.load_weights)",
                "revsde.noise_classifier/1": "noise-level classifier (for the dmcmc sampler)",
                "revsde.fd_digits/1": "FD-digits feature extractor"}


def read_export_config(path, fmt: str, kind: str, defaults: dict | None = None) -> dict:
    """The config in an exported ``.safetensors`` file; ``ValueError`` naming ``kind`` (and what the file
    is instead) if its format is not ``fmt``, ``ModelFileError`` if the file cannot be read."""
    from revsde.nets.model_files import read_metadata

    meta = read_metadata(path)
    found = meta.get("format")
    if found != fmt:
        what = f"a revsde {FORMAT_KINDS[found]}, not a {kind}" if found in FORMAT_KINDS else f"not a revsde {kind}"
        raise ValueError(f"{path} is {what} (metadata format {found!r}, expected {fmt!r})")
    return {**(defaults or {}), **json.loads(meta["config"])}
