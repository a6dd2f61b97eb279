"""Native TensorRT backend: engine deserialisation, device buffers and a stream (cuda-python, or pycuda).

The logic (metadata sidecar, dtype mapping, profile selection, CUDA error checks) is in plain functions that run
without a GPU; the engine class around them is thin. TensorRT 8.5+ (the named-tensor API) is required.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.kernels import find_library, load_trt_plugins
from edgeseg.meta import META_KEY, parse_meta
from edgeseg.runtime.backends import Backend

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


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise EdgesegError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


class _CudaPython:
    """Device memory, copies and a stream through cuda-python's runtime API (the primary context: any thread)."""

    def __init__(self):
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt
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


def _cuda_api():
    for api in (_CudaPython, _PyCuda):
        try:
            return api()
        except ImportError:
            continue
    raise EdgesegError(f"neither cuda-python nor pycuda is installed; `pip install cuda-python` ({INSTALL_HINT})")


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path):
        meta = engine_meta(path)
        trt = _import_tensorrt()
        if not hasattr(trt.ICudaEngine, "num_io_tensors"):
            raise EdgesegError(f"TensorRT {trt.__version__} is older than 8.5 (no named-tensor API); run the .onnx with --backend ort-cuda")
        self._cuda = _cuda_api()
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        if find_library("trt") is not None:  # engines with the FlowWarp plugin need it registered first
            load_trt_plugins(logger)
        engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise EdgesegError(f"{path}: TensorRT {trt.__version__} cannot load this engine (built by another TensorRT version, "
                               f"for another GPU, or with the FlowWarp plugin, not built here: `edgeseg kernels build`); rebuild it here with `edgeseg build`")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not self._outputs:
            raise EdgesegError(f"{path}: the engine has inputs {inputs} and outputs {self._outputs}; edgeseg runs one input, one output")
        self.input_name, self.output_name = inputs[0], self._outputs[0]
        super().__init__(path, meta, tuple(engine.get_tensor_shape(self.input_name)),
                         numpy_dtype(engine.get_tensor_dtype(self.input_name)), numpy_dtype(engine.get_tensor_dtype(self.output_name)))
        self._out_dtypes = {n: numpy_dtype(engine.get_tensor_dtype(n)) for n in self._outputs}
        self.profiles = [tuple(tuple(s) for s in engine.get_tensor_profile_shape(self.input_name, p))
                         for p in range(engine.num_optimization_profiles)] if None in self.input_shape else []
        self.engine, self.context = engine, engine.create_execution_context()
        self._profile, self._shape, self._out_shape = 0, None, None
        self._buffers: dict[str, int] = {}

    @property
    def preferred_hw(self):
        return self.fixed_hw or opt_hw(self.profiles, self.layout)

    def _prepare(self, shape: tuple) -> None:
        """Select the profile, set the input shape and (re)allocate device buffers, only when the shape changes."""
        if shape == self._shape:
            return
        if self.profiles:
            p = select_profile(self.profiles, shape)
            if p != self._profile:
                self.context.set_optimization_profile_async(p, self._cuda.handle)
                self._profile = p
            if not self.context.set_input_shape(self.input_name, shape):
                raise EdgesegError(f"{self.path.name}: TensorRT refused input shape {list(shape)}")
        self._free()
        sizes = {self.input_name: (shape, self.input_dtype)}
        sizes.update({n: (tuple(self.context.get_tensor_shape(n)), self._out_dtypes[n]) for n in self._outputs})
        for n, (s, dt) in sizes.items():
            self._buffers[n] = self._cuda.malloc(int(np.prod(s)) * np.dtype(dt).itemsize)
            self.context.set_tensor_address(n, self._buffers[n])
        self._shape, self._out_shape = shape, sizes[self.output_name][0]

    def output_shape(self, input_shape):
        self._cuda.enter()
        try:
            self._prepare(tuple(input_shape))
        finally:
            self._cuda.exit()
        return self._out_shape

    def infer(self, x, out=None):
        self.check_input(x)
        x = np.ascontiguousarray(x)
        self._cuda.enter()
        try:
            self._prepare(x.shape)
            if out is None:
                out = np.empty(self._out_shape, self.output_dtype)
            self._cuda.h2d(self._buffers[self.input_name], x)
            if not self.context.execute_async_v3(self._cuda.handle):
                raise EdgesegError(f"{self.path.name}: TensorRT execution failed on input {list(x.shape)}")
            self._cuda.d2h(out, self._buffers[self.output_name])
            self._cuda.sync()
        finally:
            self._cuda.exit()
        return out

    def _free(self) -> None:
        for ptr in self._buffers.values():
            self._cuda.free(ptr)
        self._buffers.clear()

    def close(self):
        if self.context is None:
            return
        self._cuda.enter()
        try:
            self._free()
            self.context = self.engine = None
        finally:
            self._cuda.exit()
        self._cuda.close()
