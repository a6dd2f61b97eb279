"""The export stage: a model -> validated ONNX (fp32, fp16, int8 Q/DQ), FlowWarp plugin graphs, TensorRT engines.

`export_model(model, out_dir, precisions)` is the entry point (a checkpoint, a shipped name, any torch module or an
ONNX file); the steps after fp32 are the passes of `edgeseg.export.passes`, held to one set of `Gates`.
`edgeseg export` and `edgeseg build` are its CLI.
"""
from edgeseg.export.pipeline import ExportOptions, PartialExport, export_model
from edgeseg.export.validate import Gates

__all__ = ["ExportOptions", "Gates", "PartialExport", "export_model"]
