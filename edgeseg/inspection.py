"""What a model file holds: I/O with dynamic dims, edgeseg metadata, op histogram, int8 (Q/DQ) and fp16 coverage of
the compute layers, custom ops and whether this machine runs them, opset and IR version.

`inspect_model(path) -> dict` reads an `.onnx`, or an engine's sidecar JSON (`<engine>.json`, or the engine next to
it); `format_text(info)` is what `edgeseg inspect` prints. Polygraphy's `inspect model` is the model for it.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.meta import META_KEY, parse_meta

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
INT8_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")  # QOperator form: int8 by construction
INT8_TYPES = ("INT8", "UINT8")


def inspect_model(path) -> dict:
    path = Path(path)
    if path.suffix.lower() in (".engine", ".plan", ".trt"):
        path = Path(f"{path}.json")
    if not path.is_file():
        raise EdgesegError(f"{path}: no such file; pass an .onnx, or a TensorRT engine with its <engine>.json sidecar")
    if path.suffix.lower() == ".json":
        return _inspect_sidecar(path)
    if path.suffix.lower() != ".onnx":
        raise EdgesegError(f"{path}: unknown model format {path.suffix!r}; inspect takes .onnx or an engine's .json sidecar")
    return _inspect_onnx(path)


def _load(path: Path):
    try:
        import onnx
    except ImportError:
        raise EdgesegError("inspecting an ONNX graph needs the onnx package: pip install onnx (or edgeseg[train])") from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 (protobuf's DecodeError and friends)
        raise EdgesegError(f"{path}: not an ONNX model ({type(e).__name__}); pass an .onnx file") from None
    try:  # types of intermediate tensors, for the fp16 coverage; a graph with custom ops may not infer fully
        return onnx, onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 (inference errors are reported as less coverage detail, not as a failure)
        return onnx, model


def _tensor(onnx, v) -> dict:
    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim] if t.HasField("shape") else None
    return {"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims,
            "dynamic": [i for i, d in enumerate(dims or []) if not isinstance(d, int)]}


def _inspect_onnx(path: Path) -> dict:
    onnx, model = _load(path)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    props = {p.key: p.value for p in model.metadata_props}
    meta, meta_error = None, None
    if META_KEY in props:
        try:
            meta = parse_meta(props[META_KEY], str(path))
        except EdgesegError as e:
            meta_error = str(e)
    ops: dict[str, int] = {}
    for n in g.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        ops[key] = ops.get(key, 0) + 1
    return {
        "file": str(path), "format": "onnx", "bytes": path.stat().st_size,
        "ir_version": model.ir_version, "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p) or None,
        "inputs": [_tensor(onnx, v) for v in g.input if v.name not in inits],
        "outputs": [_tensor(onnx, v) for v in g.output],
        "metadata": meta, "metadata_error": meta_error, "other_metadata": sorted(k for k in props if k != META_KEY),
        "nodes": len(g.node), "parameters": int(sum(_numel(t) for t in g.initializer)),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "int8": int8_coverage(model),
        "fp16": fp16_coverage(onnx, model),
        "custom_ops": custom_ops(model),
    }


def _numel(t) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def int8_coverage(model) -> dict:
    """Which Conv / MatMul / Gemm run int8: a Q/DQ node reads a DequantizeLinear of int8 on its data input and its
    weight (what TensorRT and ONNX Runtime fuse into an int8 kernel); QOperator nodes are int8 by construction."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}

    def dq_int8(name: str) -> bool:
        n = prod.get(name)
        if n is None or n.op_type != "DequantizeLinear":
            return False
        src = n.input[0]
        if src in inits:
            return inits[src].data_type in (2, 3)  # UINT8, INT8
        q = prod.get(src)  # an activation: QuantizeLinear's output type follows its zero point (uint8 by default)
        if q is None or q.op_type != "QuantizeLinear":
            return False
        zp = inits.get(q.input[2]) if len(q.input) > 2 else None
        return zp is None or zp.data_type in (2, 3)
    int8, floating = [], []
    for n in g.node:
        if n.op_type in INT8_OPS:
            int8.append(n.name)
        elif n.op_type in COMPUTE_OPS and n.domain in ("", "ai.onnx"):
            (int8 if len(n.input) > 1 and dq_int8(n.input[0]) and dq_int8(n.input[1]) else floating).append(n.name)
    total = len(int8) + len(floating)
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    return {"layers": total, "int8": len(int8), "fraction": len(int8) / total if total else 0.0, "qdq_nodes": qdq,
            "int8_layers": int8, "float_layers": floating}


def fp16_coverage(onnx, model) -> dict:
    """Compute layers whose data input is float16, and how many tensors of the graph are float16."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    f16 = onnx.TensorProto.FLOAT16
    layers = [n for n in g.node if n.op_type in COMPUTE_OPS]
    half = [n.name for n in layers if types.get(n.input[0]) == f16]
    known = [n for n in layers if n.input[0] in types]
    tensors = [t for t in types.values() if t in (f16, onnx.TensorProto.FLOAT)]
    return {"layers": len(layers), "fp16": len(half), "fraction": len(half) / len(layers) if layers else 0.0,
            "typed_layers": len(known), "fp16_layers": half,
            "fp16_tensors": sum(t == f16 for t in tensors), "float_tensors": len(tensors),
            "casts": sum(n.op_type == "Cast" for n in g.node)}


def custom_ops(model) -> list[dict]:
    """Ops outside the standard domains, and whether this machine has a kernel for them."""
    from edgeseg.kernels import DOMAIN, OP_TYPE, find_library

    found: dict[tuple[str, str], int] = {}
    for n in model.graph.node:
        if n.domain not in STANDARD_DOMAINS:
            found[(n.domain, n.op_type)] = found.get((n.domain, n.op_type), 0) + 1
    out = []
    for (domain, op), count in sorted(found.items()):
        row = {"domain": domain, "op": op, "count": count}
        if (domain, op) == (DOMAIN, OP_TYPE):
            ort_lib, trt_lib = find_library("ort"), find_library("trt")
            row.update(ort_cpu=ort_lib is not None, tensorrt_plugin=trt_lib is not None,
                       library=str(ort_lib) if ort_lib else None,
                       how="" if ort_lib else "build it with `edgeseg kernels build`")
        else:
            row.update(ort_cpu=False, tensorrt_plugin=False, library=None, how="no kernel for it in edgeseg")
        out.append(row)
    return out


def _inspect_sidecar(path: Path) -> dict:
    try:
        side = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgesegError(f"{path}: cannot read the engine sidecar ({e}); rebuild it with `edgeseg build`") from None
    if not isinstance(side, dict):
        raise EdgesegError(f"{path}: not an engine sidecar (a JSON object); rebuild it with `edgeseg build`")
    meta = side.get(META_KEY) if isinstance(side.get(META_KEY), dict) else side
    engine = Path(str(path)[:-len(".json")])
    return {"file": str(path), "format": "tensorrt-sidecar", "engine": str(engine) if engine.is_file() else None,
            "metadata": parse_meta(json.dumps(meta), str(path)),
            **{k: side.get(k) for k in ("tensorrt", "device", "precision", "strongly_typed", "builder_flags",
                                         "profiles", "source", "build_seconds") if k in side}}


def _dims(t: dict) -> str:
    return "[" + ",".join(str(d) for d in t["shape"] or []) + "]"


def format_text(info: dict) -> str:
    """The human-readable summary `edgeseg inspect` prints."""
    lines = [f"{info['file']} ({info['format']})"]
    if info["format"] == "onnx":
        lines.append(f"  IR version {info['ir_version']}, opsets "
                     + ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
                     + (f", producer {info['producer']}" if info["producer"] else ""))
        lines.append(f"  {info['nodes']} nodes, {info['parameters'] / 1e6:.3f} M parameters, {info['bytes'] / 1e6:.2f} MB")
        for kind in ("inputs", "outputs"):
            lines.append(f"  {kind}:")
            lines += [f"    {t['name']}: {t['dtype']} {_dims(t)}" + (" (dynamic: axes " + ",".join(map(str, t["dynamic"])) + ")"
                                                                      if t["dynamic"] else "") for t in info[kind]]
    else:
        lines.append(f"  engine: {info.get('engine') or 'not found beside the sidecar'}; TensorRT {info.get('tensorrt')}, "
                     f"precision {info.get('precision')}, profiles {info.get('profiles')}")
    meta = info.get("metadata")
    if meta:
        inp = meta["input"]
        lines.append(f"  edgeseg metadata: arch {meta['arch']}, head {meta['head']}, precision {meta.get('precision')}, "
                     f"{len(meta['classes'])} classes ({', '.join(meta['classes'][:4])}{', ...' if len(meta['classes']) > 4 else ''}), "
                     f"ignore {meta['ignore_index']}")
        lines.append(f"    input {inp['layout']} {inp['color']} {inp['dtype']}, mean {inp['mean']}, std {inp['std']}, "
                     f"size divisor {inp['size_divisor']}" + (f", fixed size {inp['fixed_size']}" if inp.get("fixed_size") else "")
                     + (f", output stride {meta['output_stride']}" if meta.get("output_stride") else ""))
        if meta.get("adopted"):
            a = meta["adopted"]
            lines.append(f"    adopted from {a.get('file')} (input {a.get('input')}, output {a.get('output')}, "
                         f"{'dynamic H/W' if a.get('dynamic_hw') else 'fixed size: ' + str(a.get('fixed_reason'))})")
    elif info.get("metadata_error"):
        lines.append(f"  edgeseg metadata: unreadable ({info['metadata_error']})")
    else:
        lines.append("  edgeseg metadata: none (adopt it with `edgeseg export --model MODEL.onnx --classes classes.json`)")
    if info["format"] != "onnx":
        return "\n".join(lines)
    q, h = info["int8"], info["fp16"]
    lines.append(f"  int8: {q['int8']} of {q['layers']} Conv/MatMul/Gemm layers ({100 * q['fraction']:.1f} %), "
                 f"{q['qdq_nodes']} Q/DQ nodes" + (f"; float: {', '.join(q['float_layers'][:6])}"
                                                   f"{', ...' if len(q['float_layers']) > 6 else ''}"
                                                   if q["int8"] and q["float_layers"] else ""))
    lines.append(f"  fp16: {h['fp16']} of {h['layers']} layers ({100 * h['fraction']:.1f} %), "
                 f"{h['fp16_tensors']} of {h['float_tensors']} float tensors, {h['casts']} Casts")
    if info["custom_ops"]:
        for c in info["custom_ops"]:
            where = ", ".join(k for k, v in (("ONNX Runtime CPU", c["ort_cpu"]), ("TensorRT plugin", c["tensorrt_plugin"])) if v)
            lines.append(f"  custom op {c['domain']}::{c['op']} x{c['count']}: "
                         + (f"runs here ({where})" if where else f"cannot run here ({c['how']})"))
    else:
        lines.append("  custom ops: none")
    width = max((len(k) for k in info["ops"]), default=0)
    lines.append("  ops:")
    lines += [f"    {k:<{width}} {v:>5}" for k, v in info["ops"].items()]
    return "\n".join(lines)
