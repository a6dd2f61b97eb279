"""Graph pass: each flow-warp subgraph (base grid from Range, flow / size, grid stack, GridSample) -> one edgeseg::FlowWarp.

The pass matches by structure and then proves the match by evaluation: the grid subgraph is cut out of the model,
run with ONNX Runtime on random flows at three sizes and compared with DESIGN.md's grid formula. Whatever the
exporter, precision (fp16 casts, int8 Q/DQ around it) or spelling of the arithmetic, a rewritten node computes
exactly what the GridSample it replaces computed; a GridSample whose grid is anything else stops the export.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgeseg.errors import EdgesegError
from edgeseg.export.graph import constant_names, producers, remove_dead_nodes
from edgeseg.kernels import DOMAIN, OP_TYPE

# What grid arithmetic is made of: shape reads, index maths, casts, the flow split and the stack.
GRID_OPS = {"Shape", "Gather", "Slice", "Split", "Squeeze", "Unsqueeze", "Reshape", "Concat", "Expand", "Transpose",
            "Identity", "Cast", "Range", "Add", "Sub", "Mul", "Div", "Neg", "Reciprocal", "Clip", "Max", "Min",
            "ConstantOfShape", "Constant"}
MATCH_TOL = 1e-5
F32 = onnx.TensorProto.FLOAT
VALUE_KEEPING = {"Cast", "Identity"}  # the grid may read the flow through these
SHAPE_KEEPING = VALUE_KEEPING | {"QuantizeLinear", "DequantizeLinear"}  # and its size through these


class FlowWarpMatchError(EdgesegError):
    """A GridSample whose grid is not a flow warp's (or whose sampling mode differs)."""


def fuse_flowwarp(model: onnx.ModelProto, *, keep_others: bool = False) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` with every GridSample replaced by edgeseg::FlowWarp; (model, {"replaced", "kept", ...}).

    Raises FlowWarpMatchError naming the first GridSample that is not a flow warp; with keep_others, such
    GridSamples (e.g. deformable attention's) stay as they are, their reasons in "kept", and the error is raised only
    when no GridSample is a flow warp.
    """
    model = _with_types(model)
    graph = model.graph
    samplers = [n for n in graph.node if n.op_type == "GridSample"]
    if not samplers:
        raise FlowWarpMatchError(f"the graph has no GridSample to replace ({model.graph.name or 'model'}): "
                                 f"--flowwarp-plugin is for flow-warp models such as sfnet")
    prod = producers(graph)
    n_before = len(graph.node)
    kept: list[str] = []
    for gs, cone in grid_cones(graph):
        try:
            align = _check_sampler(gs)
            flow, start = _match(gs, cone, prod)
            _prove_grid(_grid_subgraph(model, gs, cone, start, prod), gs, align)
            _check_dtypes(model, gs, flow)
        except FlowWarpMatchError as e:
            if not keep_others:
                raise
            kept.append(str(e))
            continue
        node = helper.make_node(OP_TYPE, [gs.input[0], flow], [gs.output[0]], name=f"{gs.name or 'GridSample'}/FlowWarp",
                                domain=DOMAIN, align_corners=align)
        idx = list(graph.node).index(gs)
        graph.node.remove(gs)
        graph.node.insert(idx, node)
    if len(kept) == len(samplers):
        raise FlowWarpMatchError(f"no GridSample is a flow warp (the first: {kept[0]})")
    removed = remove_dead_nodes(graph)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    _keep_output_types(graph, {n.output[0] for n in graph.node if n.op_type == OP_TYPE})
    return model, {"replaced": len(samplers) - len(kept), "kept": kept, "removed_nodes": removed,
                   "nodes_before": n_before, "nodes_after": len(graph.node)}


def _with_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with inferred value_info (element types of the tensors the pass reads)."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # inference failures are reported by the checker as various types
        raise EdgesegError(f"the graph fails ONNX shape inference ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def _keep_output_types(graph: onnx.GraphProto, outputs: set[str]) -> None:
    """Drop the inferred value_info except the FlowWarp outputs' type and rank (dims left unnamed).

    A runtime cannot infer the shape of a custom op's output; without its rank, ONNX Runtime leaves every
    QLinearConv / Conv downstream of a warp in NCHW (no NHWC / NCHWc layout), about 10 % of SFNet's int8 time.
    """
    kept = []
    for vi in graph.value_info:
        if vi.name in outputs:
            dims = [d.dim_value or None for d in vi.type.tensor_type.shape.dim]
            kept.append(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type,
                                                      dims if len(dims) == 4 else [None] * 4))
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _check_sampler(gs: onnx.NodeProto) -> int:
    attrs = {a.name: helper.get_attribute_value(a) for a in gs.attribute}
    mode = attrs.get("mode", b"bilinear").decode()
    pad = attrs.get("padding_mode", b"zeros").decode()
    if mode not in ("bilinear", "linear") or pad != "zeros":
        raise FlowWarpMatchError(f"GridSample {gs.name!r} uses mode={mode}, padding_mode={pad}; FlowWarp is bilinear "
                                 f"with zeros padding: export without --flowwarp-plugin")
    return int(attrs.get("align_corners", 0))


def _channel_split_input(node: onnx.NodeProto, graph_consts: dict[str, np.ndarray]) -> str | None:
    """The data input of a node that takes one channel (axis 1) of a tensor: Gather / Slice / Split on axis 1."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Gather", "Split") and attrs.get("axis", 0) == 1:
        return node.input[0]
    if node.op_type == "Slice" and len(node.input) > 3:
        axes = graph_consts.get(node.input[3])
        if axes is not None and list(np.atleast_1d(axes)) == [1]:
            return node.input[0]
    return None


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    return values


class GridCone:
    """The nodes computing a GridSample's grid, walked back until the flow's channel split or a non-grid op."""

    def __init__(self, gs: onnx.NodeProto, prod: dict, consts: set[str], values: dict[str, np.ndarray]):
        self.nodes: list[onnx.NodeProto] = []
        self.flows: set[str] = set()
        self.sources: set[str] = set()  # tensors whose shapes the grid reads
        self.foreign: list[str] = []  # why the walk stopped somewhere else: graph inputs, non-grid ops
        seen: set[str] = set()
        stack = [gs.input[1]]
        while stack:
            t = stack.pop()
            if t in seen or t in consts:
                continue
            seen.add(t)
            node = prod.get(t)
            if node is None:
                self.foreign.append(f"the graph input {t!r}")
                continue
            if node.op_type not in GRID_OPS:
                self.foreign.append(f"{node.op_type} {node.name!r}")
                continue
            self.nodes.append(node)
            if node.op_type == "Shape":
                self.sources.add(node.input[0])
                continue
            split = _channel_split_input(node, values)
            if split is not None:
                self.flows.add(split)
                continue
            stack.extend(i for i in node.input if i)


def grid_cones(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, GridCone]]:
    """Every GridSample with the cone of its grid."""
    prod, consts, values = producers(graph), constant_names(graph), _constant_values(graph)
    return [(n, GridCone(n, prod, consts, values)) for n in graph.node if n.op_type == "GridSample"]


def _match(gs: onnx.NodeProto, cone: GridCone, prod: dict) -> tuple[str, str]:
    """(the flow tensor, the tensor it is a cast of: where the grid subgraph starts), or FlowWarpMatchError."""
    hint = "export without --flowwarp-plugin"
    if cone.foreign:
        raise FlowWarpMatchError(f"GridSample {gs.name!r}: its grid depends on {cone.foreign[0]}, which is not "
                                 f"flow-warp grid arithmetic; {hint}")
    # One flow, possibly read through several identical casts (an fp16 graph casts it to fp32 once per channel).
    kinds = {_cast_key(f, prod) for f in cone.flows}
    if len(kinds) != 1:
        raise FlowWarpMatchError(f"GridSample {gs.name!r}: expected the grid to read one flow tensor [N,2,H,W] "
                                 f"channel by channel, found {len(cone.flows)} ({', '.join(sorted(cone.flows)) or 'none'}); {hint}")
    flow = min(cone.flows)
    for s in cone.sources:
        if _root(s, prod, SHAPE_KEEPING) != _root(flow, prod, SHAPE_KEEPING):
            raise FlowWarpMatchError(f"GridSample {gs.name!r}: the grid reads the size of {s!r}, not of its flow {flow!r}; {hint}")
    return flow, _root(flow, prod, VALUE_KEEPING)


def _cast_key(t: str, prod: dict) -> tuple:
    """Tensors with equal keys hold equal values: the same tensor, or casts of one tensor to one type."""
    node = prod.get(t)
    if node is not None and node.op_type == "Cast":
        return node.input[0], helper.get_attribute_value(node.attribute[0])
    return t, None


def _root(t: str, prod: dict, through: set[str]) -> str:
    """The tensor that t is computed from through any number of `through` nodes."""
    while t in prod and prod[t].op_type in through:
        t = prod[t].input[0]
    return t


def base_grid(h: int, w: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """DESIGN.md's base coordinates (bx over W, by over H) in float32."""
    def coords(n):
        pos = np.arange(n, dtype=np.float32)
        if align_corners:
            return pos * np.float32(2.0 / max(n - 1, 1)) - np.float32(1.0)
        return (np.float32(2.0) * pos + np.float32(1.0)) / np.float32(n) - np.float32(1.0)
    return coords(w), coords(h)


def _grid_subgraph(model: onnx.ModelProto, gs: onnx.NodeProto, cone: GridCone, start: str, prod: dict) -> onnx.ModelProto:
    """The grid's computation alone, as a model from `start` (the flow, before any casts) to the grid; every size
    it reads is read from `start`, which has the same shape."""
    chain = []  # the casts from start to the flow (an fp16 graph casts it once per channel)
    for t in cone.flows:
        while t != start:
            chain.append(prod[t])
            t = prod[t].input[0]
    members = {n.output[0] for n in [*cone.nodes, *chain]}
    nodes = []
    for n in model.graph.node:  # graph order is topological order
        if n.output[0] in members:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            if copy.op_type == "Shape":
                copy.input[0] = start
            nodes.append(copy)
    made = {o for n in nodes for o in n.output} | {start}
    needed = {i for n in nodes for i in n.input if i and i not in made}
    inits = [t for t in model.graph.initializer if t.name in needed]
    consts = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in needed]
    missing = needed - {t.name for t in inits} - {n.output[0] for n in consts}
    if missing:
        raise FlowWarpMatchError(f"GridSample {gs.name!r}: its grid reads {sorted(missing)[0]!r}, which is neither the flow "
                                 f"nor a constant; export without --flowwarp-plugin")
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    graph = helper.make_graph(consts + nodes, "grid", [helper.make_tensor_value_info(start, types.get(start, F32), None)],
                              [helper.make_tensor_value_info(gs.input[1], types.get(gs.input[1], F32), None)], inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _prove_grid(grid_model: onnx.ModelProto, gs: onnx.NodeProto, align: int) -> None:
    """Run the grid subgraph with ONNX Runtime on random flows: it must equal bx + fx / W, by + fy / H."""
    import onnxruntime as ort

    start = grid_model.graph.input[0]
    try:
        sess = ort.InferenceSession(grid_model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise FlowWarpMatchError(f"GridSample {gs.name!r}: its grid subgraph cannot be evaluated on its own "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); export without --flowwarp-plugin") from None
    dtype = helper.tensor_dtype_to_np_dtype(start.type.tensor_type.elem_type)
    rng = np.random.default_rng(0)
    for n, h, w in ((1, 5, 7), (2, 9, 4), (1, 1, 6)):
        f = rng.normal(0, 3, (n, 2, h, w)).astype(np.float16).astype(np.float32)  # exact in fp16 and fp32
        grid = sess.run(None, {start.name: f.astype(dtype)})[0].astype(np.float32)
        bx, by = base_grid(h, w, bool(align))
        want = np.stack([bx[None, None, :] + f[:, 0] / np.float32(w), by[None, :, None] + f[:, 1] / np.float32(h)], -1)
        if grid.shape != want.shape or not np.allclose(grid, want, atol=MATCH_TOL, rtol=MATCH_TOL):
            err = float(np.abs(grid - want).max()) if grid.shape == want.shape else f"shape {list(grid.shape)}"
            raise FlowWarpMatchError(f"GridSample {gs.name!r}: its grid is not the flow-warp grid with align_corners="
                                     f"{align} (differs by {err} at flow {n}x2x{h}x{w}); export without --flowwarp-plugin")


def _check_dtypes(model: onnx.ModelProto, gs: onnx.NodeProto, flow: str) -> None:
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    tx, tf = types.get(gs.input[0]), types.get(flow)
    ok = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    if tx not in ok or tx != tf:
        names = {t: onnx.TensorProto.DataType.Name(t) for t in (tx, tf) if t is not None}
        raise FlowWarpMatchError(f"GridSample {gs.name!r}: FlowWarp needs X and FLOW both float32 or both float16, "
                                 f"got {names.get(tx)} and {names.get(tf)}; export without --flowwarp-plugin")


def count_flowwarp(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE)

