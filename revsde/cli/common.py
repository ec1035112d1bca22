"""What every sub-command's parser shares: the ``Parser`` class (one-line errors, help computed when
printed, arguments added when parsed) and the value parsers of ``NAME=VALUE`` flags."""
from __future__ import annotations

import argparse


def parse_value(text: str):
    """``None``/``true``/``false`` (any case), then int, then float, else the string itself."""
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (got {text!r})")
    return key.strip(), parse_value(value.strip())


def parse_mu(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers X,Y (got {text!r})")
    return values


def integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (got {text!r})") from None
    return value


UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def memory_size(text: str) -> int | None:
    """Bytes from ``768M``, ``2G``, ``1.5G``, ``4096`` (K, M, G, T: powers of 1024, a trailing B or iB
    allowed); ``none`` for no limit."""
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    if cleaned in ("NONE", "NO"):
        return None
    unit = cleaned[-1:] if cleaned[-1:] in UNITS else ""
    try:
        value = float(cleaned[: len(cleaned) - len(unit)])
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a size such as 768M, 2G or 4096 (bytes), or none (got {text!r})")
    return int(value * UNITS[unit])


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def add_threads_flag(p) -> None:
    p.add_argument("--threads", type=integer, default=None, metavar="N",
                   help="torch CPU threads (default: torch's, at most the cores available to this process); idle "
                        "threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set), so they do not slow a shared "
                        "machine by spinning")


def apply_threads(args) -> int | None:
    """Set torch's intra-op threads from ``--threads``; without it, torch's own count capped at the cores
    this process may run on (torch counts the machine's cores, a container or ``taskset`` may allow fewer).
    Returns the count in force (``None`` for a command without the flag)."""
    if not hasattr(args, "threads"):
        return None
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1 (got {args.threads})")
    import torch

    threads = args.threads or min(torch.get_num_threads(), available_cores())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line that names the problem and where the help is, not the usage
    block (sub-commands' parsers are of the same class). Help that lists the registries (samplers,
    grids) is computed when it is printed (``lazy_epilog``, ``lazy_help``), and a sub-command whose
    arguments come from its modules adds them when it is parsed (``populate``): building the parser,
    ``revsde --help`` and ``--version`` then need no torch."""

    def __init__(self, *args, lazy_epilog=None, populate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_epilog, self.lazy_help, self.populate = lazy_epilog, {}, populate

    def parse_known_args(self, args=None, namespace=None):
        if self.populate is not None:  # a sub-command whose arguments need its modules: added when it runs
            populate, self.populate = self.populate, None
            populate(self)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        if self.lazy_epilog is not None:
            self.epilog = self.lazy_epilog()
        for action in self._actions:
            if action.dest in self.lazy_help:
                action.help = self.lazy_help[action.dest]()
        return super().format_help()

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def options_of(args) -> dict:
    """The repeated ``--option NAME=VALUE`` as a dict; a name given twice is an error."""
    return option_dict(args.option)


def option_dict(pairs, what: str = "sampler option") -> dict:
    """``(NAME, VALUE)`` pairs of a repeated ``NAME=VALUE`` flag as a dict; ``ValueError`` naming ``what``
    for a name given twice."""
    options = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"{what} {key!r} given twice")
        options[key] = value
    return options
