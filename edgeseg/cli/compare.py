"""`edgeseg compare A B --data DIR`: two models on the same real images (fp32 vs int8, ours vs theirs, GridSample vs
FlowWarp graph)."""
from __future__ import annotations

HELP = "compare two models on real images: score difference, argmax agreement, mIoU and per-class IoU of each"


def add_arguments(p) -> None:
    p.add_argument("a", metavar="A", help="first model (.onnx or .engine): the reference")
    p.add_argument("b", metavar="B", help="second model (.onnx or .engine)")
    p.add_argument("--data", required=True, help="data folder (CamVid format or images/labels + classes.json)")
    p.add_argument("--split", default="val", help="split of --data to compare on: DATA/images/<split>")
    p.add_argument("--limit", type=int, default=None, help="compare on the first N images only")
    p.add_argument("--backend", default="ort-cpu", help="runtime backend for both (see `edgeseg run --help`)")
    p.add_argument("--per-layer", action="store_true", help="int8 sensitivity of each quantized layer: quantize it alone "
                   "from the float model (A or B) and measure agreement and mIoU change")
    p.add_argument("--calib", default=None, metavar="DIR", help="calibration images for --per-layer (default: DATA's train split)")
    p.add_argument("--calib-images", type=int, default=8, help="calibration images for --per-layer")
    p.add_argument("--json", default=None, metavar="FILE", help="write the comparison as JSON")


def run(args) -> int:
    from edgeseg.compare import compare_models, format_text
    from edgeseg.fileio import write_json

    r = compare_models(args.a, args.b, args.data, split=args.split, limit=args.limit, backend=args.backend,
                       per_layer=args.per_layer, calib=args.calib, calib_images=args.calib_images)
    print(format_text(r))
    if args.json:
        write_json(args.json, r)
    return 0
