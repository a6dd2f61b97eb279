"""TensorRT and CUDA for the runtime and the engine builder alike: the one importer (with one install hint), the
engine sidecar's name and reader, dtype mapping, profile selection, and device buffers through cuda-python (or
pycuda). Plain functions that run without a GPU; the engine backend (runtime/backends/tensorrt.py) and the builder
(export/tensorrt.py) around them are thin.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.meta import META_KEY, parse_meta

INSTALL_HINT = ("on a Jetson TensorRT comes with JetPack (python3-libnvinfer); elsewhere `pip install edgeseg[trt]` "
                "(tensorrt, cuda-python); or run the .onnx with --backend ort-cuda")
# TensorRT DataType names -> numpy; FP8, BF16, INT4 have no numpy type and cannot be an edgeseg I/O tensor.
TRT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
              "INT64": np.int64, "BOOL": np.bool_}


def sidecar_path(engine: Path) -> Path:
    return Path(f"{engine}.json")


def engine_meta(engine: Path) -> dict:
    """The metadata of an engine, from its sidecar `<engine>.json` (the ONNX's metadata dict, or {"edgeseg": dict})."""
    side = sidecar_path(engine)
    try:
        text = side.read_text()
    except OSError:
        raise EdgesegError(f"{side}: the engine's metadata sidecar is missing; build the engine with `edgeseg build`, "
                           f"which writes it next to the engine") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None  # parse_meta reports it
    if isinstance(obj, dict) and isinstance(obj.get(META_KEY), dict):
        text = json.dumps(obj[META_KEY])
    return parse_meta(text, str(side))


def numpy_dtype(trt_dtype) -> np.dtype:
    """tensorrt.DataType (or its name) -> numpy dtype."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1].upper()
    if name not in TRT_DTYPES:
        raise EdgesegError(f"engine tensor type {name} has no numpy equivalent; build the engine with float32/float16/int I/O tensors")
    return np.dtype(TRT_DTYPES[name])


def select_profile(profiles: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]], shape: Sequence[int]) -> int:
    """Index of the first optimisation profile (min, opt, max) whose range holds `shape`."""
    for i, (lo, _, hi) in enumerate(profiles):
        if len(lo) == len(shape) and all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return i
    ranges = "; ".join(f"{list(lo)}..{list(hi)}" for lo, _, hi in profiles)
    raise EdgesegError(f"input {list(shape)} is outside every optimisation profile of the engine ({ranges}); "
                       f"pass a --size inside them or rebuild with `edgeseg build --min/--max`")


def opt_hw(profiles, layout: str) -> tuple[int, int] | None:
    """The (H, W) of the first profile's opt shape: the size a dynamic engine was tuned for."""
    if not profiles:
        return None
    opt = profiles[0][1]
    h, w = (opt[2], opt[3]) if layout == "NCHW" else (opt[1], opt[2])
    return (int(h), int(w))


def check_cuda(ret):
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    err, *values = ret if isinstance(ret, tuple) else (ret,)
    if int(getattr(err, "value", err)) != 0:
        name = getattr(err, "name", str(err))
        raise EdgesegError(f"CUDA call failed: {name}; check the GPU and its driver (nvidia-smi, or tegrastats on a Jetson)")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:  # also an installed stub whose libraries are missing
        raise EdgesegError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


def cuda_runtime():
    """cuda-python's runtime API module (`cuda.bindings.runtime` in cuda-python >= 12.6, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise EdgesegError(f"cuda-python is not installed: `pip install cuda-python` ({INSTALL_HINT})") from None
    return runtime


def gpu_info() -> dict:
    """Name and compute capability of GPU 0."""
    props = check_cuda(cuda_runtime().cudaGetDeviceProperties(0))
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}


class _CudaPython:
    """Device memory, copies and a stream through cuda-python's runtime API (the primary context: any thread)."""

    def __init__(self):
        rt = cuda_runtime()
        self.rt = rt
        self.stream = check_cuda(rt.cudaStreamCreate())
        self.handle = int(self.stream)

    def malloc(self, nbytes: int) -> int:
        return int(check_cuda(self.rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        check_cuda(self.rt.cudaFree(ptr))

    def h2d(self, dst: int, arr: np.ndarray) -> None:
        check_cuda(self.rt.cudaMemcpyAsync(dst, arr.ctypes.data, arr.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def d2h(self, arr: np.ndarray, src: int) -> None:
        check_cuda(self.rt.cudaMemcpyAsync(arr.ctypes.data, src, arr.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def sync(self) -> None:
        check_cuda(self.rt.cudaStreamSynchronize(self.stream))

    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass

    def close(self) -> None:
        check_cuda(self.rt.cudaStreamDestroy(self.stream))


class _PyCuda:
    """The same through pycuda, whose context is per thread: enter()/exit() push and pop it around each call."""

    def __init__(self):
        import pycuda.driver as cuda
        cuda.init()
        self.cuda = cuda
        self.ctx = cuda.Device(0).retain_primary_context()
        self.ctx.push()
        self.stream = cuda.Stream()
        self.handle = self.stream.handle
        self.ctx.pop()
        self._allocs: dict[int, object] = {}

    def malloc(self, nbytes: int) -> int:
        a = self.cuda.mem_alloc(max(int(nbytes), 1))
        self._allocs[int(a)] = a
        return int(a)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def h2d(self, dst: int, arr: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dst, arr, self.stream)

    def d2h(self, arr: np.ndarray, src: int) -> None:
        self.cuda.memcpy_dtoh_async(arr, src, self.stream)

    def sync(self) -> None:
        self.stream.synchronize()

    def enter(self) -> None:
        self.ctx.push()

    def exit(self) -> None:
        self.ctx.pop()

    def close(self) -> None:
        self.ctx.detach()


def cuda_api():
    """Device buffers and a stream: cuda-python, else pycuda."""
    try:
        return _CudaPython()
    except EdgesegError:
        try:
            return _PyCuda()
        except ImportError:
            raise EdgesegError(f"neither cuda-python nor pycuda is installed; `pip install cuda-python` ({INSTALL_HINT})") from None
