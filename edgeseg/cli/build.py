"""`edgeseg build`: a TensorRT engine (+ ENGINE.json sidecar) from an exported ONNX."""
from __future__ import annotations

from edgeseg.sizes import argparse_hw

HELP = "build a TensorRT engine from an exported ONNX (needs TensorRT and an NVIDIA GPU)"


def _batch(text: str):
    import argparse

    try:
        parts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad batch {text!r}; use N or MIN,OPT,MAX") from None
    if len(parts) not in (1, 3):
        raise argparse.ArgumentTypeError(f"bad batch {text!r}; use N or MIN,OPT,MAX")
    return (parts[0],) * 3 if len(parts) == 1 else tuple(parts)


def add_arguments(p) -> None:
    p.add_argument("onnx", metavar="MODEL.onnx", help="a model written by `edgeseg export`")
    p.add_argument("--out", default=None, metavar="ENGINE",
                   help="engine file; when omitted, in the engine cache (~/.cache/edgeseg/engines)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="when omitted, the ONNX's own; TensorRT >= 10 takes it from the graph, 8.x sets builder flags")
    p.add_argument("--opt", type=argparse_hw, default=None, metavar="HxW", help="size the engine is tuned for; when omitted, 360x480")
    p.add_argument("--min", type=argparse_hw, default=None, metavar="HxW", help="smallest input size; when omitted, half of --opt")
    p.add_argument("--max", type=argparse_hw, default=None, metavar="HxW", help="largest input size; when omitted, twice --opt")
    p.add_argument("--batch", type=_batch, default=(1, 1, 1), metavar="N|MIN,OPT,MAX", help="batch sizes of the profile")
    p.add_argument("--workspace", type=int, default=None, metavar="MB", help="builder workspace limit")
    p.add_argument("--dla", type=int, default=None, metavar="N",
                   help="build for DLA core N (Jetson Xavier / Orin), GPU fallback on")
    p.add_argument("--timing-cache", default=None, metavar="FILE", help="read and update this timing cache (faster rebuilds)")
    p.add_argument("--calib", default=None, metavar="DIR", help="TensorRT 8.x INT8 from an fp32 ONNX: calibration images")
    p.add_argument("--calib-images", type=int, default=32, help="calibration images (INT8 on TensorRT 8.x)")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="build even when the engine cache has it")
    p.add_argument("--triton-repo", default=None, metavar="DIR", help="also add the engine to this Triton model repository")


def run(args) -> int:
    from pathlib import Path

    from edgeseg.export.tensorrt import BuildRequest, build_engine

    req = BuildRequest(onnx=Path(args.onnx), out=Path(args.out) if args.out else None, precision=args.precision, opt=args.opt,
                       min=args.min, max=args.max, batch=args.batch, workspace_mb=args.workspace, dla_core=args.dla,
                       timing_cache=Path(args.timing_cache) if args.timing_cache else None,
                       calib=Path(args.calib) if args.calib else None, calib_images=args.calib_images, use_cache=args.use_cache)
    info = build_engine(req)
    if args.triton_repo:
        from edgeseg.export.graph import load
        from edgeseg.export.tensorrt import cached_engine
        from edgeseg.export.triton import add_model
        from edgeseg.kernels import DOMAIN, LIBRARIES, find_library
        from edgeseg.meta import META_KEY

        engine = req.out or cached_engine(req.onnx.stem, info["cache_key"])
        plugin = str(find_library("trt") or LIBRARIES["trt"]) if any(n.domain == DOMAIN for n in load(req.onnx).graph.node) else None
        folder = add_model(args.triton_repo, f"{req.onnx.stem.replace('.', '_')}_trt", engine, info[META_KEY], engine=True,
                           plugin=plugin)
        print(f"triton: {folder}")
    return 0
