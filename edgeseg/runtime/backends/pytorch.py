"""PyTorch eager (or torch.compile): edgeseg checkpoints and shipped models, or any module in memory. Never on the
lean runtime path: the registry imports this module only when a torch backend is asked for."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from edgeseg.meta import make_meta
from edgeseg.runtime.backends.base import Backend

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    """`torch` (eager under inference_mode) or `torch-compile` (inductor; the first call at a shape compiles)."""

    formats = (".pt", ".pth")

    def __init__(self, path, name: str = "torch", threads: int | None = None, precision: str = "fp32"):
        from edgeseg.models import checkpoint

        model, rec = checkpoint.load_model(str(path))
        meta = make_meta(rec["arch"], checkpoint.classes_of(rec), size_divisor=model.size_divisor, mean=rec["mean"],
                         std=rec["std"], train_size=rec.get("train_size"))
        self._setup(model, meta, checkpoint.resolve(str(path)), name, threads, precision)

    @classmethod
    def for_module(cls, module: torch.nn.Module, meta: dict | None = None, *, device: str = "cpu",
                   precision: str = "fp32") -> TorchBackend:
        """A module in memory (a model being trained or exported); `meta` defaults to NCHW float RGB logits."""
        self = cls.__new__(cls)
        if meta is None:
            from edgeseg.data import CAMVID

            meta = make_meta(getattr(module, "arch", type(module).__name__), CAMVID,
                             size_divisor=getattr(module, "size_divisor", 1))
        self._setup(module, meta, Path(f"<{type(module).__name__}>"), "torch", None, precision, device)
        return self

    def _setup(self, model, meta, path, name, threads, precision, device=None):
        if threads:
            torch.set_num_threads(int(threads))
        self.name = name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = DTYPES[precision]
        self.model = model.to(self.device, self.dtype).eval()
        super().__init__(path, meta, (None, 3, None, None), np.float32, np.float32)
        if name == "torch-compile":
            self.model = torch.compile(self.model)

    @torch.inference_mode()
    def _forward(self, x: np.ndarray) -> torch.Tensor:
        return self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)).float()

    def output_shape(self, input_shape):
        t = time.perf_counter()
        shape = tuple(self._forward(np.zeros(input_shape, np.float32)).shape)
        if self.name == "torch-compile":
            self.info.setdefault("compile_s", round(time.perf_counter() - t, 1))
        return shape

    def infer(self, x, out=None):
        self.check_input(x)
        y = self._forward(x).cpu().numpy()
        if out is None:
            return y
        np.copyto(out, y)
        return out

    def device_memory_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.device == "cuda" else None

    def close(self):
        super().close()
        self.model = None
