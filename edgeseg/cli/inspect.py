"""`edgeseg inspect`: what a model file holds (I/O, metadata, ops, int8 / fp16 coverage, custom ops)."""
from __future__ import annotations

HELP = "show a model's inputs/outputs, edgeseg metadata, op histogram, int8/fp16 coverage and custom ops"


def add_arguments(p) -> None:
    p.add_argument("model", help="an .onnx, or a TensorRT engine's sidecar <engine>.json (or the engine beside it)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write everything shown as JSON")


def run(args) -> int:
    from edgeseg.fileio import write_json
    from edgeseg.inspection import format_text, inspect_model

    info = inspect_model(args.model)
    print(format_text(info))
    if args.json:
        write_json(args.json, info)
    return 0
