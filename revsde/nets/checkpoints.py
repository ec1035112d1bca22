"""Comparing a checkpoint's tensors with a network's: the lines of a clear mismatch error."""
from __future__ import annotations


def first(keys: list[str], n: int = 10) -> str:
    return ", ".join(keys[:n]) + (", …" if len(keys) > n else "")


def count(n: int, what: str, plural: str = "s") -> str:
    return f"{n} {what}" + ("" if n == 1 else plural)


def mismatch(expected: dict, state: dict) -> list[str]:
    """Lines naming the missing, unexpected and mis-shaped keys of ``state`` against ``expected``
    (both name → tensor); empty when they match."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    lines = []
    if missing:
        lines.append(f"  {count(len(missing), 'missing key')}: {first(missing)}")
    if unexpected:
        lines.append(f"  {count(len(unexpected), 'unexpected key')}: {first(unexpected)}")
    if shapes:
        lines.append(f"  {count(len(shapes), 'shape mismatch', 'es')} (checkpoint vs model): "
                     + "; ".join(f"{k} {a} vs {b}" for k, a, b in shapes[:5]) + ("; …" if len(shapes) > 5 else ""))
    return lines


def load_state(net, state: dict, source: str) -> None:
    """``net.load_state_dict(state)``, strict; a one-line ``ValueError`` naming ``source`` and its missing,
    unexpected and mis-shaped keys when the tensors do not fit ``net``."""
    problems = mismatch(net.state_dict(), state)
    if problems:
        raise ValueError(f"{source} does not fit {type(net).__name__}: " + "; ".join(p.strip() for p in problems))
    net.load_state_dict(state)
