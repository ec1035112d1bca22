"""The training loop the built-in models share: optimiser, cosine learning rate, EMA, atomic
resumable checkpoints, a JSON-lines loss log, a progress bar, and a clean stop on Ctrl-C / SIGTERM.

A task supplies the network, a ``batch_loss()`` closure that draws its own batch (from the
``generator`` it was built with) and returns a scalar, and a ``config`` dict; ``fit`` does the rest.
``out_dir/last.pt`` is written atomically every ``checkpoint_every`` steps and when the loop stops;
a later call with the same ``out_dir`` resumes from it bit for bit (weights, EMA, optimiser,
schedule, the data generator's and torch's RNG states, and the ``extra`` objects' states), after
checking that the keys in ``resume_keys`` agree with the checkpoint's config.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from revsde.apps.exports import load_checkpoint
from revsde.files import atomic_output


@dataclass
class TrainResult:
    """Where training stopped: ``checkpoint`` path, ``step`` reached, wall time ``elapsed_s`` over all
    runs, the last logged ``loss``, and whether it was ``interrupted`` (Ctrl-C / SIGTERM / ``stop_at``)."""

    checkpoint: Path
    step: int
    steps: int
    elapsed_s: float
    loss: float | None
    interrupted: bool


def check_positive_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer (got {value!r})")


def cosine(total: int, floor: float) -> Callable[[int], float]:
    """The learning-rate factor: 1 at step 0, cosine-decayed to ``floor`` at ``total``."""
    def factor(step: int) -> float:
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return factor


def save_checkpoint(path: Path, obj: dict) -> None:
    with atomic_output(path) as f:
        torch.save(obj, f)


@contextlib.contextmanager
def stop_requests():
    """A flag set by SIGINT/SIGTERM (main thread only), so the loop can finish its step and checkpoint."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
    if not log_path.exists():
        return
    keep = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_output(log_path) as f:
        f.write("".join(line + "\n" for line in keep).encode())


def _ema_update(ema_state: dict, net: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.is_floating_point() or v.is_complex():
                ema_state[k].lerp_(v, 1 - decay)
            else:
                ema_state[k].copy_(v)


def fit(net: torch.nn.Module, batch_loss: Callable[[], torch.Tensor], config: dict, out_dir, steps: int, *,
        generator: torch.Generator, lr: float, lr_floor: float = 1e-6, ema: float = 0.999,
        optimizer: str = "adamw", clip: float | None = 1.0, checkpoint_every: int = 500, log_every: int = 50,
        progress: bool = True, resume: bool = True, resume_keys: tuple = (), config_defaults: dict | None = None,
        stop_at: int | None = None, extra: dict | None = None, desc: str = "train") -> TrainResult:
    """Train ``net`` on ``batch_loss()`` for ``steps`` steps in total (resuming from ``out_dir/last.pt``).

    ``optimizer``: ``"adamw"`` (β = 0.9, 0.99, no weight decay) or ``"adam"`` (SGMSE+'s). The
    learning rate decays from ``lr`` to ``lr_floor`` over ``steps`` (cosine). After each step the
    EMA moves with decay ``min(ema, (1+n)/(10+n))`` (torch-ema's warm-up, so short runs forget their
    random start). ``extra``: objects with ``state_dict``/``load_state_dict`` saved in the checkpoint.
    A run resumed with another ``steps`` follows the cosine over the new total from where it stands;
    the saved config then records ``lr_history``: ``[[from_step, total], ...]`` since step 0.
    """
    check_positive_ints(steps=steps, checkpoint_every=checkpoint_every, log_every=log_every)
    if not 0 <= ema < 1:
        raise ValueError(f"ema must lie in [0, 1) (got {ema!r})")
    optimizers = {"adamw": lambda p: torch.optim.AdamW(p, lr=lr, betas=(0.9, 0.99), weight_decay=0.0),
                  "adam": lambda p: torch.optim.Adam(p, lr=lr)}
    if optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {', '.join(optimizers)} (got {optimizer!r})")
    extra = extra or {}
    ema_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = optimizers[optimizer](net.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, cosine(steps, lr_floor / lr))

    out_dir = Path(out_dir)
    ckpt_path, log_path = out_dir / "last.pt", out_dir / "train_log.jsonl"
    step, elapsed = 0, 0.0
    resumed = resume and ckpt_path.exists()
    if resumed:
        state = load_checkpoint(ckpt_path)
        saved = {**(config_defaults or {}), **state["config"]}
        diff = {k: (saved.get(k), config.get(k)) for k in resume_keys if saved.get(k) != config.get(k)}
        if diff:
            raise ValueError(f"{ckpt_path} was trained with other settings {diff} (checkpoint, now); use "
                             "another output folder or resume=False (--no-resume) to start afresh")
        net.load_state_dict(state["model"])
        ema_state = {k: v.to(ema_state[k].device) for k, v in state["ema"].items()}  # onto the net's device
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        for name, obj in extra.items():
            obj.load_state_dict(state["extra"][name])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        truncate_log(log_path, step)
        history = saved.get("lr_history") or [[0, saved.get("steps", steps)]]
        if history[-1][1] != steps:  # resumed with another total: the cosine continues on the new one
            history = history + [[step, steps]]
        if len(history) > 1:
            config = {**config, "lr_history": history}
    elif log_path.exists():
        log_path.unlink()

    def checkpoint():
        save_checkpoint(ckpt_path, {
            "config": config, "step": step, "elapsed_s": elapsed, "model": net.state_dict(), "ema": ema_state,
            "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()},
            "extra": {name: obj.state_dict() for name, obj in extra.items()}})

    from tqdm.auto import tqdm

    end = steps if stop_at is None else min(steps, stop_at)
    bar = tqdm(total=steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
    window, last_loss, interrupted = [], None, False
    net.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = step
    with stop_requests() as stop:
        t_run, logged = time.perf_counter(), (step, elapsed)  # (step, elapsed) at the last log line
        while step < end:
            value = batch_loss()
            opt.zero_grad(set_to_none=True)
            value.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
            scheduler.step()
            step += 1
            _ema_update(ema_state, net, min(ema, (1 + step) / (10 + step)))
            window.append(float(value.detach()))
            now = time.perf_counter()
            elapsed += now - t_run
            t_run = now
            bar.update(1)
            if step % 10 == 0 or step == end:
                bar.set_postfix(loss=f"{sum(window[-50:]) / len(window[-50:]):.4g}")
            if step % log_every == 0 or step == end:
                last_loss = sum(window) / len(window)
                rate = (step - logged[0]) / max(elapsed - logged[1], 1e-9)
                logged = (step, elapsed)
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                                        "elapsed_s": round(elapsed, 2), "it_per_s": round(rate, 3)}) + "\n")
                window = []
            if stop["stop"]:
                interrupted = True
                break
            if step % checkpoint_every == 0 and step < end:
                checkpoint()
        if step > start or not resumed:  # a resumed run that trained no step leaves its checkpoint as saved
            checkpoint()
    bar.close()
    return TrainResult(ckpt_path, step, steps, elapsed, last_loss, interrupted or step < steps)


def init_provenance(path: Path, base: dict, config: dict, match: tuple, kept: tuple) -> dict:
    """What a fine-tune records of the model it starts from (``base``, its stored config); ``ValueError``
    unless ``base`` and this run's ``config`` agree on the ``match`` keys. ``kept``: the base's own
    settings the record keeps (its stage's, for the model card)."""
    diff = {k: (base.get(k), config.get(k)) for k in match if base.get(k) != config.get(k)}
    if diff:
        raise ValueError(f"init_from {path} has other settings than this run {diff} (it, this run)")
    return {"from": Path(path).as_posix(), "trained_steps": int(base["trained_steps"]),
            "elapsed_s": round(float(base["elapsed_s"]), 1), **{k: base[k] for k in kept if k in base}}
