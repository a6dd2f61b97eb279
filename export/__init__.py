"""The export stage: torch -> validated ONNX (fp32, fp16, int8 Q/DQ), FlowWarp plugin graphs, TensorRT engines."""
