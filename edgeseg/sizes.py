"""Image sizes: one parser for every `HxW` option and one rounding to a model's size divisor.

A size is `HEIGHTxWIDTH` (`360x480`); a single number means a square (`512` = 512x512). Every model of the zoo
takes inputs of at least MIN_SIZE pixels a side, and no option accepts more than MAX_SIZE (a typo such as
`100000x100000` would otherwise ask for tens of gigabytes before failing).
"""
from __future__ import annotations

from edgeseg.errors import EdgesegError

MIN_SIZE = 32
MAX_SIZE = 8192


def parse_hw(text: str, *, what: str = "size", min_size: int = MIN_SIZE) -> tuple[int, int]:
    """'360x480' -> (360, 480); '512' -> (512, 512); anything else, or out of range, is one clear error."""
    h, sep, w = str(text).strip().lower().partition("x")
    if not sep:
        w = h
    if not (h.isdigit() and w.isdigit()):
        raise EdgesegError(f"{what} {text!r}: write HEIGHTxWIDTH, e.g. 360x480")
    hw = int(h), int(w)
    if min(hw) < min_size or max(hw) > MAX_SIZE:
        raise EdgesegError(f"{what} {text!r}: height and width must be between {min_size} and {MAX_SIZE} pixels")
    return hw


def parse_hw_list(text: str, *, what: str = "size", min_size: int = MIN_SIZE) -> tuple[tuple[int, int], ...]:
    """'360x480,288x384' -> ((360, 480), (288, 384)), duplicates dropped, order kept."""
    items = [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise EdgesegError(f"{what} {text!r}: give one or more HEIGHTxWIDTH sizes, e.g. 360x480,288x384")
    return tuple(dict.fromkeys(parse_hw(t, what=what, min_size=min_size) for t in items))


def fit(hw: tuple[int, int], divisor: int) -> tuple[int, int]:
    """The nearest size whose sides are multiples of `divisor`, halves rounded up (360 -> 368 for 16), at least one
    divisor: what a frame is resized to and what a benchmark row runs at."""
    d = max(int(divisor or 1), 1)
    return tuple(max(d, int(s / d + 0.5) * d) for s in hw)


def argparse_hw(text: str) -> tuple[int, int]:
    """`type=` for argparse options: the same parser, with argparse's own error line."""
    import argparse

    try:
        return parse_hw(text)
    except EdgesegError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def argparse_hw_list(text: str) -> tuple[tuple[int, int], ...]:
    import argparse

    try:
        return parse_hw_list(text)
    except EdgesegError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
