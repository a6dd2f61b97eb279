"""The model metadata that travels inside every ONNX (metadata_props["edgeseg"]) and engine sidecar.

Torch-free: the runtime reads it on a Jetson.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from edgeseg.errors import EdgesegError

if TYPE_CHECKING:  # edgeseg.data imports this module's constants: import ClassInfo lazily to avoid the cycle
    from edgeseg.data.classes import ClassInfo

FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")  # the precisions a graph is exported in (`precision` below)
META_KEY = "edgeseg"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_meta(arch: str, classes: ClassInfo, *, size_divisor: int = 1, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              head: str = "logits", precision: str = "fp32", layout: str = "NCHW", color: str = "RGB",
              dtype: str = "float32", source_sha256: str | None = None, metrics: dict | None = None,
              train_size: list[int] | None = None) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "classes": list(classes.names),
        "palette": [list(c) for c in classes.palette],
        "ignore_index": classes.ignore_index,
        "input": {"layout": layout, "color": color, "dtype": dtype, "mean": list(mean), "std": list(std),
                  "size_divisor": int(size_divisor), "train_size": train_size},
        "head": head,
        "precision": precision,
        "source": {"sha256": source_sha256},
        "metrics": dict(metrics or {}),
    }


def parse_meta(text: str, source: str = "model") -> dict:
    """Parse and check the metadata JSON; a clear error names what is missing."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise EdgesegError(f"{source}: edgeseg metadata is not valid JSON ({e}); re-export the model with `edgeseg export`") from None
    if not isinstance(meta, dict):
        raise EdgesegError(f"{source}: edgeseg metadata is not a JSON object; re-export the model with `edgeseg export`")
    missing = [k for k in ("format_version", "arch", "classes", "palette", "ignore_index", "input", "head") if k not in meta]
    if missing:
        raise EdgesegError(f"{source}: edgeseg metadata lacks {', '.join(missing)}; re-export the model with `edgeseg export`")
    inp = meta["input"]
    lacks = [k for k in ("layout", "dtype", "mean", "std") if not isinstance(inp, dict) or k not in inp]
    if lacks:
        raise EdgesegError(f"{source}: edgeseg metadata input lacks {', '.join(lacks)}; re-export the model with `edgeseg export`")
    for k in ("mean", "std"):
        v = inp[k]
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)) or (k == "std" and 0 in v):
            raise EdgesegError(f"{source}: edgeseg metadata input {k} {v!r} is not three (non-zero) numbers; re-export the model")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
        raise EdgesegError(f"{source}: metadata format {meta['format_version']} is newer than this edgeseg ({FORMAT_VERSION}); upgrade edgeseg")
    classes_of(meta, source)  # names, palette and ignore index checked here, where the file is known
    return meta


def classes_of(meta: dict, source: str = "model metadata") -> ClassInfo:
    """The classes of the metadata, checked as a classes.json is (names, one [r,g,b] per class, ignore index)."""
    from edgeseg.data.classes import ClassInfo
    return ClassInfo.from_dict({"names": meta["classes"], "palette": meta["palette"], "ignore_index": meta["ignore_index"]},
                               source)
