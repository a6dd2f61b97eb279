"""Native FlowWarp kernels (kernels/, top-level CMakeLists.txt): find, build and load them. Torch-free.

Libraries are looked up in, in order: $EDGESEG_KERNELS_DIR (or ~/.cache/edgeseg/kernels when unset; a
build folder or a folder of libraries) and the repository's `build/kernels`. `edgeseg kernels build` (or
`build()`) configures and builds the checkout's CMake project into the first of those.

The op: ONNX node `FlowWarp` in domain `edgeseg`, version 1 (DESIGN.md). TensorRT's ONNX parser maps a
node it does not know to the plugin creator named by the op type, version "1" and namespace "" (its node
attributes `plugin_version` / `plugin_namespace` override those; the export pass writes neither), so the
TensorRT plugin registers under PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgeseg.errors import EdgesegError

DOMAIN = "edgeseg"
OP_TYPE = "FlowWarp"
PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = "FlowWarp", "1", ""

_PREFIX, _SUFFIX = ("", ".dll") if sys.platform == "win32" else ("lib", ".dylib" if sys.platform == "darwin" else ".so")
LIBRARIES = {"ort": f"{_PREFIX}edgeseg_ort_ops{_SUFFIX}", "trt": f"{_PREFIX}edgeseg_trt_plugin{_SUFFIX}"}
CUDA_LIBRARY = f"{_PREFIX}edgeseg_flowwarp_cuda{'.lib' if sys.platform == 'win32' else '.a'}"
SUMMARY_FILE = "edgeseg_kernels.json"  # written by CMakeLists.txt: {"built": [...], "skipped": {target: why}}
BUILD_HINT = "build it with `edgeseg kernels build`"


def source_dir() -> Path | None:
    """The checkout holding CMakeLists.txt and kernels/ (None for an installed wheel, which has no sources)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "CMakeLists.txt").is_file() and (root / "kernels").is_dir() else None


def kernels_dir() -> Path:
    """Where `edgeseg kernels build` builds: $EDGESEG_KERNELS_DIR, else $XDG_CACHE_HOME/edgeseg/kernels."""
    if os.environ.get("EDGESEG_KERNELS_DIR"):
        return Path(os.environ["EDGESEG_KERNELS_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeseg" / "kernels"


def search_dirs() -> list[Path]:
    dirs = [kernels_dir() / "lib", kernels_dir()]
    if (src := source_dir()) is not None:
        dirs.append(src / "build" / "kernels" / "lib")
    return dirs


def find_library(kind: str) -> Path | None:
    """Path of the built library `kind` ("ort": CPU op for ONNX Runtime, "trt": TensorRT plugin), or None."""
    name = LIBRARIES[kind]
    return next((d / name for d in search_dirs() if (d / name).is_file()), None)


def prefer_ort_cpu_op() -> bool:
    """Whether ONNX Runtime here should run a model's FlowWarp graph: the CPU op is built and ONNX Runtime has no
    CUDA provider (the op has no CUDA kernel for ONNX Runtime; on a GPU the GridSample graph stays on the device)."""
    import onnxruntime as ort

    return find_library("ort") is not None and "CUDAExecutionProvider" not in ort.get_available_providers()


# ---------------------------------------------------------------- build
def build(build_dir: str | os.PathLike | None = None, cuda_archs: str | None = None, ort_include: str | None = None,
          tensorrt_root: str | None = None, clean: bool = False, log=print) -> dict:
    """Configure and build the kernels with CMake; returns the summary {"built": [...], "skipped": {target: why}}.

    Re-running is cheap: CMake rebuilds only what changed; ONNX Runtime's headers are fetched once per folder.
    """
    src = source_dir()
    if src is None:
        raise EdgesegError("the kernel sources (kernels/, CMakeLists.txt) are not installed: build from a source checkout of edgeseg")
    cmake = shutil.which("cmake")
    if cmake is None:
        raise EdgesegError("cmake not found: install it (apt-get install cmake, or pip install cmake) and retry")
    out = Path(build_dir).expanduser() if build_dir else kernels_dir()
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
    """The last configure's summary in build_dir (default kernels_dir()); empty when never configured."""
    path = Path(build_dir or kernels_dir()) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {"built": [], "skipped": {}}


def info() -> dict:
    """What is found: each library's path (or None), the CUDA object library, and the last build's summary."""
    cuda = next((d / CUDA_LIBRARY for d in search_dirs() if (d / CUDA_LIBRARY).is_file()), None)
    return {"search_dirs": [str(d) for d in search_dirs()], "ort": _str(find_library("ort")), "trt": _str(find_library("trt")),
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


# ---------------------------------------------------------------- ONNX Runtime
def uses_flowwarp(model) -> bool:
    """Whether an ONNX model (path, bytes or onnx.ModelProto) imports the edgeseg domain or has an edgeseg node.

    Reads the protobuf wire format directly (the runtime has no `onnx` package); the graph's initializers
    are skipped by length, so this is fast on big models.
    """
    if hasattr(model, "opset_import"):  # an onnx.ModelProto
        return any(o.domain == DOMAIN for o in model.opset_import) or any(n.domain == DOMAIN for n in model.graph.node)
    if isinstance(model, (bytes, bytearray, memoryview)):
        buf = memoryview(model)
    else:
        try:
            buf = memoryview(Path(model).read_bytes())
        except OSError as e:
            raise EdgesegError(f"cannot read ONNX model {model}: {e.strerror}") from None
    try:
        for field, value in _fields(buf):
            if field == 8 and _string_field(value, 1) == DOMAIN:  # ModelProto.opset_import[].domain
                return True
            if field == 7:  # ModelProto.graph
                for gfield, node in _fields(value):
                    if gfield == 1 and _string_field(node, 7) == DOMAIN:  # GraphProto.node[].domain
                        return True
    except (IndexError, ValueError):
        raise EdgesegError(f"{model if not isinstance(model, (bytes, bytearray, memoryview)) else 'model bytes'} is not a valid ONNX file") from None
    return False


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, payload) of each length-delimited field of a protobuf message; other wire types are skipped."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated")
            yield key >> 3, buf[i:i + n]
            i += n
        else:
            raise ValueError(f"wire type {wire}")


def _string_field(msg: memoryview, number: int) -> str | None:
    for field, value in _fields(msg):
        if field == number:
            return bytes(value).decode("utf-8", "replace")
    return None


def register_ort_ops(session_options, model) -> bool:
    """Register the FlowWarp CPU op library on onnxruntime SessionOptions when `model` needs it.

    Returns whether it was registered. Raises EdgesegError when the model needs it and it is not built.
    """
    if not uses_flowwarp(model):
        return False
    lib = find_library("ort")
    if lib is None:
        name = model if isinstance(model, (str, os.PathLike)) else "the model"
        raise EdgesegError(f"{name} uses the {DOMAIN}::{OP_TYPE} op but its ONNX Runtime library "
                           f"({LIBRARIES['ort']}) is not built: {BUILD_HINT}")
    session_options.register_custom_ops_library(str(lib))
    return True


def ort_session_options_for(model, threads: int | None = None):
    """New onnxruntime.SessionOptions for `model` (path, bytes or ModelProto): FlowWarp op registered if used,
    intra-op threads set when given."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    register_ort_ops(so, model)
    return so


# ---------------------------------------------------------------- TensorRT
_trt_handle = None


def load_trt_plugins(logger=None) -> Path:
    """Load the FlowWarp TensorRT plugin into TensorRT's plugin registry (for parsing and engine building).

    Returns the library path; raises EdgesegError when it is not built or does not register the creator.
    """
    global _trt_handle
    lib = find_library("trt")
    if lib is None:
        raise EdgesegError(f"the FlowWarp TensorRT plugin ({LIBRARIES['trt']}) is not built: {BUILD_HINT} "
                           "on a machine with TensorRT (set TENSORRT_ROOT if it is not in a standard place)")
    import tensorrt as trt

    if _trt_handle is None:
        _trt_handle = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # its static initialiser registers the creator
    trt.init_libnvinfer_plugins(logger or trt.Logger(trt.Logger.WARNING), "")
    registry = trt.get_plugin_registry()
    find = getattr(registry, "get_creator", None) or registry.get_plugin_creator  # TensorRT >= 10 / 8.x
    if find(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise EdgesegError(f"{lib} loaded but TensorRT has no plugin creator {PLUGIN_NAME!r} version {PLUGIN_VERSION}: "
                           f"rebuild it against this TensorRT ({trt.__version__}) with `edgeseg kernels build --clean`")
    return lib
