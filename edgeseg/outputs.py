"""The one check every command runs on the paths it will write, before it starts any work.

An output is refused when it is, or is inside, one of the command's inputs (writing labels into the source image
folder, or a video over the source video, would destroy the input), when a parent on its path is a file, when a
file output names an existing folder (or a folder output an existing file), and when the folder it would be
created in cannot be written. Torch-free: `edgeseg run` uses it.
"""
from __future__ import annotations

import os
from pathlib import Path

from edgeseg.errors import EdgesegError


def _abs(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(path))).resolve(strict=False)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(path: str | os.PathLike, what: str, *, folder: bool = False,
                 inputs: tuple[str | os.PathLike, ...] | list = ()) -> Path:
    """Check that `path` (named `what` in messages, e.g. '--json') can be written without touching `inputs`
    (files, or folders whose whole content is input); returns it unchanged as a Path. Creates nothing."""
    out = _abs(path)
    for inp in inputs:
        src = _abs(inp)
        if out == src or (src.is_dir() and _inside(out, src)):
            where = "is" if out == src else "is inside"
            raise EdgesegError(f"{what} {path}: {where} the input {inp}; writing there would overwrite the input, "
                               f"choose another path")
    if out.exists():
        if folder and not out.is_dir():
            raise EdgesegError(f"{what} {path}: is a file, not a folder; choose a folder")
        if not folder and out.is_dir():
            raise EdgesegError(f"{what} {path}: is a folder; give a file name")
    parent = out if folder and out.is_dir() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EdgesegError(f"{what} {path}: {parent} is a file, so nothing can be written under it; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgesegError(f"{what} {path}: the folder {parent} is not writable; choose another path")
    return Path(path)
