"""Export on this CPU: PyTorch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime INT8, latency and mIoU, one run.

For each model (a checkpoint or shipped name; default `demo`), exports through `edgeseg.export.export_model`
(cached in --work), measures mIoU on CamVid val through the same evaluation as `edgeseg eval`, then times
every form on one CamVid val frame at 360x480 (--threads intra-op threads; median and p90 of at least --runs
runs after --warmup, taken in turns of a few runs per form so that load from other processes hits all alike).
INT8 comes in its two Q/DQ forms: `tensorrt` (what TensorRT >= 10 builds from) and `cpu` (what ONNX Runtime on
x86 runs fastest). `--int8-variants` adds the quantization settings that were compared to
choose the cpu form. Prints Markdown; `--out FILE` also writes it with the machine's details.

    python bench/bench_export.py [--model demo] [--threads 2] [--runs 20] [--int8-variants] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgeseg.benchmark.machine import cpu_line
from edgeseg.data import SegFolder, read_image
from edgeseg.export import export_model
from edgeseg.export.graph import get_meta, load
from edgeseg.export.validate import image_files, miou, model_input
from edgeseg.fileio import write_text
from edgeseg.models import checkpoint
from edgeseg.paths import data_root
from edgeseg.runtime.backends.ort import ort_session
from edgeseg.runtime.backends.pytorch import TorchBackend

SIZE = (360, 480)


def timed(fns: list, x, warmup: int, runs: int, block: int = 4) -> list[dict]:
    """Latency of each predictor, measured in turns of `block` consecutive runs so that a slow spell on a shared
    machine hits every predictor alike (the first runs of each turn are dropped: they reload the caches)."""
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
    return [{"median_ms": statistics.median(ts), "p90_ms": float(np.percentile(ts, 90)), "runs": len(ts)} for ts in times]


def ort_runner(path, threads: int, optimization: str = "all"):
    sess = ort_session(Path(path), threads=threads, optimization=optimization)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def int8_variants(fp32: Path, calib_files, meta: dict, work: Path) -> dict[str, Path]:
    """The quantization settings compared for ONNX Runtime on x86, each finished like the export's (shape reads
    from the int8 tensor, FlowWarp op): same calibration images and method (percentile 99.99)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeseg.export.flowwarp import fuse_flowwarp
    from edgeseg.export.int8 import (
        CalibrationImages,
        chunk_size,
        float_matmuls,
        shapes_from_quantized,
        size_dependent_nodes,
    )

    images = CalibrationImages(calib_files, meta)
    model = load(fp32)
    base = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True, reduce_range=False, nodes_to_exclude=float_matmuls(model) + size_dependent_nodes(model),
                op_types_to_quantize=None)
    calib = {"CalibStridedMinMax": chunk_size(len(images)), "CalibPercentile": 99.99, "CalibTensorRangeSymmetric": False}
    variants = {
        "QDQ u8s8 per-channel, all ops but size-dependent (cpu form)": {},
        "QDQ u8s8 per-tensor weights": {"per_channel": False},
        "QDQ u8s8 per-channel reduce_range": {"reduce_range": True},
        "QDQ u8s8, Conv/MatMul/Gemm only": {"op_types_to_quantize": ["Conv", "MatMul", "Gemm"]},
        "QOperator u8s8 per-channel": {"quant_format": QuantFormat.QOperator},
        "QDQ s8s8 symmetric (TensorRT-valid), all ops": {"activation_type": QuantType.QInt8,
                                                         "extra": {"ActivationSymmetric": True, "CalibTensorRangeSymmetric": True}},
    }
    out = {}
    for name, change in variants.items():
        args = {**base, **change}
        extra = {**calib, **args.pop("extra", {})}
        path = work / f"variant{len(out)}.onnx"
        images.rewind()
        quantize_static(str(fp32), str(path), images, calibrate_method=CalibrationMethod.Percentile, extra_options=extra, **args)
        q = load(path)
        shapes_from_quantized(q)
        q, _ = fuse_flowwarp(q)
        onnx.save(q, str(path))
        out[name] = path
    return out


def bench_model(model: str, args, work: Path) -> list[dict]:
    data = data_root(args.data)
    val = SegFolder(data, "val")
    reports = {target: export_model(model, work / f"{Path(model).stem}-{target}", ("fp32", "int8"), data=str(data),
                                    int8_target=target, calib_images=args.calib_images, guard_images=args.images,
                                    max_loss=args.max_loss, flowwarp_plugin=True)
               for target in ("tensorrt", "cpu")}
    rep = reports["tensorrt"]
    path = {f"{t}/{k}": Path(f["path"]) for t, r in reports.items() for k, f in r["outputs"].items()}
    meta = get_meta(load(path["tensorrt/fp32"]))
    x = model_input([read_image(image_files(data, "val")[0])], SIZE, meta)
    torch.set_num_threads(args.threads)
    net, _ = checkpoint.load_model(model)
    rows, fns = [], []

    def row(backend, precision, form, fn, note=""):
        m = miou(fn, val, meta, limit=args.images, progress=False)
        rows.append({"model": Path(model).stem, "backend": backend, "precision": precision, "form": form,
                     "miou": m["miou"], "note": note})
        fns.append(fn)
        print(f"  {backend} {precision} {form}: mIoU {100 * m['miou']:.2f}", flush=True)

    row("PyTorch eager", "fp32", "-", TorchBackend.for_module(net))
    row("ONNX Runtime", "fp32", "GridSample", ort_runner(path["tensorrt/fp32"], args.threads))
    row("ONNX Runtime", "fp32", "FlowWarp op", ort_runner(path["tensorrt/fp32-flowwarp"], args.threads))
    for target, r in reports.items():
        g = r["int8"].get("guard", {})
        note = f"guard: {len(g.get('float_nodes', []))} layers left float"
        row("ONNX Runtime", "int8", f"Q/DQ {target} form, GridSample", ort_runner(path[f"{target}/int8"], args.threads), note)
        row("ONNX Runtime", "int8", f"Q/DQ {target} form, FlowWarp op",
            ort_runner(path[f"{target}/int8-flowwarp"], args.threads), note)
    if args.int8_variants:
        from edgeseg.export.validate import pick

        calib = rep["int8"]["calibration"]
        files = pick(image_files(calib["folder"], "train"), calib["images"])
        for name, variant in int8_variants(path["tensorrt/fp32"], files, meta, work).items():
            row("ONNX Runtime", "int8", f"{name}, FlowWarp op", ort_runner(variant, args.threads))
        cpu = path["cpu/int8-flowwarp"]
        for level in ("EXTENDED", "BASIC"):
            row("ONNX Runtime", "int8", f"cpu form, FlowWarp op, graph optimisation {level}",
                ort_runner(cpu, args.threads, level.lower()))
    print("  timing ...", flush=True)
    for r, t in zip(rows, timed(fns, x, args.warmup, args.runs)):
        r.update(t)
    return rows


def table(rows: list[dict]) -> str:
    eager = {r["model"]: r["median_ms"] for r in rows if r["backend"] == "PyTorch eager"}
    base = {r["model"]: r["miou"] for r in rows if r["backend"] == "PyTorch eager"}
    out = ["| model | backend | precision | form | median ms | p90 ms | vs eager | mIoU % | Δ mIoU (points) | note |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        d = "–" if r["miou"] is None else f"{100 * (r['miou'] - base[r['model']]):+.2f}"
        m = "–" if r["miou"] is None else f"{100 * r['miou']:.2f}"
        out.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['form']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                   f"{eager[r['model']] / r['median_ms']:.2f}× | {m} | {d} | {r['note']} |")
    return "\n".join(out)


def machine() -> str:
    return (f"{cpu_line()}, {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {ort.__version__}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=None, help="checkpoint or shipped name (repeatable; default demo)")
    p.add_argument("--data", default=None, help="CamVid root (default: $EDGESEG_DATA)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=None, help="val images for mIoU (default all 101)")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--max-loss", type=float, default=0.5)
    p.add_argument("--int8-variants", action="store_true", help="also time the quantization settings compared")
    p.add_argument("--work", default=None, help="export folder (kept, so a rerun reuses the exports)")
    p.add_argument("--out", default=None, help="also write the Markdown here")
    args = p.parse_args()
    models = args.model or ["demo"]
    work = Path(args.work or tempfile.mkdtemp(prefix="edgeseg-bench-export-"))
    rows = []
    for m in models:
        print(f"{m}:", flush=True)
        rows += bench_model(m, args, work)
    text = (f"Export latency on the CPU: {SIZE[0]}x{SIZE[1]}, batch 1, {args.threads} threads, median of >= {args.runs} runs "
            f"after {args.warmup} warm-up runs, all forms timed in turns; mIoU on CamVid val ({args.images or 'all'} "
            f"images)\n\n{table(rows)}\n\n"
            f"Machine: {machine()}")
    print("\n" + text)
    if args.out:
        write_text(args.out, text + "\n\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
