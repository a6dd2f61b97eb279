"""`edgeseg export`: a model to validated ONNX (fp32 / fp16 / int8 Q/DQ), FlowWarp plugin graphs, Triton repository.

The options are the fields of ExportOptions and Gates: each field's metadata gives its flag, help and choices, so a
new option is one field. Defaults are shown as the export uses them (no "(default: True)" on a switch).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

HELP = "export a model to validated ONNX (fp32, fp16, int8 Q/DQ) with its metadata and a report"


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in _comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 0.485,0.456,0.406") from None


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


def _add(p, f, dest: str, flag: str | None = None) -> None:
    """One dataclass field as an option: a switch for a bool, else a typed value with its default in the help."""
    from edgeseg.sizes import argparse_hw_list

    meta = f.metadata
    default = f.default if f.default is not MISSING else f.default_factory()
    flag = meta.get("flag") or flag or "--" + f.name.replace("_", "-")
    p.set_defaults(**{dest: default})
    if isinstance(default, bool):
        p.add_argument(flag, dest=dest, action="store_false" if default else "store_true", default=argparse.SUPPRESS,
                       help=meta["help"])
        return
    kind = str(f.type)
    if f.name == "sizes":
        conv = argparse_hw_list
    elif isinstance(default, tuple):
        conv = _comma_list
    else:
        conv = int if kind.startswith("int") else float if kind.startswith("float") else str
    choices = meta.get("choices")
    metavar = meta.get("metavar") or (None if choices else {int: "N", float: "X"}.get(conv, "NAME"))
    p.add_argument(flag, dest=dest, type=conv, choices=choices, metavar=metavar,
                   default=argparse.SUPPRESS,
                   help=f"{meta['help']} (default: {meta.get('default_text') or _show(default)})")


def add_arguments(p) -> None:
    from edgeseg.export.pipeline import ExportOptions
    from edgeseg.export.validate import Gates

    p.add_argument("--model", required=True, help="checkpoint (.pt), shipped model name (e.g. demo) or ONNX file "
                                                  "(one without edgeseg metadata needs --classes)")
    p.add_argument("--out", required=True, help="output folder: <name>.<precision>.onnx, report.json, report.md")
    p.add_argument("--classes", default=argparse.SUPPRESS, metavar="JSON",
                   help="classes.json of an ONNX file without edgeseg metadata (default: none)")
    for name in ("mean", "std"):
        p.add_argument(f"--{name}", type=_floats, default=argparse.SUPPRESS, metavar="R,G,B",
                       help=f"input normalisation {name} (fractions of 255) of an ONNX file without edgeseg metadata "
                            f"(default: read from its metadata_props)")
    p.add_argument("--input", dest="input_name", default=argparse.SUPPRESS, metavar="NAME",
                   help="the image input of an ONNX file without edgeseg metadata, where it has several 4-D inputs "
                        "(default: its one 4-D, 3-channel input)")
    p.add_argument("--output", dest="output_name", default=argparse.SUPPRESS, metavar="NAME",
                   help="the score or label output of an ONNX file without edgeseg metadata, where it has several "
                        "(default: its one [N,C,h,w] scores or [N,H,W] labels output)")
    p.add_argument("--input-layout", choices=("NCHW", "NHWC"), default=argparse.SUPPRESS,
                   help="the image input's layout of an ONNX file without edgeseg metadata (default: NCHW)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of a checkpoint's architecture that keeps its trained weights, e.g. prune=2 for "
                        "unetpp (its pruned sub-network); names the files <name>-prune2.* (default: none)")
    p.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                   help="export again even when the outputs are up to date")
    for f in fields(ExportOptions):
        if f.metadata.get("cli", True):
            _add(p, f, f.name)
    g = p.add_argument_group("gates", "limits each step is held to; a result passes when its value, rounded as the "
                                      "report prints it, meets the limit")
    for f in fields(Gates):
        _add(g, f, f"gate_{f.name}")


def run(args) -> int:
    from edgeseg.export.pipeline import ExportOptions, PartialExport, export_model
    from edgeseg.export.validate import Gates
    from edgeseg.models.registry import parse_options
    from edgeseg.outputs import check_output

    data = [args.data] if getattr(args, "data", None) else []
    check_output(args.out, "--out", folder=True, inputs=[*data, args.model])  # before minutes of calibration
    options = {f.name: getattr(args, f.name) for f in fields(ExportOptions) if f.metadata.get("cli", True)}
    options["gates"] = Gates(**{f.name: getattr(args, f"gate_{f.name}") for f in fields(Gates)})
    try:
        rep = export_model(args.model, args.out, force=getattr(args, "force", False),
                           classes=getattr(args, "classes", None), mean=getattr(args, "mean", None),
                           std=getattr(args, "std", None), input_name=getattr(args, "input_name", None),
                           input_layout=getattr(args, "input_layout", None), output=getattr(args, "output_name", None),
                           model_options=parse_options(args.opt), **options)
    except PartialExport as e:  # what validated is published: list it, then the error line (a non-zero exit)
        _summary(e.report, args.out)
        raise
    _summary(rep, args.out)
    return 0


def _summary(rep: dict, out: str) -> None:
    for f in rep["outputs"].values():
        print(f"{f['path']}  ({f['precision']}, {f['bytes'] / 1e6:.1f} MB)")
    for p, m in rep.get("metrics", {}).items():
        print(f"{p}: mIoU {100 * m['miou']:.2f} ({m['images']} images)")
    print(f"report: {out}/report.md")
