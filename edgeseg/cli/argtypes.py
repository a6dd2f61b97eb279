"""argparse `type=` checkers shared by every subcommand: a bad value ends with argparse's one-line usage error
naming the option, before any work starts."""
from __future__ import annotations

import argparse
import math


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def pixels(text: str) -> int:
    """An image width or height: within the sizes every option accepts (edgeseg.sizes)."""
    from edgeseg.sizes import MAX_SIZE, MIN_SIZE

    value = _number(text, int)
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text}: must be between {MIN_SIZE} and {MAX_SIZE} pixels")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be greater than 0")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def unit_float(text: str) -> float:
    """A value in [0, 1] (opacities, thresholds)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1")
    return value


def float_list(text: str) -> tuple[float, ...]:
    """'0.75,1,1.25' -> positive finite floats."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 0.75,1,1.25")
    return tuple(positive_float(t) for t in items)
