"""FlowWarp on the CPU: the edgeseg::FlowWarp op against ONNX Runtime's GridSample subgraph.

The subgraph is what SFNet's export produces: edgeseg.models.layers.flow_warp exported with the TorchScript
exporter (opset 17, dynamic sizes). Shapes: SFNet-R18's three flow-alignment modules (C=128 features at
1/32 -> 1/16, 1/16 -> 1/8 and 1/8 -> 1/4 of the input). Prints a Markdown table; median of many runs after
warm-up. Needs the [train] extra (torch, onnx) and the built op (`edgeseg kernels build`).

    python bench/bench_flowwarp.py [--threads 2] [--sizes 360x480,1024x2048] [--runs 50]

GPU: not measured by this script (the CUDA kernel is reached through the TensorRT plugin; compare
engines with `edgeseg bench` on a GPU machine).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from edgeseg import kernels
from edgeseg.models.layers import flow_warp
from edgeseg.runtime.backends.ort import ort_session
from edgeseg.sizes import parse_hw_list

CHANNELS = 128  # SFNet-R18's FPN width


class FlowWarp(torch.nn.Module):
    def forward(self, x, flow):
        return flow_warp(x, flow, align_corners=True)


def stride_size(n: int, stride: int) -> int:
    """ResNet's feature size at `stride` (each stride-2 conv/pool with padding rounds up)."""
    while stride > 1:
        n, stride = (n + 1) // 2, stride // 2
    return n


def export_gridsample(path: Path) -> None:
    x, flow = torch.randn(1, CHANNELS, 12, 15), torch.randn(1, 2, 23, 30)
    axes = {0: "N", 2: "h", 3: "w"}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(FlowWarp(), (x, flow), str(path), dynamo=False, opset_version=17, input_names=["X", "FLOW"],
                          output_names=["Y"], dynamic_axes={"X": axes, "FLOW": {0: "N", 2: "H", 3: "W"}, "Y": {0: "N", 2: "H", 3: "W"}})


def flowwarp_model() -> bytes:
    node = helper.make_node(kernels.OP_TYPE, ["X", "FLOW"], ["Y"], domain=kernels.DOMAIN, align_corners=1)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("X", "FLOW", "Y")]
    graph = helper.make_graph([node], "flowwarp", io[:2], io[2:])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(kernels.DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString()


def median_ms(sess, feeds, runs: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="360x480,1024x2048", help="input sizes HxW")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()

    def session(model):
        return ort_session(model, threads=args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gridsample.onnx"
        export_gridsample(path)
        ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
        grid = session(path.read_bytes())
    plugin_model = flowwarp_model()
    plugin = session(plugin_model)

    rng = np.random.default_rng(0)
    print(f"FlowWarp, ONNX Runtime {ort.__version__} CPU, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"median of {args.runs} runs after warm-up")
    print(f"GridSample subgraph ops: {', '.join(ops)}\n")
    print("| input | FAM | X [N,C,h,w] | FLOW [N,2,H,W] | GridSample subgraph ms | FlowWarp op ms | speedup | max abs diff |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for H, W in parse_hw_list(args.sizes):
        for lo, hi in ((32, 16), (16, 8), (8, 4)):
            h, w, Ho, Wo = stride_size(H, lo), stride_size(W, lo), stride_size(H, hi), stride_size(W, hi)
            feeds = {"X": rng.standard_normal((1, CHANNELS, h, w), dtype=np.float32),
                     "FLOW": 2.0 * rng.standard_normal((1, 2, Ho, Wo), dtype=np.float32)}
            diff = np.abs(grid.run(None, feeds)[0] - plugin.run(None, feeds)[0]).max()
            runs = max(10, args.runs * 90 * 120 // (Ho * Wo)) if Ho * Wo > 90 * 120 else args.runs
            t_grid, t_op = median_ms(grid, feeds, runs), median_ms(plugin, feeds, runs)
            print(f"| {H}×{W} | 1/{lo}→1/{hi} | 1×{CHANNELS}×{h}×{w} | 1×2×{Ho}×{Wo} | {t_grid:.3f} | {t_op:.3f} | "
                  f"{t_grid / t_op:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
