"""The transformer architectures on ONNX Runtime CPU: fp32 against INT8, and which MatMuls INT8 should take.

For each architecture (random weights, seed 0, CamVid's 11 classes) exports through `edgeseg.export.export_model`
(fp32 + int8 in the cpu Q/DQ form, calibrated on --calib-images CamVid train images; no accuracy guard: random
weights have no mIoU to keep; the export leaves the attention MatMuls float: those whose two operands are both
activations, q.k^T, softmax.v, mask embeddings . pixels, class probabilities . masks), then writes a second int8
graph with those quantized too (`QuantConfig.attention`), to measure whether they pay. All forms are timed at 360x480 on one CamVid val frame in turns
(--threads intra-op threads, median of >= --runs after --warmup), with argmax agreement against fp32 there. A second
table splits fp32's and int8's time by kernel group (matrix products, Q/DQ, Resize, norms, Softmax, layout), from
ONNX Runtime's profiler: what int8 can speed up and what it cannot.

    python bench/bench_transformers.py [--arch segformer,setr,segmenter,maskformer,mask2former] [--threads 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import torch

from edgeseg.benchmark.flops import count_flops, count_params
from edgeseg.benchmark.machine import cpu_line
from edgeseg.data import CAMVID, read_image
from edgeseg.errors import EdgesegError
from edgeseg.export import export_model
from edgeseg.export.graph import get_meta, load
from edgeseg.export.int8 import CalibrationImages, QuantConfig, float_matmuls, quantize
from edgeseg.export.validate import Gates, image_files, model_input, pick
from edgeseg.fileio import write_text
from edgeseg.models import create
from edgeseg.paths import data_root

SIZE = (360, 480)
ARCHS = ("segformer", "setr", "segmenter", "maskformer", "mask2former")


def fixed_size_gflop(model: torch.nn.Module) -> float:
    """GFLOP at SIZE from a fixed-size export with its shape arithmetic folded (onnxslim): ONNX Runtime's symbolic
    shape inference loses every shape after the ViT's Pad, whose pads are computed from the input size."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, 3, *SIZE),), buf, dynamo=False, opset_version=17)
    return count_flops(onnxslim.slim(onnx.load_from_string(buf.getvalue())), (1, 3, *SIZE))["total"] / 1e9


# ONNX Runtime kernels by what they spend time on (ORT's fused and quantized forms included)
OP_GROUPS = {
    "matrix products": {"Conv", "FusedConv", "NchwcConv", "MatMul", "FusedMatMul", "Gemm", "QLinearConv",
                        "QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "ConvInteger", "QGemm"},
    "Q/DQ": {"QuantizeLinear", "DequantizeLinear"},
    "Resize": {"Resize"},
    "norms": {"LayerNormalization", "BatchNormalization", "SimplifiedLayerNormalization"},
    "Softmax": {"Softmax", "QLinearSoftmax"},
    "layout": {"Transpose", "ReorderInput", "ReorderOutput"},
}


def ort_session(path: Path, threads: int, profile: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, str(profile)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def session(path: Path, threads: int):
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def op_groups(path: Path, x: np.ndarray, threads: int, runs: int) -> dict[str, float]:
    """ms per run in each OP_GROUPS group (and "other"), from ONNX Runtime's profiler over `runs` runs after one."""
    sess = ort_session(path, threads, profile=path.with_suffix(""))
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(runs + 1):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    group = {op: g for g, ops in OP_GROUPS.items() for op in ops}
    totals: dict[str, float] = dict.fromkeys([*OP_GROUPS, "other"], 0.0)
    first = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])  # untimed
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > first["ts"] + first["dur"]:
            totals[group.get(e["args"]["op_name"], "other")] += e["dur"] / 1000 / runs
    return totals


def timed(fns: list, x: np.ndarray, warmup: int, runs: int, block: int = 4) -> list[float]:
    """Median ms of each function, run in turns of `block` (the first of each turn dropped) so that load from
    other processes falls on all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn(x)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(-(-runs // (block - 1))):
        for fn, ts in zip(fns, times):
            for i in range(block):
                t = time.perf_counter()
                fn(x)
                if i:
                    ts.append(1000 * (time.perf_counter() - t))
    return [statistics.median(ts) for ts in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=",".join(ARCHS), help=f"comma list of architectures (default: {','.join(ARCHS)})")
    p.add_argument("--data", default=None, help="CamVid-format folder: calibration and timing images "
                                                "(default: $EDGESEG_DATA)")
    p.add_argument("--work", default="/tmp/edgeseg-bench-transformers",
                   help="folder for the exports (default: /tmp/edgeseg-bench-transformers)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: 2)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per form (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default: 2)")
    p.add_argument("--calib-images", type=int, default=8, help="int8 calibration images (default: 8)")
    p.add_argument("--out", help="also write the Markdown table here")
    args = p.parse_args()
    args.data = str(data_root(args.data))
    work = Path(args.work)
    frame = read_image(image_files(args.data, "val")[0])
    calib = pick(image_files(args.data, "train"), args.calib_images)
    lines = [(f"ONNX Runtime CPU ({cpu_line()}), {args.threads} threads, {SIZE[0]}x{SIZE[1]}, batch 1, random weights, "
              f"median ms of "
             f">= {args.runs} runs; int8: cpu Q/DQ form, {args.calib_images} calibration images"), "",
             ("| arch | params M | GFLOP | fp32 ms | int8 ms | int8 speed-up | int8 agreement % "
             "| int8, attention MatMuls int8 too: ms | speed-up | agreement % |"),
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    groups = [*OP_GROUPS, "other"]
    split = ["", f"Where the time goes: ms per run by kernel group, from ONNX Runtime's profiler ({args.runs} runs; the "
                 "profiler's own cost included, so totals exceed the medians above)", "",
             f"| arch | form | {' | '.join(groups)} | total |", "|---|---|" + "--:|" * (len(groups) + 1)]
    for arch in args.arch.split(","):
        torch.manual_seed(0)
        model = create(arch, CAMVID.num_classes).eval()
        rep = export_model(model, work / arch, ("fp32", "int8"), progress=False, classes=CAMVID, name=arch,
                           data=args.data, calib_images=args.calib_images, int8_target="cpu", guard=False,
                           sizes=(SIZE,), validate_images=1, gates=Gates(int8_agreement=0.0))
        fp32, int8 = (Path(rep["outputs"][k]["path"]) for k in ("fp32", "int8"))
        graph = load(fp32)
        meta = get_meta(graph)
        mixed = quantize(fp32, work / arch / f"{arch}.int8-attention.onnx", CalibrationImages(calib, meta),
                         QuantConfig(target="cpu", attention=True))
        attention = len(float_matmuls(graph)) - len(float_matmuls(graph, attention=True))
        x = model_input([frame], SIZE, meta)
        fns = [session(f, args.threads) for f in (fp32, int8, mixed)]
        ref = fns[0](x).argmax(1)
        agree = [100 * float((fn(x).argmax(1) == ref).mean()) for fn in fns[1:]]
        ms = timed(fns, x, args.warmup, args.runs)
        gflop = fixed_size_gflop(model)
        lines.append(f"| {arch} | {count_params(graph) / 1e6:.2f} | {gflop:.1f} | {ms[0]:.1f} | {ms[1]:.1f} | "
                     f"{ms[0] / ms[1]:.2f} | {agree[0]:.1f} | {ms[2]:.1f} | {ms[0] / ms[2]:.2f} | {agree[1]:.1f} |")
        print(lines[-1], f"({attention} attention MatMuls)", flush=True)
        for form, path in (("fp32", fp32), ("int8", int8)):
            ms_by = op_groups(path, x, args.threads, args.runs)
            split.append(f"| {arch} | {form} | " + " | ".join(f"{ms_by[g]:.1f}" for g in groups)
                         + f" | {sum(ms_by.values()):.1f} |")
    lines += split
    print("\n".join(lines))
    if args.out:
        write_text(Path(args.out), "\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        main()
    except EdgesegError as e:  # bad input: one line
        raise SystemExit(f"bench_transformers.py: {e}") from None
