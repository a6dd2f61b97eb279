"""Native TensorRT: engine deserialisation, device buffers and a stream. TensorRT 8.5+ (the named-tensor API)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.kernels import find_library, load_trt_plugins
from edgeseg.runtime.backends.base import Backend
from edgeseg.runtime.trt import cuda_api, engine_meta, import_tensorrt, numpy_dtype, opt_hw, select_profile


class TensorRTBackend(Backend):
    name, device = "tensorrt", "cuda"
    formats = (".engine", ".plan", ".trt")

    def __init__(self, path: Path, name: str = "tensorrt", threads: int | None = None):
        meta = engine_meta(path)
        trt = import_tensorrt()
        if not hasattr(trt.ICudaEngine, "num_io_tensors"):
            raise EdgesegError(f"TensorRT {trt.__version__} is older than 8.5 (no named-tensor API); run the .onnx with --backend ort-cuda")
        self._cuda = cuda_api()
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

    def device_memory_mb(self) -> float | None:
        from edgeseg.runtime.backends.base import gpu_memory_of_this_process

        return gpu_memory_of_this_process()

    def close(self):
        super().close()
        if self.context is None:
            return
        self._cuda.enter()
        try:
            self._free()
            self.context = self.engine = None
        finally:
            self._cuda.exit()
        self._cuda.close()
