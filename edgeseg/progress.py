"""Progress bars on a terminal only: redirected to a log, a bar's carriage returns are noise (commands that run
for long print a plain line per step there instead)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(iterable=None, *, show: bool = True, **kwargs) -> tqdm:
    """tqdm, shown when `show` and stderr is a terminal."""
    return tqdm(iterable, disable=not (show and on_terminal()), **kwargs)
