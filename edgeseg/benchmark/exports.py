"""The files a row runs, made by the export stage (`export_model`, `build_engine`) and cached by it.

One export per model and precision (and int8 placement), each in its own folder: a precision whose validation
fails then fails its own rows only. Without --data, the export validates and calibrates on seeded noise images
(the random-weight rows measure latency only); the int8 accuracy guard runs for trained models with --data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.benchmark.sources import Source


def noise_images(cache: Path, n: int = 4) -> Path:
    """A folder of seeded noise images: what the export stage validates and calibrates on without data."""
    import cv2

    folder = cache / "noise-images"
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
        path = folder / f"noise{i}.png"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), img)
    return folder


def onnx_file(src: Source, precision: str, target: str, data: Path | None, eval_limit: int | None, cache: Path,
              flowwarp: bool = False) -> Path:
    """The validated ONNX of this precision (target: the int8 placement, "cpu" or "tensorrt"; flowwarp: the graph
    with the edgeseg::FlowWarp op in place of each warp's GridSample subgraph)."""
    from edgeseg.export.pipeline import export_model

    folder = cache / "onnx" / src.checkpoint.stem / (f"{precision}-{target}" if precision == "int8" else precision)
    if flowwarp:
        folder = folder.with_name(folder.name + "-flowwarp")
    options = {"int8_target": target, "name": src.name, "flowwarp_plugin": flowwarp}
    if data is not None:
        options.update(data=str(data), guard=src.trained, guard_images=eval_limit)
    else:
        noise = noise_images(cache)
        options.update(data=str(noise), calib=str(noise), guard=False)
    rep = export_model(str(src.checkpoint), folder, (precision,), progress=False, **options)
    return Path(rep["outputs"][f"{precision}-flowwarp" if flowwarp else precision]["path"])


def has_warps(onnx_path: Path) -> bool:
    import onnx

    return any(n.op_type == "GridSample" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def flowwarp_op_here(backend: str) -> bool:
    """Whether ONNX Runtime rows run the FlowWarp graph: the CPU op is built and ONNX Runtime runs on the CPU (the op
    has no CUDA kernel for ONNX Runtime; TensorRT and OpenCV take the GridSample graph)."""
    from edgeseg.kernels import find_library
    from edgeseg.runtime.backends import available_ort_providers

    return backend == "ort" and find_library("ort") is not None and "CUDAExecutionProvider" not in available_ort_providers()


def engine_file(onnx_path: Path, size: tuple[int, int], batch: int, cache: Path) -> Path:
    """A TensorRT engine for exactly this input shape (built on this GPU, cached by the build stage)."""
    from edgeseg.export.tensorrt import BuildRequest, build_engine

    h, w = size
    out = cache / "engines" / f"{onnx_path.stem}-{h}x{w}-b{batch}.engine"
    build_engine(BuildRequest(onnx=onnx_path, out=out, opt=size, min=size, max=size, batch=(batch, batch, batch)),
                 log=lambda msg: None)
    return out
