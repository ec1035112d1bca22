"""Grid files: a fitted time grid as JSON, with what it was fitted for.

A grid fitted by ``revsde.grids.optimize`` holds for one model, one sampler with its options and one
number of steps. ``save_grid`` writes it (atomically, ``revsde.files.atomic_output``) with the model's
``fingerprint``, the sampler's name and options, the steps and the SDE; ``load_grid`` reads it back as
a float64 tensor, bit for bit, and refuses it, naming both sides, when the model, sampler, options or
steps it is given differ from the file's. Exposed as ``revsde.grids.save_grid`` / ``load_grid``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .files import atomic_output
from .model import ScoreModel

FORMAT, VERSION = "revsde-grid", 1


def _digest_tensor(digest, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _digest_path(digest, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(f"{file.relative_to(path) if path.is_dir() else ''}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


def fingerprint(model) -> str:
    """``sha256:`` + 16 hex digits of what a grid depends on. A ``ScoreModel``: its prediction type, its
    SDE's class and config, the network's ``state_dict``, and, for a network without one (an analytic
    model such as ``nets.gmm.MixtureDenoiser``), the tensors among its attributes' attributes. A path: the
    file's content, or a folder's files (a diffusers pipeline). A ``fingerprint`` string is itself."""
    if isinstance(model, str) and model.startswith("sha256:") and not Path(model).exists():
        return model
    digest = hashlib.sha256()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ValueError(f"cannot fingerprint {str(path)!r}: no such file or folder")
        _digest_path(digest, path)
    elif isinstance(model, ScoreModel):
        sde = model.sde
        digest.update(json.dumps([model.prediction, type(sde).__name__, sde.config()], sort_keys=True,
                                 default=repr).encode())
        net = model.net
        state = net.state_dict() if isinstance(net, torch.nn.Module) else {}
        for name in sorted(state):
            _digest_tensor(digest, name, state[name])
        if not state:
            for name, value in sorted(vars(net).items()):
                inner = vars(value).items() if hasattr(value, "__dict__") and not torch.is_tensor(value) else []
                for key, item in sorted([(name, value)] + [(f"{name}.{k}", v) for k, v in inner]):
                    if torch.is_tensor(item):
                        _digest_tensor(digest, key, item)
    else:
        raise ValueError(f"fingerprint takes a revsde.ScoreModel, a file or folder path, or a 'sha256:…' "
                         f"fingerprint (got {type(model).__name__})")
    return "sha256:" + digest.hexdigest()[:16]


def _sampler_and_options(sampler, options: dict | None):
    """(name, options as JSON values) of a sampler given by name (with ``options``) or as an instance."""
    from .samplers.registry import get  # when called: revsde.samplers (dmcmc) imports revsde.grids, which imports this

    smp = get(sampler, **(options or {}))
    return smp.name, json.loads(json.dumps(smp.options(), default=repr))


def save_grid(path, grid, *, model, sampler, options: dict | None = None, info: dict | None = None) -> Path:
    """Write ``grid`` (``(steps + 1,)``, decreasing) to ``path`` as JSON with ``model``'s fingerprint
    (``fingerprint``: a ``ScoreModel``, a weights file or folder, or the string), the sampler's name and
    options (a name with ``options``, or a ``Sampler``), the steps, the SDE and ``info`` (e.g. the fit's
    settings and losses). Replaces ``path`` atomically; returns it."""
    t = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if t.ndim != 1 or t.shape[0] < 2 or not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"a grid file holds a (steps + 1,) strictly decreasing grid (got shape {tuple(t.shape)})")
    name, opts = _sampler_and_options(sampler, options)
    record = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint(model), "sampler": name,
              "options": opts, "steps": t.shape[0] - 1, "grid": t.tolist()}
    if isinstance(model, ScoreModel):
        record["sde"] = {"class": type(model.sde).__name__, "config": model.sde.config(),
                         "t_min": model.sde.t_min, "t_max": model.sde.t_max}
    if info:
        record["info"] = info
    path = Path(path)
    with atomic_output(path) as file:
        file.write((json.dumps(record, indent=1, default=repr) + "\n").encode())
    return path


def read_grid(path) -> dict:
    """The JSON record of a grid file, its format checked."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the grid file {str(path)!r}: {error}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} is not a revsde grid file (format {FORMAT!r} version {VERSION})")
    return record


def load_grid(path, model=None, sampler=None, steps: int | None = None, options: dict | None = None) -> torch.Tensor:
    """The ``(steps + 1,)`` float64 grid of a file written by ``save_grid``. Each of ``model`` (a
    ``ScoreModel``, a path or a fingerprint), ``sampler`` (a name, with ``options`` compared when given, or a
    ``Sampler``, all options compared) and ``steps`` that is given must match the file's, or it is refused."""
    record = read_grid(path)
    where = f"the grid file {str(path)!r}"
    if model is not None and (have := fingerprint(model)) != record["fingerprint"]:
        raise ValueError(f"{where} was fitted to the model with fingerprint {record['fingerprint']}, not to this "
                         f"model ({have}); fit a grid for this model (revsde tune-grid)")
    if sampler is not None:
        name, opts = _sampler_and_options(sampler, options)
        if name != record["sampler"]:
            raise ValueError(f"{where} was fitted for sampler {record['sampler']!r}, not {name!r}")
        if (options is not None or not isinstance(sampler, str)) and opts != record["options"]:
            diff = {k: (record["options"].get(k), opts.get(k)) for k in sorted(set(opts) | set(record["options"]))
                    if record["options"].get(k) != opts.get(k)}
            raise ValueError(f"{where} was fitted for {name!r} with other options (file, given): {diff}")
    if steps is not None and steps != record["steps"]:
        raise ValueError(f"{where} holds a {record['steps']}-step grid, not {steps} steps")
    return torch.tensor(record["grid"], dtype=torch.float64)
