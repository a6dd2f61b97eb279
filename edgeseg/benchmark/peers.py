"""The runtimes a bench row can measure, behind one call: `peer(images float32 [N,3,H,W]) -> output`.

Each peer takes numpy in and gives numpy out, so every row times the same thing: what an application
calling that runtime waits for. torch and tensorrt are imported only by the rows that use them.
"""
from __future__ import annotations

import time

import numpy as np

from edgeseg.errors import EdgesegError

BACKENDS = ("torch", "compile", "ort", "opencv", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


def unsupported(backend: str, precision: str) -> str | None:
    """Why a combination cannot run by design (a skipped row), or None."""
    if backend in ("torch", "compile") and precision == "int8":
        return "int8 is a Q/DQ ONNX graph: it runs on ort, opencv or tensorrt"
    return None


def tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed here"
    return None


class TorchPeer:
    """PyTorch eager (or torch.compile with the inductor backend) under inference_mode."""

    def __init__(self, checkpoint: str, precision: str, example: np.ndarray, threads: int | None, compile: bool = False):
        import torch

        from edgeseg.models import checkpoint as ckpt

        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model, _ = ckpt.load_model(checkpoint)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.name = "torch-compile" if compile else "torch"
        self.info = {}
        if compile:
            self.model = torch.compile(self.model)
            t = time.perf_counter()
            self(example)  # the first call compiles for this shape
            self.info["compile_s"] = round(time.perf_counter() - t, 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            y = self.model(self.torch.from_numpy(x).to(self.device, self.dtype))
            return y.float().cpu().numpy()

    def device_memory_mb(self) -> float | None:
        if self.device != "cuda":
            return None
        return self.torch.cuda.max_memory_allocated() / 2**20

    def close(self) -> None:
        self.model = None


class BackendPeer:
    """An edgeseg runtime backend (ONNX Runtime through IO binding, or a TensorRT engine): what `edgeseg run` uses."""

    def __init__(self, path: str, backend: str, threads: int | None):
        from edgeseg.runtime.backends import open_backend

        self.backend = open_backend(path, backend, threads=threads)
        self.name = self.backend.name
        self.device = "cpu" if self.name == "ort-cpu" else "cuda"
        self.info = {}
        self._out: dict[tuple, np.ndarray] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self._out.get(x.shape)
        if out is None:
            out = self._out[x.shape] = np.empty(self.backend.output_shape(x.shape), self.backend.output_dtype)
        return self.backend.infer(x, out)

    def device_memory_mb(self) -> float | None:
        return None if self.device == "cpu" else gpu_memory_of_this_process()

    def close(self) -> None:
        self.backend.close()


class OpenCVPeer:
    """OpenCV DNN (cv2.dnn.readNetFromONNX) on its default CPU backend."""

    name, device = "opencv", "cpu"

    def __init__(self, path: str, threads: int | None):
        import cv2

        if threads:
            cv2.setNumThreads(int(threads))
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as e:
            raise EdgesegError(f"OpenCV DNN cannot read the graph: {_cv_error_line(e)}") from None
        self.info = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import cv2

        try:
            self.net.setInput(x)
            return self.net.forward()
        except cv2.error as e:
            raise EdgesegError(f"OpenCV DNN cannot run the graph: {_cv_error_line(e)}") from None

    def device_memory_mb(self) -> None:
        return None

    def close(self) -> None:
        self.net = None


def _cv_error_line(e: Exception) -> str:
    # "OpenCV(5.0.0) /path/file.cpp:61: error: (-210:...) Clip: unsupported depth in function 'typeMax'"
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return text.split(" error: ", 1)[-1]


def gpu_memory_of_this_process() -> float | None:
    """Device memory held by this process (MiB) as nvidia-smi reports it; None without nvidia-smi."""
    import os
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        pid, _, mem = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(mem)
    return None


def open_peer(backend: str, precision: str, files: dict, example: np.ndarray, threads: int | None):
    """files: {"checkpoint": .pt, "onnx": .onnx of this precision, "engine": .engine of this precision}."""
    if backend in ("torch", "compile"):
        return TorchPeer(files["checkpoint"], precision, example, threads, compile=backend == "compile")
    if backend == "ort":
        return BackendPeer(files["onnx"], "auto", threads)
    if backend == "opencv":
        return OpenCVPeer(files["onnx"], threads)
    if backend == "tensorrt":
        return BackendPeer(files["engine"], "tensorrt", threads)
    raise EdgesegError(f"unknown backend {backend!r}; choose from: {', '.join(BACKENDS)}")
