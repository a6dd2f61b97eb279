"""Inference backends behind one small API: `open_backend(model) -> Backend` with `.meta`, `.name`, `.infer(x)`, `.close()`.

ONNX Runtime runs `.onnx` files (CPU, CUDA or TensorRT execution provider) through IO binding, so the input and
output buffers are the caller's, allocated once. TensorRT engines (`.engine` + `<engine>.json` metadata) run
through runtime/trt.py, imported only when one is opened.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.meta import META_KEY, parse_meta

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
INPUT_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def check_meta(meta: dict, source: str) -> dict:
    """The input description every backend relies on; a clear error when it is unusable."""
    inp = meta["input"]
    if inp.get("layout") not in ("NCHW", "NHWC"):
        raise EdgesegError(f"{source}: metadata input layout {inp.get('layout')!r} is not NCHW or NHWC; re-export the model")
    if inp.get("dtype") not in INPUT_DTYPES:
        raise EdgesegError(f"{source}: metadata input dtype {inp.get('dtype')!r} is not one of {', '.join(INPUT_DTYPES)}; re-export the model")
    if meta["head"] not in ("logits", "argmax"):
        raise EdgesegError(f"{source}: metadata head {meta['head']!r} is not 'logits' or 'argmax'; re-export the model")
    return meta


class Backend:
    """One loaded model. `infer(x)` returns its raw output: logits [N,C,H,W] or, for an argmax head, labels [N,H,W].

    `input_shape` is the graph's input shape with None for dynamic dimensions; `fixed_hw` is (H, W) when the
    model only takes one size. Use as a context manager or call close().
    """

    name = "backend"

    def __init__(self, path: Path, meta: dict, input_shape, input_dtype, output_dtype):
        self.path, self.meta = Path(path), check_meta(meta, str(path))
        self.layout = meta["input"]["layout"]
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else None for d in input_shape)
        self.input_dtype, self.output_dtype = np.dtype(input_dtype), np.dtype(output_dtype)
        want = np.dtype(INPUT_DTYPES[meta["input"]["dtype"]])
        if len(self.input_shape) != 4:
            raise EdgesegError(f"{self.path}: the model input has rank {len(self.input_shape)}, expected 4 ({self.layout}); re-export it")
        if self.input_dtype != want:
            raise EdgesegError(f"{self.path}: the metadata says input {want} but the graph takes {self.input_dtype}; re-export the model")
        c = self.input_shape[self._axes[2]]
        if c not in (None, 3):
            raise EdgesegError(f"{self.path}: the model input has {c} channels at the {self.layout} channel axis; edgeseg runs 3-channel images")

    @property
    def _axes(self) -> tuple[int, int, int]:
        """Positions of H, W and C in the input."""
        return (2, 3, 1) if self.layout == "NCHW" else (1, 2, 3)

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        h, w = (self.input_shape[i] for i in self._axes[:2])
        return (h, w) if h and w else None

    @property
    def preferred_hw(self) -> tuple[int, int] | None:
        """The input size to use when the caller has no preference (a dynamic TensorRT engine's opt size)."""
        return self.fixed_hw

    def describe_input(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.input_shape)
        return f"{self.input_dtype} [{dims}] ({self.layout})"

    def check_input(self, x: np.ndarray) -> None:
        ok = x.ndim == 4 and x.dtype == self.input_dtype and all(d is None or d == s for d, s in zip(self.input_shape, x.shape))
        if not ok or x.shape[self._axes[2]] != 3:
            raise EdgesegError(f"{self.path.name}: input {x.dtype} {list(x.shape)} does not fit the model input "
                               f"{self.describe_input()}; check --size and the model's metadata")

    def infer(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Run the model on x; write into `out` (from output_shape) when given, else into a new array."""
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for this input shape (runs the model once on zeros the first time: a warm-up too)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ort_error_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0].split("] : ", 1)[-1] if str(e).strip() else type(e).__name__


class OrtBackend(Backend):
    """ONNX Runtime session with IO binding: each call binds the caller's buffers, nothing is copied or allocated."""

    def __init__(self, path: Path, name: str, threads: int | None = None):
        import onnxruntime as ort

        self.name = name
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        # Idle workers sleep instead of spinning: the pipeline's other stages (decode, render, encode) share these
        # cores. Measured on 2 cores: pipeline FPS up, inference alone no slower (bench/bench_pipeline.py).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = _providers(name)
        self.session = _create_session(ort, path, so, providers)
        requested = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if requested not in self.session.get_providers():
            raise EdgesegError(f"{path}: ONNX Runtime could not start {requested} (see its warning above: CUDA, cuDNN or "
                               f"TensorRT libraries missing?); fix the install or use --backend ort-cpu")
        text = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if text is None:
            raise EdgesegError(f"{path}: no edgeseg metadata in the ONNX (metadata_props['{META_KEY}']); export it with `edgeseg export`")
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
            raise EdgesegError(f"{self.path.name}: inference failed on input {x.dtype} {list(x.shape)}: {_ort_error_line(e)}") from None

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

    def close(self):
        self._io = None
        self.session = None


def _trt_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeseg" / "ort-trt"


def _providers(name: str) -> list:
    if name == "ort-cpu":
        return ["CPUExecutionProvider"]
    if name == "ort-cuda":
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    # Precision lives in the graph (explicit casts, Q/DQ), so no fp16/int8 flags: only the engine cache.
    cache = _trt_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return [("TensorrtExecutionProvider", {"device_id": 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}),
            ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


def _create_session(ort, path: Path, so, providers):
    from edgeseg.kernels import register_ort_ops

    register_ort_ops(so, path)  # models with the edgeseg FlowWarp op need the project's custom-op library
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:
        raise EdgesegError(f"{path}: ONNX Runtime cannot load the model: {_ort_error_line(e)}") from None


def available_ort_providers() -> list[str]:
    import onnxruntime as ort
    return ort.get_available_providers()


def open_backend(model_path, backend: str = "auto", threads: int | None = None) -> Backend:
    """Open an `.onnx` (ONNX Runtime) or a TensorRT `.engine`. backend: auto | ort-cpu | ort-cuda | ort-trt | tensorrt."""
    path = Path(model_path)
    if backend not in BACKENDS:
        raise EdgesegError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not path.is_file():
        raise EdgesegError(f"{path}: model file not found; pass an .onnx or a TensorRT .engine (make one with `edgeseg export`)")
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise EdgesegError(f"{path}: a TensorRT engine runs with --backend tensorrt (or auto), not {backend}")
        from edgeseg.runtime.trt import TensorRTBackend
        return TensorRTBackend(path)
    if suffix != ".onnx":
        raise EdgesegError(f"{path}: unknown model format {suffix!r}; the runtime takes .onnx or .engine (export a .pt with `edgeseg export`)")
    if backend == "tensorrt":
        raise EdgesegError(f"{path}: --backend tensorrt runs engines; build one with `edgeseg build {path} --out MODEL.engine`, or use --backend ort-trt")
    providers = available_ort_providers()
    if backend == "auto":
        backend = "ort-cuda" if "CUDAExecutionProvider" in providers else "ort-cpu"
    need = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}.get(backend)
    if need and need not in providers:
        raise EdgesegError(f"--backend {backend}: this onnxruntime has no {need} (it has {', '.join(providers)}); "
                           f"install onnxruntime-gpu (on a Jetson, the wheel for its JetPack) or use --backend ort-cpu")
    return OrtBackend(path, backend, threads)
