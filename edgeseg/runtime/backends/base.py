"""The backend contract: one loaded model with an open (constructor) / infer / close life cycle.

A backend takes the model's input tensor (numpy, as the metadata describes it) and returns its raw output: logits
[N,C,h,w] or, for an argmax head, labels [N,H,W]. `infer(x, out)` writes into the caller's buffer; calling the
backend (`backend(x)`) keeps one output buffer per input shape, which is what benchmarks and evaluation want.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError

INPUT_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


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
    device = "cpu"

    def __init__(self, path: Path, meta: dict, input_shape, input_dtype, output_dtype):
        self.path, self.meta = Path(path), check_meta(meta, str(path))
        self.info: dict = {}  # what a benchmark row reports about this backend (e.g. compile time)
        self._outputs: dict[tuple, np.ndarray] = {}
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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """infer(x) into a buffer kept for this input shape (overwritten by the next call of the same shape)."""
        out = self._outputs.get(x.shape)
        if out is None:
            out = self._outputs[x.shape] = np.empty(self.output_shape(x.shape), self.output_dtype)
        return self.infer(x, out)

    def device_memory_mb(self) -> float | None:
        """Device memory this backend holds (MiB), where the device can tell; None on the CPU."""
        return None

    def close(self) -> None:
        self._outputs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
