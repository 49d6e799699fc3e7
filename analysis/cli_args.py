"""Argument parsing shared by both CLIs (`python -m analysis`, `python -m analysis.training`); no heavy imports.

Only the two `__main__` modules use it; it prints nothing itself (argparse writes its own usage errors).

Both print every user error as one line, `error: <subject>: <what>; <fix>`, and exit with code 2: argparse's own
errors too (the subject is then the command). Fractions are written as `0.9` or `90%`; a bare `90` is refused
with a message saying to write `90%` or `0.9`, since a number above 1 is ambiguous (percent or a typo?).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, `error: <prog>: <what>; see <prog> --help`, exit 2."""

    def error(self, message: str) -> NoReturn:
        fix = "" if "; " in message else f"; see {self.prog} --help"
        self.exit(USER_ERROR, f"error: {self.prog}: {message}{fix}\n")


def fraction(text: str) -> float:
    """`0.9` or `90%` -> 0.9, in [0, 1]; a bare number above 1 (`90`) is refused, naming both spellings."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; write a fraction such as 0.9 or 90%") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; write a fraction such as 0.9 or 90%")
    if percent:
        if not 0 <= value <= 100:
            raise argparse.ArgumentTypeError(f"{text} is outside 0%-100%; write a percentage such as 90%")
        return value / 100
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text} is more than 1; write {value:g}% or {value / 100:g}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; write a fraction such as 0.9 or 90%")
    return value


def non_negative(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    """An argparse type: `kind(text)`, finite and >= 0."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low}; give an integer >= {low}")
        return value

    parse.__name__ = "int"
    return parse


def error_line(err: BaseException, subject: str) -> str:
    """`error: <subject>: <what>; <fix>` for a library error; messages that start with their own path keep it."""
    message = " ".join(str(err).split()) or type(err).__name__
    head = message.split(": ", 1)[0]
    if ": " not in message or not ("/" in head or "\\" in head or head == subject or head.endswith(SUFFIXES)):
        message = f"{subject}: {message}"
    if "; " not in message:
        message += "; see --help"
    return f"error: {message}"


SUFFIXES = (".safetensors", ".bin", ".zip", ".json", ".txt", ".gguf")
