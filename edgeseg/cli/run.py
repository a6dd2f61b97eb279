"""`edgeseg run`: stream a camera, network stream, video or image folder through a model. Lean: no torch."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

HELP = "Run a model on a camera, stream, video or image folder, live (numpy + opencv + onnxruntime/TensorRT; no torch)."

SOURCE_HELP = ("camera index (0), v4l2:///dev/video0, csi://0 (Jetson), rtsp://..., a video file, an image folder, "
               "or a glob such as 'frames/*.png'")
SINK_HELP = ("display://, null, a video file (out.mp4, out.avi), or a folder of frames (DIR/ for JPEGs, 'DIR/*.png'); "
             "repeat for several; unset: display:// when there is a display, else null")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeseg.cli.argtypes import nonnegative_int, pixels, positive_float, positive_int, unit_float
    from edgeseg.runtime.backends import BACKENDS
    from edgeseg.runtime.pipeline import POLICIES
    from edgeseg.runtime.render import VIS_MODES
    from edgeseg.runtime.temporal import TEMPORAL_HELP
    from edgeseg.sizes import argparse_hw

    p.add_argument("--model", required=True, help="an .onnx, a TensorRT .engine (with its <engine>.json metadata), or a "
                   "checkpoint / shipped model name (exported to ONNX once, cached; needs torch)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="what a checkpoint or shipped model is exported to (INT8 calibrated on the demo clip); "
                        "an .onnx or .engine runs as it is")
    p.add_argument("--source", required=True, help=SOURCE_HELP)
    p.add_argument("--sink", action="append", metavar="URI", help=SINK_HELP)
    p.add_argument("--json", type=Path, metavar="FILE", help="write the run summary (frames, fps, latency_ms, stages, dropped) here")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: TensorRT for .engine, else ONNX Runtime on CUDA when available, else CPU")
    p.add_argument("--threads", type=positive_int, help="ONNX Runtime intra-op threads; unset: its own choice")
    p.add_argument("--size", type=argparse_hw, metavar="HxW", help="model input size for models that take any size "
                   "(unset: the frame scaled down to the size the model was trained at, rounded to its size divisor); "
                   "the overlay stays at the frame's resolution")
    p.add_argument("--temporal", default="off", metavar="MODE", help=TEMPORAL_HELP)
    g = p.add_argument_group("input")
    g.add_argument("--input-width", type=pixels, metavar="W", help="deliver frames this wide (cameras are asked for it)")
    g.add_argument("--input-height", type=pixels, metavar="H", help="deliver frames this high (cameras are asked for it)")
    g.add_argument("--rate", type=positive_float, metavar="FPS",
                   help="camera frame rate; files and folders are played at this rate, like a camera (latest-frame policy)")
    g.add_argument("--loop", type=nonnegative_int, nargs="?", const=-1, default=0, metavar="N",
                   help="replay a file or folder N more times (no N: forever)")
    g.add_argument("--max-retries", type=nonnegative_int, default=5, help="reconnect attempts (with backoff) before a lost live source ends the run")
    g.add_argument("--timeout", type=positive_float, default=10.0, metavar="SEC", help="open and read timeout of network streams")
    g.add_argument("--policy", choices=POLICIES, default="auto",
                   help="latest: drop stale frames; all: process every frame; auto: latest for cameras, streams and "
                        "--rate, all for files and folders")
    g.add_argument("--max-frames", type=nonnegative_int, default=0, metavar="N", help="stop after N frames (0: no limit)")
    g = p.add_argument_group("output")
    g.add_argument("--vis", choices=VIS_MODES, default="overlay", help="what the video/display shows")
    g.add_argument("--alpha", type=unit_float, default=0.5, help="class colour opacity of the overlay")
    g.add_argument("--legend", action=argparse.BooleanOptionalAction, default=True, help="draw the legend of classes in view")
    g.add_argument("--caption", action=argparse.BooleanOptionalAction, default=True, help="draw the FPS / latency caption")
    g.add_argument("--save-labels", type=Path, metavar="DIR", help="class-ID PNG per frame at full resolution")
    g.add_argument("--save-confidence", type=Path, metavar="DIR", help="confidence PNG per frame (255 = certain; logits models)")
    g.add_argument("--codec", metavar="FOURCC", help="video codec; unset: mp4v for .mp4/.mkv, MJPG for .avi")
    g.add_argument("--output-rate", type=positive_float, metavar="FPS",
                   help="frame rate written into videos; unset: the source's (frames dropped live are filled in, so "
                        "a video plays as long as the run took)")
    g.add_argument("--quiet", action="store_true", help="no live status line")


def run(args) -> int:
    from edgeseg.runtime.sinks import gui_available
    from edgeseg.runtime.temporal import parse_temporal

    parse_temporal(args.temporal)  # a bad mode ends here, before the model is opened

    sink_uris = args.sink or ["display://" if gui_available() else "null"]
    check_outputs(args.source, sink_uris, args.model, json_path=args.json, labels_dir=args.save_labels,
                  confidence_dir=args.save_confidence, codec=args.codec)
    model = resolve_model(args.model, args.precision)
    summary, pipeline = run_stream(model, args.source, sink_uris, backend=args.backend, threads=args.threads,
                                   source_kw=dict(width=args.input_width, height=args.input_height, rate=args.rate,
                                                  loop=args.loop, max_retries=args.max_retries, timeout_s=args.timeout),
                                   pipeline_kw=dict(labels_dir=args.save_labels, confidence_dir=args.save_confidence,
                                                    vis=args.vis, alpha=args.alpha, legend=args.legend, caption=args.caption,
                                                    size=args.size, policy=args.policy, max_frames=args.max_frames,
                                                    status=not args.quiet, temporal=args.temporal),
                                   codec=args.codec, output_rate=args.output_rate)
    if args.json:
        from edgeseg.fileio import write_json
        write_json(args.json, summary)
    print(format_summary(summary, labels_dir=args.save_labels, confidence_dir=args.save_confidence, json_path=args.json))
    code = 1 if summary["end"].startswith("source lost") else 0
    if pipeline.busy:
        # A stage is stuck in a blocking call (a stalled camera or an inference cut short): everything is
        # written and finalised, so leave without waiting for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def check_outputs(source: str, sink_uris, model: str | None = None, *, json_path=None, labels_dir=None,
                  confidence_dir=None, codec=None) -> None:
    """Before anything is opened: every output can be written, and none is or is inside the source or the model."""
    from edgeseg.outputs import check_output
    from edgeseg.runtime.sinks import parse_sink
    from edgeseg.runtime.sources import parse_source

    spec = parse_source(source)
    inputs = [spec.target] if spec.kind == "video" else sorted({p.parent for p in spec.target}) if spec.kind == "images" else []
    if model and Path(model).is_file():
        inputs.append(model)
    for uri in sink_uris:
        kind, path, _ = parse_sink(uri, codec)
        if path is not None:
            check_output(path, "--sink", folder=kind == "images", inputs=inputs)
    for what, path, folder in (("--json", json_path, False), ("--save-labels", labels_dir, True),
                               ("--save-confidence", confidence_dir, True)):
        if path:
            check_output(path, what, folder=folder, inputs=inputs)


def resolve_model(model: str, precision: str = "fp32") -> str:
    """An .onnx or engine as it is; a checkpoint (.pt) or shipped model name is exported to ONNX at `precision`
    once (cached), which needs torch (the [train] extra): the lean path is to export first and run the .onnx."""
    from edgeseg.runtime.backends import ENGINE_SUFFIXES

    if Path(model).suffix.lower() in (".onnx", *ENGINE_SUFFIXES):
        return model
    from edgeseg.errors import EdgesegError

    try:
        from edgeseg.export_cache import export_cached
        paths, _ = export_cached(model, (precision,))
    except ModuleNotFoundError as e:
        raise EdgesegError(f"{model}: a checkpoint must be exported before it runs, which needs {e.name} (pip install "
                           f"'edgeseg[train]'); or export it elsewhere: `edgeseg export --model {model} --out DIR`") from None
    return str(paths[precision])


def run_stream(model, source_uri, sink_uris, *, backend="auto", threads=None, source_kw=None, pipeline_kw=None,
               codec=None, output_rate=None):
    """Open model, source and sinks, run the pipeline with SIGINT/SIGTERM as a clean stop; (summary, pipeline)."""
    from edgeseg.runtime.backends import open_backend
    from edgeseg.runtime.pipeline import Pipeline
    from edgeseg.runtime.sinks import open_sink
    from edgeseg.runtime.sources import open_source

    stop = threading.Event()
    model_backend = open_backend(model, backend, threads)
    try:
        source = open_source(source_uri, stop=stop, **(source_kw or {}))
    except BaseException:
        model_backend.close()
        raise
    fps = output_rate or source.fps or 30.0
    sinks = []
    try:
        sinks = [open_sink(u, fps=fps, codec=codec) for u in sink_uris]
        pipeline = Pipeline(source, model_backend, sinks, **(pipeline_kw or {}))
    except BaseException:
        source.close()
        model_backend.close()
        raise
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig, reason in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
            handlers[sig] = signal.signal(sig, lambda *_, r=reason: pipeline.request_stop(r))
    try:
        summary = pipeline.run()
        summary["warps"] = warp_path(model)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        if not pipeline.busy:
            model_backend.close()
    return summary, pipeline


def warp_path(model) -> str | None:
    """How the model's flow warps run: "FlowWarp op" (edgeseg::FlowWarp nodes), "GridSample", or None (no warps,
    or an engine). Read from the ONNX bytes (the node's op_type field), so the lean runtime needs no onnx."""
    if Path(model).suffix.lower() != ".onnx":
        return None
    data = Path(model).read_bytes()
    if b"\x22\x08FlowWarp" in data:  # NodeProto.op_type (field 4, length 8)
        return "FlowWarp op"
    if b"\x22\x0aGridSample" in data:
        return "GridSample"
    return None


def format_summary(s: dict, labels_dir=None, confidence_dir=None, json_path=None) -> str:
    lat = s["latency_ms"]
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [f"{s['frames']} frames in {s['wall_s']:.1f} s ({s['end']}) | {s['fps']:.1f} FPS | latency p50 {fmt(lat['p50'])} "
             f"p95 {fmt(lat['p95'])} p99 {fmt(lat['p99'])} ms | dropped {s['dropped']} | corrupt {s['corrupt']}"
             + (f" | reconnects {s['reconnects']}" if s["reconnects"] else ""),
             "stages, mean ms: " + "  ".join(f"{k} {v['mean']:.1f}" for k, v in s["stages"].items()),
             f"model {s['model']} ({s['backend']}, input {s['model_input'][0]}x{s['model_input'][1]}"
             + (f", warps: {s['warps']}" if s.get("warps") else "") + f"), frames {s['frame_size'][0]}x{s['frame_size'][1]}"
             + (" (paced like a camera: latest frame)" if s["live"] and s.get("paced") else "")]
    if s.get("temporal"):
        t = s["temporal"]
        lines.append(f"temporal {t['mode']}: {t['key_frames']} key frames, {t['warped_frames']} warped "
                     f"({t['motion']} flow {t['flow_ms']['p50'] or 0:.1f} ms, {t['warp']} warp {t['warp_ms']['p50'] or 0:.1f} ms p50)")
    written = [o for o in s["outputs"] if o not in ("null", "display://")]
    for label, path in (("labels", labels_dir), ("confidence", confidence_dir), ("summary", json_path)):
        if path:
            written.append(f"{label} {path}")
    if written:
        lines.append("wrote " + ", ".join(written))
    return "\n".join(lines)
