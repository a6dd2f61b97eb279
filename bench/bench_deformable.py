"""Mask2Former's deformable attention on the CPU: sampling as GridSample against the edgeseg::FlowWarp op.

One random-weight Mask2Former (seed 0, CamVid's 11 classes) exported twice with the TorchScript exporter
(opset 17, dynamic sizes): `sampler=gridsample` as exported, and `sampler=flowwarp` after the FlowWarp pass,
which turns each deformable sampler into an edgeseg::FlowWarp node. Both run on ONNX Runtime CPU on the same
input, timed in turns (median of --runs after warm-up), with the largest logit difference between them.
Needs the [train] extra and the built op (`edgeseg kernels build`).

    python bench/bench_deformable.py [--threads 2] [--sizes 360x480,720x960] [--runs 10]
"""
from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgeseg.benchmark.machine import cpu_line
from edgeseg.data import CAMVID
from edgeseg.export.flowwarp import count_flowwarp, fuse_flowwarp
from edgeseg.models import create
from edgeseg.runtime.backends.ort import ort_session
from edgeseg.sizes import parse_hw_list


def exported(sampler: str) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = create("mask2former", CAMVID.num_classes, sampler=sampler).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, 3, 96, 128),), buf, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {2: "H", 3: "W"}, "logits": {2: "H", 3: "W"}})
    graph = onnx.load_from_string(buf.getvalue())
    return fuse_flowwarp(graph, keep_others=True)[0] if sampler == "flowwarp" else graph


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: 2)")
    p.add_argument("--sizes", default="360x480,720x960", help="input sizes HxW (default: 360x480,720x960)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per form and size (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default: 2)")
    args = p.parse_args()
    graphs = {s: exported(s) for s in ("gridsample", "flowwarp")}
    sessions = {s: ort_session(g, threads=args.threads) for s, g in graphs.items()}
    samplers = {s: sum(n.op_type == "GridSample" for n in g.graph.node) for s, g in graphs.items()}
    print(f"Mask2Former (random weights), ONNX Runtime {ort.__version__} CPU, {args.threads} threads, "
          f"{platform.machine()}, {cpu_line()}, median of {args.runs} runs after {args.warmup} warm-up")
    print(f"deformable samplers: {samplers['gridsample']} GridSample nodes -> "
          f"{count_flowwarp(graphs['flowwarp'])} FlowWarp nodes\n")
    print("| input | GridSample ms | FlowWarp op ms | speed-up | max abs logit diff |\n|---|--:|--:|--:|--:|")
    rng = np.random.default_rng(0)
    for h, w in parse_hw_list(args.sizes):
        feed = {"images": rng.standard_normal((1, 3, h, w), dtype=np.float32)}
        outs = {s: sess.run(None, feed)[0] for s, sess in sessions.items()}
        for sess in sessions.values():
            for _ in range(args.warmup):
                sess.run(None, feed)
        times: dict[str, list[float]] = {s: [] for s in sessions}
        for _ in range(args.runs):  # in turns, so that load from other processes falls on both alike
            for s, sess in sessions.items():
                t = time.perf_counter()
                sess.run(None, feed)
                times[s].append(1000 * (time.perf_counter() - t))
        g, f = (statistics.median(times[s]) for s in ("gridsample", "flowwarp"))
        diff = float(np.abs(outs["gridsample"] - outs["flowwarp"]).max())
        print(f"| {h}×{w} | {g:.1f} | {f:.1f} | {g / f:.2f}× | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
