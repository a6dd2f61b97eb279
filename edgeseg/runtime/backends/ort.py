"""ONNX Runtime: the one session factory of the project, and the backend that runs `.onnx` files through IO binding.

IO binding makes the input and output buffers the caller's, allocated once. The FlowWarp CPU op library is
registered on every session whenever it is built (a model without the op does not notice).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.meta import META_KEY, parse_meta
from edgeseg.paths import cache_dir
from edgeseg.runtime.backends.base import Backend

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}


def error_line(e: Exception) -> str:
    """The useful part of an onnxruntime exception: its first line, without the '[ONNXRuntimeError] : N : X :' prefix."""
    return str(e).strip().splitlines()[0].split("] : ", 1)[-1] if str(e).strip() else type(e).__name__


def providers_for(name: str) -> list:
    """Execution providers of a backend name (ort-cpu | ort-cuda | ort-trt), with the CPU as the fallback."""
    if name == "ort-cpu":
        return ["CPUExecutionProvider"]
    if name == "ort-cuda":
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    # Precision lives in the graph (explicit casts, Q/DQ), so no fp16/int8 flags: only the engine cache.
    cache = cache_dir("engines") / "ort-trt"
    cache.mkdir(parents=True, exist_ok=True)
    return [("TensorrtExecutionProvider", {"device_id": 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}),
            ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


def ort_session(model, *, threads: int | None = None, providers=("CPUExecutionProvider",), optimization: str = "all",
                spinning: bool = True):
    """An onnxruntime.InferenceSession on `model` (path, bytes or onnx.ModelProto).

    `optimization`: disable | basic | extended | all (ONNX Runtime's graph optimisation levels). `spinning=False`
    lets idle workers sleep instead of spinning, for processes whose other threads share the cores.
    """
    import onnxruntime as ort

    from edgeseg.kernels import BUILD_HINT, DOMAIN, OP_TYPE, register_ort_ops

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{optimization.upper()}",
                                          ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = int(threads)
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    registered = register_ort_ops(so)
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    name = f"{model}" if isinstance(model, (str, Path)) else "the model"
    try:
        return ort.InferenceSession(str(model) if isinstance(model, Path) else model, so, providers=list(providers))
    except Exception as e:
        line = error_line(e)
        if not registered and f"{DOMAIN}:{OP_TYPE}" in line.replace("(", ":").replace("::", ":"):
            raise EdgesegError(f"{name} uses the {DOMAIN}::{OP_TYPE} op, which is not built: {BUILD_HINT}") from None
        raise EdgesegError(f"{name}: ONNX Runtime cannot load the model: {line}") from None


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


class OrtBackend(Backend):
    """ONNX Runtime session with IO binding: each call binds the caller's buffers, nothing is copied or allocated."""

    formats = (".onnx",)

    def __init__(self, path: Path, name: str = "ort-cpu", threads: int | None = None):
        self.name = name
        self.device = "cpu" if name == "ort-cpu" else "cuda"
        providers = providers_for(name)
        # Idle workers sleep instead of spinning: the pipeline's other stages (decode, render, encode) share these
        # cores. Measured on 2 cores: pipeline FPS up, inference alone no slower (bench/bench_pipeline.py).
        self.session = ort_session(path, threads=threads, providers=providers, spinning=False)
        requested = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if requested not in self.session.get_providers():
            raise EdgesegError(f"{path}: ONNX Runtime could not start {requested} (see its warning above: CUDA, cuDNN or "
                               f"TensorRT libraries missing?); fix the install or use --backend ort-cpu")
        text = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if text is None:
            raise EdgesegError(f"{path}: no edgeseg metadata in the ONNX (metadata_props['{META_KEY}']); export it with "
                               "`edgeseg export` (a model made elsewhere: `edgeseg export --model it.onnx --classes ...`)")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise EdgesegError(f"{path}: the model has {len(inputs)} inputs; edgeseg runs single-input models ({', '.join(i.name for i in inputs)})")
        inp, outp = inputs[0], outputs[0]
        if inp.type not in ORT_DTYPES or outp.type not in ORT_DTYPES:
            raise EdgesegError(f"{path}: unsupported tensor types {inp.type} -> {outp.type}; re-export the model")
        super().__init__(path, parse_meta(text, str(path)), inp.shape, ORT_DTYPES[inp.type], ORT_DTYPES[outp.type])
        self.input_name, self.output_name = inp.name, outp.name
        self._io = self.session.io_binding()
        self._out_shapes: dict[tuple, tuple] = {}

    def _run(self, x: np.ndarray) -> None:
        try:
            self.session.run_with_iobinding(self._io)
        except Exception as e:  # onnxruntime's own exception types: report the first line, name the model
            raise EdgesegError(f"{self.path.name}: inference failed on input {x.dtype} {list(x.shape)}: {error_line(e)}") from None

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if input_shape not in self._out_shapes:
            self.infer(np.zeros(input_shape, self.input_dtype))
        return self._out_shapes[input_shape]

    def infer(self, x, out=None):
        self.check_input(x)
        x = np.ascontiguousarray(x)
        self._io.bind_input(self.input_name, "cpu", 0, x.dtype, x.shape, x.ctypes.data)
        shape = self._out_shapes.get(x.shape)
        if shape is None:  # first call at this size: ORT allocates, we learn the shape
            self._io.bind_output(self.output_name, "cpu")
            self._run(x)
            y = self._io.copy_outputs_to_cpu()[0]
            self._out_shapes[x.shape] = tuple(y.shape)
            if out is None:
                return y
            np.copyto(out, y)
            return out
        if out is None:
            out = np.empty(shape, self.output_dtype)
        elif out.shape != shape or out.dtype != self.output_dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {self.output_dtype} array of shape {shape}, got {out.dtype} {out.shape}")
        self._io.bind_output(self.output_name, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
        self._run(x)
        return out

    def device_memory_mb(self) -> float | None:
        from edgeseg.runtime.backends.base import gpu_memory_of_this_process

        return None if self.device == "cpu" else gpu_memory_of_this_process()

    def close(self):
        super().close()
        self._io = None
        self.session = None
