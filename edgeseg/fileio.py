"""Atomic, durable writes: every file edgeseg produces appears complete or not at all, and once renamed into
place it survives a power cut (file and folder are fsync'd). Temporaries are named `.<name>.tmp<pid>...`; those
of a process that no longer runs (killed with SIGKILL) are removed by `remove_stale_temporaries`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from edgeseg.errors import EdgesegError

# .last.pt.tmp123  .out.tmp123.mp4  .calibration.tmp123  .export-123
STALE = re.compile(r"^\.(?:.+\.tmp|export-)(\d+)(?:\..*)?$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries in `folder` left by processes that are gone; returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = STALE.match(p.name)
        if m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(path, e: BaseException) -> EdgesegError:
    """One line for a write that failed (disk full, no permission, a read-only file system)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e):
        why = "the disk is full; free space or choose another folder"
    elif isinstance(e, OSError) and e.strerror:
        why = f"{e.strerror.lower()}; choose another path"
    else:
        why = f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; choose another path"
    return EdgesegError(f"{path}: cannot write ({why})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep: str | os.PathLike | None = None):
    """Yield a temporary sibling of `path`; when the block succeeds, fsync it, rename it over `path` and fsync the
    folder. With `keep`, the file being replaced is renamed there first, once the new one is durable. Write errors
    (disk full, permissions) become one EdgesegError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            yield tmp
            fsync_file(tmp)
            if keep is not None and path.exists():
                os.replace(path, keep)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
            if isinstance(e, RuntimeError) and "writ" not in str(e).lower():
                raise
            raise write_error(path, e) from None
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
