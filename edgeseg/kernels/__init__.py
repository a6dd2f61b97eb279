"""Native FlowWarp kernels (kernels/, top-level CMakeLists.txt): find and load them. Torch-free.

Libraries are looked up in, in order: the kernels cache (`edgeseg.paths.cache_dir("kernels")`: a build folder
or a folder of libraries) and the repository's `build/kernels`. `edgeseg kernels build`
(`edgeseg.kernels.cmake.build()`) configures and builds the checkout's CMake project into the first of those.

The op: ONNX node `FlowWarp` in domain `edgeseg`, version 1 (DESIGN.md). TensorRT's ONNX parser maps a
node it does not know to the plugin creator named by the op type, version "1" and namespace "" (its node
attributes `plugin_version` / `plugin_namespace` override those; the export pass writes neither), so the
TensorRT plugin registers under PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.paths import cache_dir

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
    root = Path(__file__).resolve().parents[2]
    return root if (root / "CMakeLists.txt").is_file() and (root / "kernels").is_dir() else None


def kernels_dir() -> Path:
    """Where `edgeseg kernels build` builds (see edgeseg.paths)."""
    return cache_dir("kernels")


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


# ---------------------------------------------------------------- ONNX Runtime
def register_ort_ops(session_options) -> bool:
    """Register the FlowWarp CPU op library on onnxruntime SessionOptions whenever it is built (as mmdeploy does:
    a model without the op does not notice). Returns whether it was registered."""
    lib = find_library("ort")
    if lib is None:
        return False
    session_options.register_custom_ops_library(str(lib))
    return True


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
