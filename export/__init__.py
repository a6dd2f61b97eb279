"""The export stage: torch -> validated ONNX (fp32, fp16, int8 Q/DQ), FlowWarp plugin graphs, TensorRT engines.

`export_model(checkpoint, out_dir, precisions)` is the entry point; `edgeseg export` and `edgeseg build` are its CLI.
"""
from edgeseg.export.pipeline import ExportOptions, export_model

__all__ = ["ExportOptions", "export_model"]
