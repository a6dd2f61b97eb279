"""FLOPs and parameters read from an ONNX graph at a concrete input shape.

FLOPs are 2 x multiply-accumulates of the layers that dominate a segmentation network: Conv, ConvTranspose,
MatMul, Gemm and their int8 forms (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger). Elementwise ops,
pooling, resizing and normalisation are left out (a few percent at most), as in the papers' tables.
Shapes come from ONNX Runtime's symbolic shape inference with the input's dynamic dimensions fixed, which
follows the shape arithmetic (Shape -> Gather -> Reshape) that plain ONNX shape inference gives up on.
"""
from __future__ import annotations

from math import prod

import numpy as np
import onnx

from edgeseg.errors import EdgesegError

CONV_OPS = ("Conv", "ConvInteger", "QLinearConv")
MATMUL_OPS = ("MatMul", "MatMulInteger", "QLinearMatMul")
# index of the weight and of the data input of each op (QLinear ops interleave scales and zero points)
WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
B_INPUT = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "Gemm": 1}
A_INPUT = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0, "Gemm": 0}


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise EdgesegError(f"{model}: not a readable ONNX model ({type(e).__name__}); pass an .onnx file") from None


def _fix_input(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    inits = {i.name for i in fixed.graph.initializer}
    inputs = [i for i in fixed.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise EdgesegError(f"FLOP count needs a single-input model; this one has {len(inputs)} inputs")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise EdgesegError(f"input shape {list(shape)} does not fit the model input of rank {len(dims)}")
    for d, v in zip(dims, shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    return fixed


def tensor_shapes(model, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every tensor's concrete shape for this input shape (initializers included)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    fixed = _fix_input(_load(model), input_shape)
    try:
        inferred = SymbolicShapeInference.infer_shapes(fixed, auto_merge=True)
    except Exception as e:  # the inference raises bare Exceptions on graphs it cannot follow
        raise EdgesegError(f"shape inference failed ({type(e).__name__}: {str(e).strip()[:160]}); FLOPs unknown") from None
    g = inferred.graph
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes.setdefault(v.name, tuple(d.dim_value for d in dims))
    for n in g.node:  # Constant nodes carry weights too in some exports
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            shapes.setdefault(n.output[0], tuple(n.attribute[0].t.dims))
    return shapes


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_flops(node, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """2 x MACs of one node, or None when it is not a counted op (or a shape is unknown)."""
    op = node.op_type

    def shape(i):
        return shapes.get(node.input[i]) if i < len(node.input) else None

    if op in CONV_OPS:
        w, y = shape(WEIGHT_INPUT[op]), shapes.get(node.output[0])
        if w is None or y is None:
            return None
        # weight [Cout, Cin/groups, k...]: each output element takes Cin/groups * prod(k) products
        return 2 * prod(y) * prod(w[1:])
    if op == "ConvTranspose":
        w, x = shape(1), shape(0)
        if w is None or x is None:
            return None
        # weight [Cin, Cout/groups, k...]: each input element scatters into Cout/groups * prod(k) outputs
        return 2 * prod(x) * prod(w[1:])
    if op in MATMUL_OPS or op == "Gemm":
        a, y = shape(A_INPUT[op]), shapes.get(node.output[0])
        if a is None or y is None:
            return None
        k = a[0] if op == "Gemm" and _attr(node, "transA", 0) else a[-1]
        return 2 * prod(y) * k
    return None


COUNTED = CONV_OPS + MATMUL_OPS + ("ConvTranspose", "Gemm")


def _run_shapes(model: onnx.ModelProto, input_shape: tuple[int, ...], names: set[str]) -> dict[str, tuple[int, ...]]:
    """The shapes of `names` from one ONNX Runtime run on zeros: for graphs whose shape arithmetic the symbolic
    inference cannot follow (a ViT's position-embedding grid read from the input size)."""
    from edgeseg.runtime.backends.ort import ort_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.ValueInfoProto(name=n) for n in sorted(names - known))
    inp = next(i for i in probe.graph.input if i.name not in {t.name for t in probe.graph.initializer})
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    try:
        sess = ort_session(probe.SerializeToString(), threads=1, optimization="disable")
        values = sess.run(None, {inp.name: np.zeros(input_shape, dtype)})
    except Exception as e:  # noqa: BLE001 (onnxruntime's own exception types)
        raise EdgesegError(f"FLOP count: the graph does not run at {list(input_shape)} ({str(e).strip()[:160]})") from None
    return {o.name: tuple(v.shape) for o, v in zip(sess.get_outputs(), values)}


def count_flops(model, input_shape: tuple[int, ...]) -> dict:
    """{"total": FLOPs, "by_op": {op: FLOPs}, "uncounted": [names of counted-type nodes whose shapes are unknown]}."""
    model = _load(model)
    shapes = tensor_shapes(model, input_shape)
    counted = [n for n in model.graph.node if n.op_type in COUNTED]
    missing = {t for n in counted for t in (*n.input, n.output[0]) if t and t not in shapes}
    if missing:
        shapes.update(_run_shapes(model, input_shape, missing))
    by_op: dict[str, int] = {}
    uncounted = []
    for node in model.graph.node:
        if node.op_type not in COUNTED:
            continue
        f = node_flops(node, shapes)
        if f is None:
            uncounted.append(node.name or node.output[0])
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + f
    return {"total": sum(by_op.values()), "by_op": by_op, "uncounted": uncounted}


def count_params(model) -> int:
    """Elements of the weight initializers: the deployed weights (BatchNorm is folded into Conv on export), float or
    int8 (a Q/DQ graph's weights), not the quantization scales and zero points."""
    model = _load(model)
    T = onnx.TensorProto
    weights = {T.FLOAT, T.FLOAT16, T.DOUBLE, T.BFLOAT16, T.INT8, T.UINT8}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    qparams = {i for n in qdq for i in n.input[1:]}
    int32_biases = {n.input[0] for n in qdq if n.op_type == "DequantizeLinear"}
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) > 0 and t.name not in qparams
                   and (t.data_type in weights or (t.data_type == T.INT32 and t.name in int32_biases))))
