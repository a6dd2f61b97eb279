"""ONNX graph plumbing shared by the export steps: checked loading, atomic saving, metadata, graph queries."""
from __future__ import annotations

import json
from pathlib import Path

import onnx

from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path
from edgeseg.meta import META_KEY, parse_meta

IR_VERSION = 8  # what opset 16-20 graphs need; ONNX Runtime 1.31 reads up to 13, TensorRT 8.x up to 8
MIN_OPSET, MAX_OPSET = 16, 20  # GridSample arrived in 16; the TorchScript exporter stops at 20


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgesegError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (GridSample needs 16; "
                           f"17 is the default because TensorRT 10.13 computes GridSample wrongly from opset-20 graphs)")
    return opset


def load(path: str | Path) -> onnx.ModelProto:
    """An ONNX model from a file, checked; a clear error for a missing, corrupt or unsupported file."""
    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: no such ONNX file; give the path of a model written by `edgeseg export`")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, ValidationError, ...
        raise EdgesegError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}); "
                           f"re-export it with `edgeseg export`") from None
    opset = default_opset(model)
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgesegError(f"{path}: opset {opset} is not supported (use {MIN_OPSET}..{MAX_OPSET}); re-export it with --opset 17")
    return model


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write atomically (temporary name, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def set_meta(model: onnx.ModelProto, meta: dict) -> None:
    """Store the edgeseg metadata JSON in metadata_props (replacing an older one)."""
    props = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=META_KEY, value=json.dumps(meta, separators=(",", ":")))


def get_meta(model: onnx.ModelProto, source: str = "model") -> dict:
    for p in model.metadata_props:
        if p.key == META_KEY:
            return parse_meta(p.value, source)
    raise EdgesegError(f"{source}: no edgeseg metadata (metadata_props['{META_KEY}']); export the model with `edgeseg export`")


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


# steps allowed between a logits product and its Softmax: scaling, an additive mask, head reshapes
LOGIT_STEPS = {"Add", "Sub", "Mul", "Div", "Where", "Reshape", "Transpose", "Cast", "Identity", "Squeeze", "Unsqueeze",
               "Flatten"}
LOGIT_PRODUCTS = {"MatMul", "Gemm", "Einsum"}


def softmax_logits(graph: onnx.GraphProto) -> list[tuple[str, tuple[str, ...]]]:
    """What computes each softmax's logits: (the matrix product, the steps from it to the Softmax), by name."""
    prod, found = producers(graph), []

    def walk(tensor: str, path: tuple[str, ...]) -> None:
        node = prod.get(tensor)
        if node is None or len(path) > 8:
            return
        if node.op_type in LOGIT_PRODUCTS:
            found.append((node.name, path))
        elif node.op_type in LOGIT_STEPS:
            for i in node.input:
                if i:
                    walk(i, path + (node.name,))

    for n in graph.node:
        if n.op_type in ("Softmax", "LogSoftmax"):
            walk(n.input[0], ())
    return found


def constant_names(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def shape_derived(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from constants and tensor shapes only (index maths, grids, pooling matrices).

    They change with the input size but not with the image content: calibration ranges do not describe them,
    and their arithmetic must stay exact, so no precision conversion touches them.
    """
    derived = constant_names(graph)
    for n in graph.node:  # topological order
        if n.op_type == "Shape" or (n.input and all(i in derived for i in n.input if i)):
            derived.update(o for o in n.output if o)
    return derived


def remove_dead_nodes(graph: onnx.GraphProto) -> int:
    """Drop nodes, initializers and value_info that no graph output depends on; returns the nodes removed."""
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(graph.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    removed = len(graph.node) - len(keep)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    for field in (graph.initializer, graph.value_info):
        kept = [t for t in field if t.name in needed]
        del field[:]
        field.extend(kept)
    return removed


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
