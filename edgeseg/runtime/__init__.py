"""The lean streaming runtime: numpy, opencv and onnxruntime (or tensorrt) only, never torch.

backends    open_backend(model) -> Backend with .meta, .infer(x), .close()  (ONNX Runtime CPU/CUDA/TensorRT EP,
            native TensorRT engines through runtime/trt.py)
preprocess  one-pass resize + normalise + layout into a preallocated model input
postprocess argmax / confidence into preallocated buffers, nearest upsampling to the frame
render      colour mask, overlay, legend, FPS caption
sources     URI-based inputs (cameras, csi://, rtsp://, video files, image folders and globs)
sinks       display://, video files, image folders, null
pipeline    the threaded capture -> preprocess -> infer -> postprocess -> render/write loop
stats       per-stage timing, latency percentiles, the status line
"""
