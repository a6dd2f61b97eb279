"""Adopt a segmentation ONNX made elsewhere: find its image input and its score (or label) output, make H and W
dynamic where the graph allows it, write edgeseg's metadata, and validate it against the original file on real
images with ONNX Runtime.

The adopted graph follows edgeseg's ONNX contract, so `edgeseg run`, `eval`, `compare` and the fp16 / int8 passes
treat it like one of ours: input `images` float32 [N,3,H,W] (an NHWC model gets a Transpose in front), output
`logits` [N,C,h,w] or `labels` [N,H,W] (a [N,1,H,W] label map is squeezed). Scores at a lower resolution than the
input (SegFormer: 1/4) are recorded as `output_stride`; the runtime resizes them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeseg.data.classes import ClassInfo
from edgeseg.errors import EdgesegError
from edgeseg.export import validate as V
from edgeseg.export.graph import remove_dead_nodes, save, set_meta
from edgeseg.fileio import sha256_file
from edgeseg.kernels import DOMAIN, OP_TYPE, find_library
from edgeseg.meta import make_meta
from edgeseg.paths import data_root
from edgeseg.sizes import fit

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
LABEL_TYPES = (TensorProto.INT64, TensorProto.INT32)
LAYOUTS = ("NCHW", "NHWC")
# metadata_props keys other tools use for the input normalisation (JSON lists or comma-separated numbers)
NORM_KEYS = (("mean", "std"), ("image_mean", "image_std"), ("norm_mean", "norm_std"))
MAX_ABS = 1e-4  # adopted vs original: the same graph, only renamed and reshaped
MIN_AGREEMENT = 0.999


def adopt_onnx(src, dst, *, classes, mean=None, std=None, input_layout: str = "NCHW", input_name: str | None = None,
               output_name: str | None = None, size_divisor: int = 32, data=None, images: int = 2,
               arch: str | None = None) -> dict:
    """Write `dst`: the ONNX model `src` with edgeseg's I/O names and metadata; returns the metadata written.

    classes: a ClassInfo, a classes.json path or its dict. mean / std: per-channel, as fractions of 255 (values
    above 1 are taken as pixel units and divided by 255); when omitted, read from the model's metadata_props.
    data: a dataset root or image folder for the validation images (default: $EDGESEG_DATA).
    """
    src, dst = Path(src), Path(dst)
    classes = _classes(classes)
    if input_layout not in LAYOUTS:
        raise EdgesegError(f"input layout {input_layout!r}: use NCHW or NHWC (--input-layout)")
    model = _load(src)
    _check_ops(model, src)
    inp = _pick_input(model, src, input_name, input_layout)
    out, head = _pick_output(model, src, output_name, classes)
    mean, std = _normalisation(model, src, mean, std)
    meta = make_meta(arch or src.stem, classes, size_divisor=size_divisor, mean=mean, std=std, head=head,
                     precision=_precision(model), source_sha256=sha256_file(src))

    files = V.pick(V.image_files(data_root(data, what="--data (validation images)"), "val"), images)
    pictures = V.read_images(files)
    original = V.OrtPredictor(model.SerializeToString())
    fixed = _fixed_hw(inp, input_layout)
    base = fixed or fit(pictures[0].shape[:2], size_divisor)

    adopted = _conform(model, inp.name, out.name, head, input_layout)
    dynamic = _make_dynamic(adopted)
    trials = [base] + _other_sizes(base, size_divisor)
    rows, why_fixed = _probe(dynamic, original, pictures, trials, meta, input_layout, fixed)
    final = dynamic
    if why_fixed:
        if not fixed:  # a dynamic original that fails at other sizes: nothing to fall back to
            raise EdgesegError(f"{src}: {why_fixed}; pass images of a size the model takes")
        final = adopted
        rows, why = _probe(adopted, original, pictures, [base], meta, input_layout, fixed)
        if why:
            raise EdgesegError(f"{src}: the adopted graph fails at the model's own size: {why}")
    stride = _stride(rows, src)
    _check_labels(rows, classes, src)

    meta["input"]["train_size"] = list(fixed) if fixed else None
    if why_fixed:
        meta["input"]["fixed_size"] = list(fixed)
    if stride > 1:
        meta["output_stride"] = stride
    meta["adopted"] = {"file": src.name, "producer": model.producer_name or None, "input": inp.name,
                       "output": out.name, "input_layout": input_layout, "dynamic_hw": not why_fixed,
                       "fixed_reason": why_fixed,
                       "validation": {"images": [f.name for f in files],
                                      "sizes": [{k: r[k] for k in r if not k.startswith("_")} for r in rows]}}
    set_meta(final, meta)
    save(final, dst)
    return meta


# ---------------------------------------------------------------- reading the foreign model
def _classes(classes) -> ClassInfo:
    if isinstance(classes, ClassInfo):
        return classes
    if isinstance(classes, dict):
        return ClassInfo.from_dict(classes)
    return ClassInfo.load(classes)


def _load(src: Path) -> onnx.ModelProto:
    if not src.is_file():
        raise EdgesegError(f"{src}: no such ONNX file; pass the path of the model to adopt")
    try:
        model = onnx.load(str(src))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 (protobuf DecodeError, ValidationError, a missing external-data file)
        raise EdgesegError(f"{src}: not a valid ONNX model ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None
    return model


def _check_ops(model: onnx.ModelProto, src: Path) -> None:
    """Custom-domain nodes must have a kernel here: ONNX Runtime's contrib ops, or the built FlowWarp op."""
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    runnable = {f"{DOMAIN}::{OP_TYPE}"} if find_library("ort") else set()
    missing = [c for c in custom if c not in runnable]
    if missing:
        hint = "build the FlowWarp op with `edgeseg kernels build`" if f"{DOMAIN}::{OP_TYPE}" in missing else \
            "re-export the model with standard ONNX ops"
        raise EdgesegError(f"{src}: custom ops {', '.join(missing)} cannot run on this machine (ONNX Runtime has no "
                           f"kernel for them); {hint}")


def _dims(value: onnx.ValueInfoProto) -> list:
    """Dims as ints, or None for symbolic/unknown ones."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _describe(value: onnx.ValueInfoProto) -> str:
    dtype = TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()
    return f"{value.name} {dtype} [{','.join('?' if d is None else str(d) for d in _dims(value))}]"


def _pick_input(model: onnx.ModelProto, src: Path, name: str | None, layout: str) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    channel = 1 if layout == "NCHW" else 3

    def is_image(v):
        d = _dims(v)
        return len(d) == 4 and d[channel] in (3, None)
    if name is not None:
        chosen = next((i for i in inputs if i.name == name), None)
        if chosen is None:
            raise EdgesegError(f"{src}: no input named {name!r}; its inputs are {', '.join(_describe(i) for i in inputs)}")
        if not is_image(chosen):
            raise EdgesegError(f"{src}: input {_describe(chosen)} is not a 4-D 3-channel {layout} image; "
                               f"pass another --input or --input-layout")
    else:
        candidates = [i for i in inputs if is_image(i)]
        if not candidates:
            raise EdgesegError(f"{src}: no 4-D 3-channel {layout} image input among {', '.join(_describe(i) for i in inputs)}; "
                               f"edgeseg adopts image segmentation models (try --input-layout {'NHWC' if layout == 'NCHW' else 'NCHW'})")
        if len(candidates) > 1:
            raise EdgesegError(f"{src}: {len(candidates)} candidate image inputs ({'; '.join(_describe(i) for i in candidates)}); "
                               f"choose one with --input NAME")
        chosen = candidates[0]
    others = [i.name for i in inputs if i is not chosen]
    if others:
        raise EdgesegError(f"{src}: besides the image input {chosen.name!r} the model takes {', '.join(others)}; "
                           f"edgeseg runs single-input models: re-export it with those inputs fixed")
    if chosen.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise EdgesegError(f"{src}: input {_describe(chosen)} is not float32; edgeseg adopts float32 image inputs")
    return chosen


def _kind(value: onnx.ValueInfoProto) -> str:
    """scores, labels, classification or other."""
    d, t = _dims(value), value.type.tensor_type.elem_type
    if t in LABEL_TYPES and (len(d) == 3 or (len(d) == 4 and d[1] == 1)):
        return "labels"
    if t in (TensorProto.FLOAT, TensorProto.FLOAT16):
        if len(d) == 2 or (len(d) == 4 and d[2] == 1 and d[3] == 1):
            return "classification"
        if len(d) == 4:
            return "scores"
    return "other"


def _pick_output(model, src: Path, name: str | None, classes: ClassInfo) -> tuple[onnx.ValueInfoProto, str]:
    outputs = list(model.graph.output)
    if name is not None:
        chosen = next((o for o in outputs if o.name == name), None)
        if chosen is None:
            raise EdgesegError(f"{src}: no output named {name!r}; its outputs are {', '.join(_describe(o) for o in outputs)}")
    else:
        candidates = [o for o in outputs if _kind(o) in ("scores", "labels")]
        if len(candidates) > 1:
            raise EdgesegError(f"{src}: {len(candidates)} candidate outputs ({'; '.join(_describe(o) for o in candidates)}); "
                               f"choose one with --output NAME")
        chosen = candidates[0] if candidates else (outputs[0] if len(outputs) == 1 else None)
        if chosen is None:
            raise EdgesegError(f"{src}: no output is segmentation scores [N,C,h,w] or labels [N,H,W] "
                               f"({', '.join(_describe(o) for o in outputs)}); choose one with --output NAME")
    kind = _kind(chosen)
    if kind == "classification":
        raise EdgesegError(f"{src}: output {_describe(chosen)} has no spatial dims: a classification model; "
                           f"edgeseg needs per-pixel scores [N,C,h,w] or labels [N,H,W]")
    if kind == "other":
        raise EdgesegError(f"{src}: output {_describe(chosen)} is neither float scores [N,C,h,w] nor int32/int64 "
                           f"labels [N,H,W]; choose another with --output NAME")
    c = _dims(chosen)[1]
    if kind == "scores" and c is not None and c != classes.num_classes:
        raise EdgesegError(f"{src}: output {chosen.name!r} scores {c} classes but the classes file has "
                           f"{classes.num_classes}; pass the classes.json the model was trained with")
    return chosen, ("logits" if kind == "scores" else "argmax")


def _floats(text, what: str, src: Path) -> list[float]:
    try:
        values = json.loads(text) if isinstance(text, str) and text.strip().startswith("[") else \
            [float(v) for v in text.split(",")] if isinstance(text, str) else [float(v) for v in text]
        values = [float(v) for v in values]
    except (ValueError, TypeError, json.JSONDecodeError):
        raise EdgesegError(f"{src}: {what} {text!r} is not 3 numbers; pass e.g. --{what} 0.485,0.456,0.406") from None
    if len(values) != 3:
        raise EdgesegError(f"{src}: {what} has {len(values)} values, expected 3 (one per RGB channel)")
    return values


def _normalisation(model, src: Path, mean, std) -> tuple[list[float], list[float]]:
    """The (x/255 - mean) / std the model was trained with: given, or read from its metadata_props."""
    if mean is None and std is None:
        props = {p.key: p.value for p in model.metadata_props}
        mean, std = next(((props[m], props[s]) for m, s in NORM_KEYS if m in props and s in props), (None, None))
    if mean is None or std is None:
        raise EdgesegError(f"{src}: the input normalisation is not in the model; pass --mean and --std as the model "
                           f"was trained (ImageNet: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)")
    mean, std = _floats(mean, "mean", src), _floats(std, "std", src)
    if any(v <= 0 for v in std):
        raise EdgesegError(f"{src}: std {std} has a value <= 0; pass the model's --std")
    if max(mean + std) > 1.0:  # pixel units (mmseg's 123.675, 58.395): edgeseg's are fractions of 255
        mean, std = [v / 255.0 for v in mean], [v / 255.0 for v in std]
    return mean, std


def _precision(model) -> str:
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}:
        return "int8"
    if any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def _fixed_hw(inp: onnx.ValueInfoProto, layout: str) -> tuple[int, int] | None:
    d = _dims(inp)
    h, w = (d[2], d[3]) if layout == "NCHW" else (d[1], d[2])
    return (h, w) if h and w else None


# ---------------------------------------------------------------- rewriting
def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere it is read or written, subgraphs included (they may read outer names)."""
    for n in graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename(g, old, new)
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.name == old:
            v.name = new


def _free_name(graph: onnx.GraphProto, want: str) -> str:
    used = {i for n in graph.node for i in list(n.input) + list(n.output)} | {i.name for i in graph.initializer}
    name, k = want, 0
    while name in used:
        k += 1
        name = f"{want}_{k}"
    return name


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _conform(model, input_name: str, output_name: str, head: str, layout: str) -> onnx.ModelProto:
    """A copy with edgeseg's I/O: input `images` NCHW, one output `logits` or `labels` [N,H,W]."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = next(o for o in g.output if o.name == output_name)
    del g.output[:]
    g.output.append(keep)
    remove_dead_nodes(g)
    new_in = "images"
    if input_name != new_in or layout == "NHWC":
        free = _free_name(g, "images_orig")
        _rename(g, new_in, free)
        input_name = free if input_name == new_in else input_name
    inp = next(i for i in g.input if i.name == input_name)
    if layout == "NHWC":  # take NCHW and transpose in the graph: the evaluation and calibration feed NCHW
        n, h, w, c = inp.type.tensor_type.shape.dim
        nchw = helper.make_tensor_value_info(new_in, TensorProto.FLOAT, [_d(n), _d(c), _d(h), _d(w)])
        g.node.insert(0, helper.make_node("Transpose", [new_in], [input_name], name="adopt_nchw_to_nhwc", perm=[0, 2, 3, 1]))
        g.input.remove(inp)
        g.input.insert(0, nchw)
    else:
        _rename(g, input_name, new_in)
    out_new = "logits" if head == "logits" else "labels"
    if output_name != out_new:
        _rename(g, out_new, _free_name(g, f"{out_new}_orig"))
    out = g.output[0]
    if head == "argmax" and len(_dims(out)) == 4:  # [N,1,H,W] -> [N,H,W]
        squeezed = _free_name(g, "labels_nchw")
        _rename(g, output_name, squeezed)
        if _opset(m) >= 13:
            axes = _free_name(g, "adopt_squeeze_axes")
            g.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [1]))
            g.node.append(helper.make_node("Squeeze", [squeezed, axes], [out_new], name="adopt_squeeze"))
        else:
            g.node.append(helper.make_node("Squeeze", [squeezed], [out_new], name="adopt_squeeze", axes=[1]))
        dims = out.type.tensor_type.shape.dim
        del dims[1]
        out.name = out_new
    else:
        _rename(g, output_name, out_new)
    return m


def _d(dim) -> int | str:
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")


def _make_dynamic(model) -> onnx.ModelProto:
    """A copy whose input N, H, W and output N, h, w are symbolic; intermediate shapes dropped (they may be frozen)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for i, name in ((0, "N"), (2, "H"), (3, "W")):
        dims[i].Clear()
        dims[i].dim_param = name
    out = m.graph.output[0].type.tensor_type.shape.dim
    spatial = (1, 2) if len(out) == 3 else (2, 3)
    for i, name in ((0, "N"), (spatial[0], "h"), (spatial[1], "w")):
        out[i].Clear()
        out[i].dim_param = name
    del m.graph.value_info[:]
    return m


def _other_sizes(base: tuple[int, int], divisor: int) -> list[tuple[int, int]]:
    """Two more sizes, neither the base one: 3/4 of it and a non-proportional one (catches frozen aspect ratios)."""
    h, w = base
    candidates = [(h * 3 // 4, w * 3 // 4), (h * 3 // 4, w // 2), (h // 2, w // 2), (h * 5 // 4, w * 5 // 4)]
    return [s for s in dict.fromkeys(fit(c, divisor) for c in candidates) if s != tuple(base)][:2]


def _as_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


def _probe(model, original, pictures, sizes, meta, layout: str, fixed) -> tuple[list[dict], str | None]:
    """Run the adopted graph at each size on the real images (one at a time: some graphs fix N at 1); at the sizes
    the original takes, compare with it. Returns (rows, why the graph cannot take these sizes, or None)."""
    import onnxruntime as ort

    from edgeseg.kernels import register_ort_ops
    from edgeseg.runtime.backends.ort import error_line

    so = ort.SessionOptions()
    so.log_severity_level = 4  # a failure at another size is an answer, not an error to log
    register_ort_ops(so)
    try:
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 (onnxruntime's own exception types)
        return [], f"ONNX Runtime cannot load it with symbolic H and W ({error_line(e)[:160]})"
    rows = []
    for size in sizes:
        xs = [V.model_input([p], size, meta) for p in pictures]
        try:
            y = np.concatenate([session.run(None, {"images": x})[0] for x in xs])
        except Exception as e:  # noqa: BLE001 (onnxruntime's own types: a frozen Reshape, Concat or Resize)
            return rows, f"it fails at {size[0]}x{size[1]} ({error_line(e).split('FAIL : ')[-1][:160]})"
        row = {"size": list(size), "images": len(pictures), "output": list(y.shape), "_y": y}
        if not fixed or size == tuple(fixed):
            ref = np.concatenate([original(_as_layout(x, layout)) for x in xs])
            if ref.ndim == 4 and y.ndim == 3:  # the original's [N,1,H,W] labels
                ref = ref[:, 0]
            if ref.shape != y.shape:
                raise EdgesegError(f"adopted output {list(y.shape)} differs from the original's {list(ref.shape)} at "
                                   f"{size[0]}x{size[1]}")
            row["argmax_agreement"] = float((V._labels(ref) == V._labels(y)).mean())
            if y.ndim == 4:
                row["max_abs_diff"] = float(np.abs(ref.astype(np.float32) - y.astype(np.float32)).max())
            if row["argmax_agreement"] < MIN_AGREEMENT or row.get("max_abs_diff", 0.0) > MAX_ABS:
                raise EdgesegError(f"the adopted model disagrees with the original at {size[0]}x{size[1]} "
                                   f"({row['argmax_agreement']:.4f} argmax agreement, max abs diff "
                                   f"{row.get('max_abs_diff', 0.0):.3g}); report this model's graph")
        if rows and _ratio(rows[0]) != _ratio(row):
            return rows, (f"its output does not follow the input size ({rows[0]['output']} at {rows[0]['size']}, "
                          f"{row['output']} at {row['size']})")
        rows.append(row)
    return rows, None


def _ratio(row: dict) -> tuple[int, int]:
    """Input-to-output stride per axis (rounded: ceil-mode layers give 90 for 360/4 and 91 for 361/4)."""
    h, w = row["size"]
    oh, ow = row["output"][-2:]
    return round(h / oh), round(w / ow)


def _stride(rows: list[dict], src: Path) -> int:
    sh, sw = _ratio(rows[0])
    if sh != sw or sh < 1 or not math.log2(sh).is_integer():
        raise EdgesegError(f"{src}: output {rows[0]['output']} at input {rows[0]['size']}: the scores are not at the "
                           f"input resolution or a power-of-two fraction of it; edgeseg cannot map them to pixels")
    return sh


def _check_labels(rows: list[dict], classes: ClassInfo, src: Path) -> None:
    for r in rows:
        y = r.pop("_y")
        if y.ndim == 4 and y.shape[1] != classes.num_classes:
            raise EdgesegError(f"{src}: the model scores {y.shape[1]} classes but the classes file has "
                               f"{classes.num_classes}; pass the classes.json the model was trained with")
        if y.ndim == 3 and (y.min() < 0 or y.max() >= classes.num_classes):
            raise EdgesegError(f"{src}: the model's labels reach {int(y.max())} but the classes file has "
                               f"{classes.num_classes} classes; pass the classes.json the model was trained with")
