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
