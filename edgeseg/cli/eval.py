"""`edgeseg eval`: mIoU, mAcc and per-class IoU of a checkpoint, an ONNX model or a TensorRT engine."""
from __future__ import annotations

from pathlib import Path

HELP = "evaluate a model (.pt, .onnx, .engine or a shipped name) on a data split: mIoU, mAcc, per-class IoU"


def add_arguments(p) -> None:
    from edgeseg.cli.argtypes import float_list, positive_int

    p.add_argument("--model", required=True, help="checkpoint .pt, .onnx, .engine, or a shipped model name (demo)")
    p.add_argument("--data", required=True, help="data folder (CamVid format or images/labels + classes.json)")
    p.add_argument("--split", default="val", help="split to evaluate: DATA/images/<split> with DATA/labels/<split>")
    p.add_argument("--json", default=None, metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--tta", action="store_true", help="multi-scale (0.75, 1, 1.25) + flip test-time augmentation")
    p.add_argument("--scales", type=float_list, default=None,
                   help="comma-separated TTA scales, e.g. 0.75,1,1.25 (implies --tta)")
    p.add_argument("--backend", default="auto", help="backend: auto (torch for a checkpoint, ort for an .onnx, tensorrt for an engine) or a name of `edgeseg run --help`")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate only the first N images (default: all of the split)")


def _predictor(model: str, backend: str):
    """(predictor, classes, size_divisor, mean, std, description): any model through the backend registry."""
    from edgeseg.evaluate import at_fixed_size
    from edgeseg.meta import classes_of
    from edgeseg.runtime.backends import open_backend

    be = open_backend(model, backend)
    meta = be.meta
    infer = at_fixed_size(be, be.fixed_hw) if be.fixed_hw else be
    return infer, classes_of(meta), meta["input"]["size_divisor"], meta["input"]["mean"], meta["input"]["std"], be.name


def run(args) -> int:
    from edgeseg.data import SegFolder
    from edgeseg.evaluate import evaluate, format_table
    from edgeseg.fileio import write_json
    from edgeseg.outputs import check_output

    if args.json:  # before the evaluation, which takes minutes
        check_output(args.json, "--json", inputs=[args.data] + ([args.model] if Path(args.model).is_file() else []))
    predictor, classes, divisor, mean, std, how = _predictor(args.model, args.backend)
    data = SegFolder(args.data, args.split)
    if data.classes.names != classes.names:
        from edgeseg.errors import EdgesegError
        raise EdgesegError(f"{args.model} predicts {classes.num_classes} classes ({', '.join(classes.names[:3])}, ...) but "
                           f"{args.data} has {data.classes.num_classes} ({', '.join(data.classes.names[:3])}, ...); evaluate on matching data")
    scales = args.scales or ((0.75, 1.0, 1.25) if args.tta else (1.0,))
    flip = args.tta or bool(args.scales)
    m = evaluate(predictor, data, classes, size_divisor=divisor, scales=scales, flip=flip, mean=mean, std=std, limit=args.limit)
    m.update({"model": args.model, "split": args.split, "runtime": how, "tta": {"scales": list(scales), "flip": flip}})
    print(f"{args.model} on {args.data} [{args.split}, {m['images']} images, {how}]")
    print(format_table(m))
    if args.json:
        write_json(args.json, m)
    return 0
