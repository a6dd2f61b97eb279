"""`edgeseg kernels build`: configure and build kernels/ with CMake, and report what was built and found."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgeseg import kernels
from edgeseg.errors import EdgesegError


def build(build_dir: str | os.PathLike | None = None, cuda_archs: str | None = None, ort_include: str | None = None,
          tensorrt_root: str | None = None, clean: bool = False, log=print) -> dict:
    """Configure and build the kernels with CMake; returns the summary {"built": [...], "skipped": {target: why}}.

    Re-running is cheap: CMake rebuilds only what changed; ONNX Runtime's headers are fetched once per folder.
    """
    src = kernels.source_dir()
    if src is None:
        raise EdgesegError("the kernel sources (kernels/, CMakeLists.txt) are not installed: build from a source checkout of edgeseg")
    cmake = shutil.which("cmake")
    if cmake is None:
        raise EdgesegError("cmake not found: install it (apt-get install cmake, or pip install cmake) and retry")
    out = Path(build_dir).expanduser() if build_dir else kernels.kernels_dir()
    cache = out / "CMakeCache.txt"
    if clean or (cache.is_file() and not _configured_from(cache, src)):
        shutil.rmtree(out, ignore_errors=True)  # a cache folder: configured from another checkout, or asked to
    out.mkdir(parents=True, exist_ok=True)

    args = [cmake, "-S", str(src), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release"]
    if shutil.which("ninja") and not cache.is_file():
        args += ["-G", "Ninja"]
    for key, value in (("CMAKE_CUDA_ARCHITECTURES", cuda_archs), ("ONNXRUNTIME_INCLUDE_DIR", ort_include), ("TENSORRT_ROOT", tensorrt_root)):
        if value:
            args.append(f"-D{key}={value}")
    with _locked(out):
        log_path = out / "build.log"
        with open(log_path, "w") as f:
            for step in (args, [cmake, "--build", str(out), "--parallel", str(os.cpu_count() or 2)]):
                f.write("$ " + " ".join(step) + "\n")
                f.flush()
                if subprocess.run(step, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                    tail = log_path.read_text().strip().splitlines()[-1:]
                    raise EdgesegError(f"kernel build failed in {out} (see {log_path}): {' '.join(tail)}")
    summary = read_summary(out)
    for target in summary["built"]:
        log(f"built    {target}")
    for target, why in summary["skipped"].items():
        log(f"skipped  {target}: {why}")
    if "cuda_archs_dropped" in summary:
        log(f"note     CUDA architectures {summary['cuda_archs_dropped']}")
    log(f"libraries in {out / 'lib'}")
    return summary


def read_summary(build_dir: str | os.PathLike | None = None) -> dict:
    """The last configure's summary in build_dir (default: the kernels cache); empty when never configured."""
    path = Path(build_dir or kernels.kernels_dir()) / kernels.SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {"built": [], "skipped": {}}


def info() -> dict:
    """What is found: each library's path (or None), the CUDA object library, and the last build's summary."""
    cuda = next((d / kernels.CUDA_LIBRARY for d in kernels.search_dirs() if (d / kernels.CUDA_LIBRARY).is_file()), None)
    return {"search_dirs": [str(d) for d in kernels.search_dirs()], "ort": _str(kernels.find_library("ort")), "trt": _str(kernels.find_library("trt")),
            "cuda": _str(cuda), "last_build": read_summary()}


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _configured_from(cache: Path, src: Path) -> bool:
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith("CMAKE_HOME_DIRECTORY:"):
            return Path(line.split("=", 1)[1]).resolve() == src.resolve()
    return False


class _locked:
    """Exclusive lock on a build folder, so that two processes (e.g. parallel test runs) build one after the other."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"

    def __enter__(self):
        self.f = open(self.path, "w")
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()  # closing releases the lock


