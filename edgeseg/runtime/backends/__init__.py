"""Inference backends: one registry, one life cycle (open → infer → close), one vocabulary of names.

`open_backend(model, name)` opens a model file with a backend; `run --backend`, `eval --backend` and
`bench --backend` all take these names:

| name | runs | files |
|---|---|---|
| `auto` | the best this machine has for the file: TensorRT for an engine, `ort` for an ONNX, `torch` for a checkpoint | any |
| `ort` | ONNX Runtime with CUDA when the install has it, else the CPU | `.onnx` |
| `ort-cpu`, `ort-cuda`, `ort-trt` | ONNX Runtime with that execution provider | `.onnx` |
| `tensorrt` | native TensorRT | `.engine` (`.plan`, `.trt`) |
| `torch`, `torch-compile` | PyTorch eager / `torch.compile` (never on the lean runtime path) | `.pt`, shipped names |
| `opencv` | OpenCV DNN | `.onnx` |

Adding a backend is one module with a `Backend` subclass (see base.py) and one line in REGISTRY. Modules are
imported only when their backend is opened, so the runtime never pulls in torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import INPUT_DTYPES, Backend, check_meta

# name -> (module, class, the Python package it needs: a missing one skips a bench row with the reason)
REGISTRY = {
    "ort-cpu": ("edgeseg.runtime.backends.ort", "OrtBackend", "onnxruntime"),
    "ort-cuda": ("edgeseg.runtime.backends.ort", "OrtBackend", "onnxruntime"),
    "ort-trt": ("edgeseg.runtime.backends.ort", "OrtBackend", "onnxruntime"),
    "tensorrt": ("edgeseg.runtime.backends.tensorrt", "TensorRTBackend", "tensorrt"),
    "torch": ("edgeseg.runtime.backends.pytorch", "TorchBackend", "torch"),
    "torch-compile": ("edgeseg.runtime.backends.pytorch", "TorchBackend", "torch"),
    "opencv": ("edgeseg.runtime.backends.opencv", "OpenCVBackend", "cv2"),
}
ALIASES = ("auto", "ort")  # resolved per file and machine by resolve()
BACKENDS = ALIASES + tuple(REGISTRY)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".pt", ".pth")

__all__ = ["BACKENDS", "ENGINE_SUFFIXES", "INPUT_DTYPES", "Backend", "check_meta", "open_backend", "resolve",
           "missing_requirement"]


def model_kind(model) -> str:
    """'engine', 'onnx' or 'checkpoint' (a .pt file or a shipped model name)."""
    suffix = Path(str(model)).suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix == ".onnx":
        return "onnx"
    if suffix in CHECKPOINT_SUFFIXES or not suffix:  # no suffix: a shipped model's name
        return "checkpoint"
    raise EdgesegError(f"{model}: unknown model format {suffix!r}; pass an .onnx, a TensorRT .engine or a .pt checkpoint "
                       "(export a .pt with `edgeseg export`)")


def resolve(model, name: str = "auto") -> str:
    """The concrete backend for `model` and a requested name (`auto` and `ort` depend on the file and the machine)."""
    if name not in BACKENDS:
        raise EdgesegError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    kind = model_kind(model)
    if name == "auto":
        name = {"engine": "tensorrt", "onnx": "ort", "checkpoint": "torch"}[kind]
    if name == "ort":
        from edgeseg.runtime.backends.ort import available_providers

        name = "ort-cuda" if "CUDAExecutionProvider" in available_providers() else "ort-cpu"
    wants = {"tensorrt": "engine", "torch": "checkpoint", "torch-compile": "checkpoint"}.get(name, "onnx")
    if kind != wants:
        raise EdgesegError(_wrong_file(model, name, kind))
    return name


def _wrong_file(model, name: str, kind: str) -> str:
    if name == "tensorrt":
        return (f"{model}: --backend tensorrt runs engines; build one with `edgeseg build {model} --out MODEL.engine`, "
                "or use --backend ort-trt")
    if kind == "engine":
        return f"{model}: a TensorRT engine runs with --backend tensorrt (or auto), not {name}"
    if kind == "checkpoint":
        return f"{model}: --backend {name} runs ONNX files; export the checkpoint with `edgeseg export --model {model}`"
    return f"{model}: --backend {name} runs checkpoints (.pt) or shipped model names, not {kind} files"


def missing_requirement(name: str) -> str | None:
    """Why backend `name` cannot run here (its package is missing), or None."""
    if name in ALIASES:
        return None
    module = REGISTRY[name][2]
    try:
        importlib.import_module(module)
    except ImportError:
        return f"{module} is not installed here"
    return None


def open_backend(model, backend: str = "auto", threads: int | None = None, **options) -> Backend:
    """Open a model file (or a shipped model name, for the torch backends) with a backend; see the table above.

    options go to the backend class (e.g. precision="fp16" for torch).
    """
    name = resolve(model, backend)
    path = Path(str(model))
    if model_kind(model) != "checkpoint" and not path.is_file():
        raise EdgesegError(f"{path}: model file not found; pass an .onnx or a TensorRT .engine (make one with `edgeseg export`)")
    if name in ("ort-cuda", "ort-trt"):
        from edgeseg.runtime.backends.ort import PROVIDERS, available_providers

        providers = available_providers()
        if PROVIDERS[name] not in providers:
            raise EdgesegError(f"--backend {name}: this onnxruntime has no {PROVIDERS[name]} (it has {', '.join(providers)}); "
                               f"install onnxruntime-gpu (on a Jetson, the wheel for its JetPack) or use --backend ort-cpu")
    module, cls, _ = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(model if model_kind(model) == "checkpoint" else path,
                                                          name=name, threads=threads, **options)
