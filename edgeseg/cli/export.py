"""`edgeseg export`: a checkpoint to validated ONNX (fp32 / fp16 / int8 Q/DQ), FlowWarp plugin graphs, Triton repository."""
from __future__ import annotations

HELP = "export a checkpoint to validated ONNX (fp32, fp16, int8 Q/DQ) with its metadata and a report"


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    import argparse

    out = []
    for item in text.split(","):
        h, _, w = item.strip().lower().partition("x")
        try:
            out.append((int(h), int(w or h)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad size {item!r}; use HxW, e.g. 360x480") from None
    return tuple(out)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt) or shipped model name (e.g. demo)")
    p.add_argument("--out", required=True, help="output folder: <name>.<precision>.onnx, report.json, report.md")
    p.add_argument("--name", default=None, help="file name stem; when omitted, the checkpoint's name")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, fp16, int8 (fp32 is always made)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 16..20 (TensorRT 10.13 computes GridSample wrongly from 20)")
    p.add_argument("--head", choices=["logits", "argmax"], default="logits", help="output logits [N,C,H,W] or labels [N,H,W]")
    p.add_argument("--fused-preprocess", action="store_true", help="input uint8 BGR [N,H,W,3], normalised inside the graph")
    p.add_argument("--flowwarp-plugin", action="store_true",
                   help="also write <name>-flowwarp.<precision>.onnx with each flow warp as one edgeseg::FlowWarp node")
    p.add_argument("--data", default=None, help="CamVid-format data root for validation images, the guard split and "
                                                "calibration images; when omitted, ../shared/data/camvid")
    p.add_argument("--calib", default=None, help="calibration image folder; when omitted, <data>/images/train")
    p.add_argument("--calib-method", choices=["entropy", "percentile", "minmax"], default="percentile")
    p.add_argument("--calib-percentile", type=float, default=99.99, help="with --calib-method percentile")
    p.add_argument("--calib-images", type=int, default=32, help="number of calibration images (spread over the folder)")
    p.add_argument("--int8-target", choices=["tensorrt", "cpu"], default="tensorrt",
                   help="Q/DQ form: tensorrt (symmetric int8, Conv/MatMul inputs; what TensorRT >= 10 builds) or "
                        "cpu (uint8 activations, all ops; fastest on ONNX Runtime x86, rejected by TensorRT)")
    p.add_argument("--guard-split", default="val", help="held-out split for the accuracy guard and validation images")
    p.add_argument("--guard-images", type=int, default=None, help="use only the first N images of the guard split")
    p.add_argument("--max-loss", type=float, default=0.5, help="most mIoU points int8 may lose against fp32")
    p.add_argument("--no-guard", dest="guard", action="store_false", help="skip the mIoU measurement and the int8 guard")
    p.add_argument("--validate-sizes", type=_sizes, default="360x480,288x384,192x256", metavar="HxW,...",
                   help="sizes at which every step is compared with the one before")
    p.add_argument("--triton-repo", default=None, metavar="DIR", help="also write a Triton model repository here")
    p.add_argument("--force", action="store_true", help="export again even when the outputs are up to date")


def run(args) -> int:
    from edgeseg.export import export_model

    rep = export_model(args.model, args.out, args.precision.split(","), name=args.name, opset=args.opset, head=args.head,
                       fused_preprocess=args.fused_preprocess, flowwarp_plugin=args.flowwarp_plugin, data=args.data,
                       calib=args.calib, calib_method=args.calib_method, percentile=args.calib_percentile,
                       calib_images=args.calib_images, int8_target=args.int8_target, guard=args.guard,
                       guard_split=args.guard_split, guard_images=args.guard_images, max_loss=args.max_loss,
                       sizes=args.validate_sizes, triton_repo=args.triton_repo, force=args.force)
    for f in rep["outputs"].values():
        print(f"{f['path']}  ({f['precision']}, {f['bytes'] / 1e6:.1f} MB)")
    for p, m in rep.get("metrics", {}).items():
        print(f"{p}: mIoU {100 * m['miou']:.2f} ({m['images']} images)")
    print(f"report: {args.out}/report.md")
    return 0
