"""Streaming throughput and latency on this machine: inference alone vs the threaded pipeline vs a naive loop.

On the demo clip (101 CamVid frames, 480x360) with an ONNX model: by default the shipped model's INT8 as `edgeseg
demo` runs it (its cached export, made now if the demo has not run). Rows:

  inference only          backend.infer on preprocessed frames, back to back
  sequential loop         read -> preprocess -> infer -> postprocess -> render -> write mp4, one frame at a time
  pipeline, every frame   the same stages in threads (`edgeseg run` on a file): throughput
  pipeline, live          the clip replayed at its 15 FPS with the latest-frame policy (`edgeseg run` on a camera)

Each row is the median of --repeat runs (by FPS), the modes interleaved, after a warm-up. Goal: pipeline FPS >= 0.9x inference only.

    python bench/bench_pipeline.py [--model M.onnx] [--source CLIP] [--threads N] [--repeat 3]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from edgeseg.benchmark.machine import cpu_line
from edgeseg.export_cache import CLIP, export_cached
from edgeseg.meta import classes_of
from edgeseg.runtime.backends import open_backend
from edgeseg.runtime.pipeline import Pipeline
from edgeseg.runtime.postprocess import Postprocessor, upsample
from edgeseg.runtime.preprocess import Preprocessor, model_size
from edgeseg.runtime.render import Renderer
from edgeseg.runtime.sinks import VideoSink
from edgeseg.runtime.sources import open_source


def default_model() -> tuple[Path, str]:
    """The INT8 model `edgeseg demo` runs (its cached export; made now if the demo has not run)."""
    paths, report = export_cached("demo", ("fp32", "int8"))
    graph = "FlowWarp op" if report.get("flowwarp") else "GridSample"
    return paths["int8"], f"shipped demo model, INT8 as `edgeseg demo` runs it (warps: {graph})"


def inference_only(backend, frames: list[np.ndarray], size) -> dict:
    pre = Preprocessor(backend.meta, size)
    inputs = [pre(f) for f in frames[:16]]
    out = np.empty(backend.output_shape(inputs[0].shape), backend.output_dtype)
    for x in inputs[:3]:  # warm-up
        backend.infer(x, out=out)
    times = []
    t0 = time.perf_counter()
    for i in range(len(frames)):
        t = time.perf_counter()
        backend.infer(inputs[i % len(inputs)], out=out)
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return _row(len(frames), wall, times, 0)


def sequential(backend, source: str, size, sink_path: Path) -> dict:
    """The naive loop: one frame through every stage before the next is read. Buffers are reused here too."""
    meta = backend.meta
    src = open_source(source)
    pre, renderer = Preprocessor(meta, size), Renderer(classes_of(meta))
    sink = VideoSink(sink_path, src.fps or 15)
    x = pre.new_input()
    y = np.empty(backend.output_shape(x.shape), backend.output_dtype)
    post = Postprocessor(meta["head"], len(meta["classes"]), y.shape[-2:])
    frame = full = None
    times, n = [], 0
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        got = src.read(frame)
        if got is None:
            break
        frame = got[0]
        backend.infer(pre(frame, out=x), out=y)
        full = upsample(post.labels(y), frame.shape[:2], out=full)
        fps = n / (t - t0) if n else 0.0
        sink.write(renderer(frame, full, f"{fps:.1f} FPS | sequential"), n)
        times.append(time.perf_counter() - t)
        n += 1
    wall = time.perf_counter() - t0
    sink.close()
    src.close()
    return _row(n, wall, times, 0)


def pipeline(backend, source: str, size, sink_path: Path, live: bool) -> dict:
    src = open_source(source, rate=15 if live else None)
    p = Pipeline(src, backend, [VideoSink(sink_path, src.fps or 15)], size=size, policy="latest" if live else "all", status=False)
    s = p.run()
    return {"frames": s["frames"], "fps": s["frames"] / s["wall_s"], "p50": s["latency_ms"]["p50"],
            "p99": s["latency_ms"]["p99"], "dropped": s["dropped"]}


def _row(n: int, wall: float, times: list[float], dropped: int) -> dict:
    ms = np.asarray(times) * 1e3
    return {"frames": n, "fps": n / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "dropped": dropped}


def median_runs(modes: dict, repeat: int) -> dict:
    """Each mode `repeat` times, interleaved (a drifting machine load hits every mode alike); the median run by FPS."""
    runs = {name: [] for name in modes}
    for _ in range(repeat):
        for name, fn in modes.items():
            runs[name].append(fn())
    return {name: sorted(r, key=lambda x: x["fps"])[len(r) // 2] for name, r in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="an .onnx (default: see above)")
    ap.add_argument("--source", default=str(CLIP), help="a video file (default: the demo clip)")
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own choice)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the median by FPS is shown")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, what = (args.model, str(args.model)) if args.model else default_model()
        backend = open_backend(model, "ort-cpu", args.threads)
        src = open_source(args.source)
        frames = [f.copy() for f, _ in iter(src.read, None)]
        size = model_size(frames[0].shape[:2], backend.meta, backend.preferred_hw)
        rows = median_runs({"inference only": lambda: inference_only(backend, frames, size),
                            "sequential loop": lambda: sequential(backend, args.source, size, tmp / "seq.mp4"),
                            "pipeline, every frame": lambda: pipeline(backend, args.source, size, tmp / "all.mp4", False),
                            "pipeline, live (15 FPS replay)": lambda: pipeline(backend, args.source, size, tmp / "live.mp4", True)},
                           args.repeat)
        backend.close()
    base = rows["inference only"]["fps"]
    print(f"Model: {what}; input {size[0]}x{size[1]}; source {args.source} ({len(frames)} frames, "
          f"{frames[0].shape[1]}x{frames[0].shape[0]}); ONNX Runtime {ort.__version__} CPU, "
          f"threads {args.threads or 'default'}; OpenCV {cv2.__version__}; {cpu_line()}; Python {platform.python_version()}; "
          f"median of {args.repeat} interleaved runs.\n")
    print("| mode | frames | FPS | x inference only | latency p50 ms | latency p99 ms | dropped |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['frames']} | {r['fps']:.2f} | {r['fps'] / base:.2f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['dropped']} |")
    print("\nLatency: inference only = one infer call; otherwise frame read to frame written. 'Every frame' reads a file "
          "ahead of inference, so its latency includes queueing; 'live' drops stale frames instead.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
