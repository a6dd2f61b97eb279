"""Mixed-precision FP16: explicit casts in the graph (what TensorRT >= 10 builds strongly typed and ORT runs).

Convolutions, matrix products and elementwise work run in fp16; numerically sensitive ops stay in fp32:
softmax, reductions, normalisations, resampling, index arithmetic computed from shapes, and each flow warp's
grid arithmetic with its GridSample (a grid coordinate in fp16 is off by up to 1/2048 of the image: a pixel
at 1024 wide). Inputs and outputs keep their types, so a runtime feeds an fp16 model like the fp32 one.

Transformers: the logits of every softmax (attention's q.k^T MatMul and the scale and bias steps between it
and the Softmax) stay fp32. Their inputs fit fp16 but the dot products need not: a sum over 64 channels of
values near 40 already passes fp16's 65504, and an infinite logit turns the softmax into NaN. LayerNorm is
one LayerNormalization node from opset 17; below that its decomposition (mean, centring, variance + eps,
sqrt, division) stays fp32 too, since the variance of activations above 256 overflows.
"""
from __future__ import annotations

import warnings

import onnx
from onnxconverter_common import float16

from edgeseg.errors import EdgesegError
from edgeseg.export.flowwarp import grid_cones
from edgeseg.export.graph import consumers, producers, shape_derived, softmax_logits
from edgeseg.kernels import OP_TYPE

FP32_OPS = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | {
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
    "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "LayerNormalization", "BatchNormalization",
    "InstanceNormalization", "GroupNormalization", "LpNormalization", "MeanVarianceNormalization",
    "GridSample", OP_TYPE, "Range", "Resize", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Erf",
})


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name (block lists and reports refer to nodes by name)."""
    used = {n.name for n in graph.node if n.name}
    for i, n in enumerate(graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def decomposed_layernorms(graph: onnx.GraphProto) -> set[str]:
    """Opset < 17 LayerNorm: x - mean, variance + eps and the division around each Sqrt."""
    prod, cons, keep = producers(graph), consumers(graph), set()
    for n in graph.node:
        if n.op_type != "Sqrt" or (add := prod.get(n.input[0])) is None or add.op_type != "Add":
            continue
        mean = next((prod.get(i) for i in add.input if prod.get(i) is not None and prod[i].op_type == "ReduceMean"), None)
        if mean is None:
            continue
        keep.add(add.name)
        for div in cons.get(n.output[0], []):
            if div.op_type == "Div":
                keep.add(div.name)
                if (sub := prod.get(div.input[0])) is not None and sub.op_type == "Sub":
                    keep.add(sub.name)
    return keep


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes kept in fp32 besides FP32_OPS: grid cones, shape-derived arithmetic, softmax logits
    and decomposed LayerNorms."""
    graph = model.graph
    derived = shape_derived(graph)
    keep = {n.name for _, cone in grid_cones(graph) for n in cone.nodes}
    keep |= {n for product, steps in softmax_logits(graph) for n in (product, *steps)}
    keep |= decomposed_layernorms(graph)
    for n in graph.node:
        outs = [o for o in n.output if o]
        if outs and all(o in derived for o in outs):
            keep.add(n.name)  # index maths and pooling matrices built from the input size
        elif n.op_type == "MatMul" and any(i in derived for i in n.input):
            keep.add(n.name)  # a product with a shape-derived matrix is a pooling (a reduction)
    return sorted(keep)


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """(fp16 model, {"fp32_ops": [...], "fp32_nodes": n}); the input model is not changed."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]  # stale entries would be duplicated, with conflicting types, by the converter
    name_nodes(model.graph)
    nodes = fp32_nodes(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per weight clamped to the fp16 range
            out = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS,
                                                   node_block_list=nodes)
    except Exception as e:  # the converter raises plain exceptions from shape inference and graph surgery
        raise EdgesegError(f"FP16 conversion failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    out.ir_version = model.ir_version
    _restore_output_types(out, {o.name: o.type.tensor_type.elem_type for o in model.graph.output})
    in_fp32 = set(nodes) | {n.name for n in model.graph.node if n.op_type in FP32_OPS}
    return out, {"fp32_ops": sorted({n.op_type for n in model.graph.node if n.op_type in FP32_OPS}),
                 "fp32_nodes": len(in_fp32), "nodes": len(model.graph.node)}


def _restore_output_types(model: onnx.ModelProto, want: dict[str, int]) -> None:
    """Outputs keep their fp32 type (the converter's keep_io_types misses outputs made by a blocked node, which it
    casts back to fp16): drop that cast, or add one to fp32."""
    from onnx import helper

    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    prod = producers(graph)
    for out in graph.output:
        if out.type.tensor_type.elem_type == want[out.name]:
            continue
        node = prod[out.name]
        if node.op_type == "Cast" and types.get(node.input[0]) == want[out.name]:
            src = node.input[0]
            graph.node.remove(node)
            for n in graph.node:  # the tensor the cast read becomes the output
                n.output[:] = [out.name if o == src else o for o in n.output]
                n.input[:] = [out.name if i == src else i for i in n.input]
        else:
            inner = f"{out.name}_fp16"
            for n in graph.node:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            graph.node.append(helper.make_node("Cast", [inner], [out.name], to=want[out.name], name=f"{out.name}_to_fp32"))
        out.type.tensor_type.elem_type = want[out.name]


def float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every node's first float output (shape inference), by node name: what a test checks."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    prod = producers(inferred.graph)
    return {prod[t].name: types[t] for t in types if t in prod}
