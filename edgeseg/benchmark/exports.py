"""The files a row runs, made by the export stage (`export_model`, `build_engine`) and cached by it.

One export per model and precision (and int8 placement), each in its own folder: a precision whose validation
fails then fails its own rows only. Without --data, the export validates and calibrates on frames of the shipped
street clip (the random-weight rows measure latency only, so their int8 is not held to an argmax agreement, nor their
fp32 to 99.9 %: random logits are nearly tied); the int8 accuracy guard runs for trained models with --data.
"""
from __future__ import annotations

from pathlib import Path

from edgeseg.benchmark.sources import Source, clip_frames


def onnx_file(src: Source, precision: str, target: str, data: Path | None, eval_limit: int | None, cache: Path) -> dict[str, Path]:
    """The validated ONNX of this precision (target: the int8 placement, "cpu" or "tensorrt") by graph kind: "plain",
    and where `prefer_ort_cpu_op` and the model has flow warps, "flowwarp-plugin" (the edgeseg::FlowWarp op in their
    place)."""
    from edgeseg.export.pipeline import PartialExport, export_model
    from edgeseg.kernels import prefer_ort_cpu_op

    folder = cache / "onnx" / src.checkpoint.stem / (f"{precision}-{target}" if precision == "int8" else precision)
    options = {"int8_target": target, "name": src.name, "flowwarp_plugin": "auto" if prefer_ort_cpu_op() else False}
    if data is not None:
        options.update(data=str(data), guard=src.trained, guard_images=eval_limit)
    else:
        frames = clip_frames(cache)
        options.update(data=str(frames), calib=str(frames), guard=False)
    if not src.trained:  # random logits are nearly tied: int8 flips them at will, fp32 rounding a few (99.89 % for a
        # random SegNet-Basic, whose unpooling switches follow them), and these rows measure latency only; the fp32
        # difference gate still proves the graph
        options["gates"] = {"int8_agreement": 0.0, "fp32_agreement": 0.99}
    try:
        rep = export_model(str(src.checkpoint), folder, (precision,), progress=False, **options)
    except PartialExport as e:  # only the FlowWarp graph failed (GridSamples that are not flow warps): the plain one runs
        if precision not in e.report["outputs"]:
            raise
        rep = e.report
    return {f["graph"]: Path(f["path"]) for f in rep["outputs"].values()}


def graph_for(backend: str, graphs: dict[str, Path]) -> str:
    """The graph a row runs: the FlowWarp one on ONNX Runtime where it was made (OpenCV and TensorRT parse GridSample)."""
    return "flowwarp-plugin" if backend in ("ort", "ort-cpu") and "flowwarp-plugin" in graphs else "plain"


def engine_file(onnx_path: Path, size: tuple[int, int], batch: int, cache: Path) -> Path:
    """A TensorRT engine for exactly this input shape (built on this GPU, cached by the build stage)."""
    from edgeseg.export.tensorrt import BuildRequest, build_engine

    h, w = size
    out = cache / "engines" / f"{onnx_path.stem}-{h}x{w}-b{batch}.engine"
    build_engine(BuildRequest(onnx=onnx_path, out=out, opt=size, min=size, max=size, batch=(batch, batch, batch)),
                 log=lambda msg: None)
    return out
