"""Triton Inference Server model repository: one model folder per file (config.pbtxt + version folder 1/)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path, write_text

TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


def tensor_specs(meta: dict, num_classes: int) -> tuple[dict, dict]:
    """(input, output) name, Triton type and dims without the batch dimension; -1 where the size is free."""
    spec = meta["input"]
    inp = {"name": "images", "data_type": TYPES[spec["dtype"]],
           "dims": [-1, -1, 3] if spec["layout"] == "NHWC" else [3, -1, -1]}
    if meta["head"] == "argmax":
        out = {"name": "labels", "data_type": TYPES["int32"], "dims": [-1, -1]}
    else:
        out = {"name": "logits", "data_type": TYPES["float32"], "dims": [num_classes, -1, -1]}
    return inp, out


def config_pbtxt(name: str, platform: str, meta: dict, *, max_batch_size: int = 8, op_library: str | None = None,
                 plugin: str | None = None) -> str:
    inp, out = tensor_specs(meta, len(meta["classes"]))

    def block(kind, t):
        return (f"{kind} [\n  {{\n    name: \"{t['name']}\"\n    data_type: {t['data_type']}\n"
                f"    dims: [ {', '.join(str(d) for d in t['dims'])} ]\n  }}\n]\n")
    text = (f"name: \"{name}\"\nplatform: \"{platform}\"\nmax_batch_size: {max_batch_size}\n"
            + block("input", inp) + block("output", out))
    if op_library:  # the ONNX Runtime backend loads custom-op libraries named here
        text += f"model_operations {{ op_library_filename: \"{op_library}\" }}\n"
    if plugin:  # TensorRT plugins are loaded by the server, not per model
        text += f"# needs the FlowWarp plugin: tritonserver --backend-config=tensorrt,plugins=\"{plugin}\" ...\n"
    return text


def model_name(stem: str) -> str:
    """Triton model names: letters, digits, '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def add_model(repo: str | Path, name: str, model_file: str | Path, meta: dict, *, engine: bool = False,
              max_batch_size: int = 8, op_library: str | None = None, plugin: str | None = None) -> Path:
    """Write repo/name/config.pbtxt and repo/name/1/model.{onnx,plan} (copied atomically); returns the folder."""
    src = Path(model_file)
    if not src.is_file():
        raise EdgesegError(f"{src}: no such file to put in the Triton repository")
    folder = Path(repo) / model_name(name)
    platform = "tensorrt_plan" if engine else "onnxruntime_onnx"
    with atomic_path(folder / "1" / ("model.plan" if engine else "model.onnx")) as tmp:
        shutil.copyfile(src, tmp)
    write_text(folder / "config.pbtxt", config_pbtxt(model_name(name), platform, meta, max_batch_size=max_batch_size,
                                                     op_library=op_library, plugin=plugin))
    return folder
