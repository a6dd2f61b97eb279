"""INT8: post-training static quantization to explicit Q/DQ ONNX, with an accuracy guard.

Placement for TensorRT (strongly typed, TensorRT >= 10): symmetric int8 Q/DQ on the inputs and weights of Conv,
MatMul and Gemm (per-channel weights), nothing on their outputs, so that Resize, GridSample / FlowWarp, Softmax,
the elementwise ops and everything computed from shapes stay in float; products with a shape-derived matrix
(the dynamic pooling of a PPM) stay float too: their values change with the input size, which calibration
cannot describe; so do attention's products of two activations and the logits between them and their
Softmax (a masked key's -1e9 bias would take the whole int8 range). The `cpu` form is what ONNX Runtime on x86
runs fastest (uint8 activations, Relu folded into the quantization range, Add / Concat / Resize quantized too,
the output left float); TensorRT rejects it (uint8, zero points).

The guard measures mIoU of fp32 and int8 on a held-out split; when int8 loses more than `max_loss` points it
ranks the quantized layers by the output error each one alone causes and leaves the worst in float, as few as
the loss allows; in the cpu form, when every Conv / MatMul / Gemm in float is not enough, it ranks the other
requantized nodes (Add, LayerNorm, Concat, Resize...) after them and goes on.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgeseg.errors import EdgesegError
from edgeseg.export.graph import constant_names, shape_derived, softmax_logits
from edgeseg.export.validate import OrtPredictor, model_input
from edgeseg.progress import progress_bar
from edgeseg.sizes import fit

CALIB_METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("tensorrt", "cpu")
TARGET_CHOICES = ("auto", *TARGETS)
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# faster in float on ONNX Runtime CPU: QLinearSoftmax took 34 ms of SegFormer-B0's 191 (float Softmax: 6)
FLOAT_OPS = ("Softmax",)
# ops whose output the cpu form requantizes (ONNX Runtime's QLinear / QDQ registries less those that only move data)
REQUANTIZED_OPS = ("Add", "Mul", "Concat", "Resize", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu",
                   "Clip", "LayerNormalization", "BatchNormalization", "InstanceNormalization", "Where")


@dataclass
class QuantConfig:
    method: str = "percentile"
    percentile: float = 99.99
    target: str = "tensorrt"
    per_channel: bool = True
    attention: bool = False  # quantize products of two activations too (see float_matmuls)
    fallback: str | None = None  # why calibration fell back to min/max ranges (then `method` is "minmax")

    def __post_init__(self):
        if self.method not in CALIB_METHODS:
            raise EdgesegError(f"unknown calibration method {self.method!r}; use one of: {', '.join(CALIB_METHODS)}")
        if self.target not in TARGETS:
            raise EdgesegError(f"unknown int8 target {self.target!r}; use one of: {', '.join(TARGETS)}")
        if not 90.0 <= self.percentile <= 100.0:
            raise EdgesegError(f"calibration percentile {self.percentile} is out of range; use 90..100 (e.g. 99.99)")


def resolve_target(requested: str) -> tuple[str, str]:
    """(the Q/DQ form to write, why): `auto` picks the form for what will run the model here."""
    if requested not in TARGET_CHOICES:
        raise EdgesegError(f"unknown int8 target {requested!r}; use one of: {', '.join(TARGET_CHOICES)}")
    if requested != "auto":
        return requested, "as requested"
    try:  # a wheel without NVIDIA's libraries installs but fails to import: that is no TensorRT
        import tensorrt  # noqa: F401
        have_trt = True
    except Exception:
        have_trt = False
    if have_trt:
        return "tensorrt", "auto: TensorRT is importable, so the symmetric int8 form TensorRT >= 10 builds from"
    return "cpu", ("auto: TensorRT is not importable here, so the form ONNX Runtime CPU runs fastest (1.8-3.8x the "
                   "tensorrt form's speed there); pass --int8-target tensorrt to build engines elsewhere")


class CalibrationImages:
    """ONNX Runtime's calibration reader over real images, each at its own size (rounded to the size divisor).

    Images are decoded once and kept, because the guard quantizes many times.
    """

    def __init__(self, files: Sequence[Path], meta: dict, input_name: str = "images"):
        from edgeseg.export.validate import read_images

        if not files:
            raise EdgesegError("no calibration images; pass --calib with a folder of images")
        self.files, self.meta, self.input_name = list(files), meta, input_name
        self.images = read_images(self.files)
        self.set_range(0, len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(range(start_index, min(end_index, len(self.images))))

    def get_next(self) -> dict | None:
        i = next(self._it, None)
        if i is None:
            return None
        img = self.images[i]
        size = fit(img.shape[:2], self.meta["input"]["size_divisor"])
        return {self.input_name: model_input([img], size, self.meta)}

    def rewind(self) -> None:
        self.set_range(0, len(self.images))


def float_matmuls(model: onnx.ModelProto, attention: bool = False) -> list[str]:
    """MatMul / Gemm nodes kept in float: those with an operand computed from shapes (adaptive pooling matrices), and
    unless `attention`, products of two activations (attention's q.k^T and softmax.v, mask embeddings . pixels).

    A weight (a constant) is what int8 quantizes per channel. Attention products are not worth it on ONNX Runtime
    CPU: with them quantized, the Softmax between runs as QLinearSoftmax, 34 of SegFormer-B0's 191 ms (float: 6),
    and SegFormer's int8 was 1.5x its fp32 against 1.9x with them float (bench/results/transformers_cpu.md).
    """
    const = constant_names(model.graph)
    derived = shape_derived(model.graph) - const
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
            and (any(i in derived for i in n.input) or (not attention and not any(i in const for i in n.input)))]


def attention_logits(model: onnx.ModelProto) -> list[str]:
    """The steps from a float attention product (q.k^T) to its Softmax: the logits' scale, additive bias and
    reshapes. The bias of a masked key (-1e9, Mask2Former's masked attention) stretches their range so far that an
    int8 requantization leaves the real logits one value: the cpu form cost a trained Mask2Former 12 mIoU points
    with every Conv and MatMul in float."""
    products = set(float_matmuls(model))  # with the queries a learned constant (a first layer), a shape-derived one
    return sorted({step for product, steps in softmax_logits(model.graph) if product in products for step in steps})


def size_dependent_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes whose values scale with the input size: flow-warp grids and their GridSample, index arithmetic.

    Calibrated at one size, their quantization ranges would be wrong at every other size.
    """
    from edgeseg.export.flowwarp import grid_cones

    derived = shape_derived(model.graph)
    names = {n.name for gs, cone in grid_cones(model.graph) for n in [gs, *cone.nodes]}
    names |= {n.name for n in model.graph.node if n.output and all(o in derived for o in n.output if o)}
    return [n.name for n in model.graph.node if n.name in names]


def output_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes other than Conv / MatMul / Gemm that write a graph output (the final upsampling of the logits):
    kept float, so that the full-resolution output is not quantized only to be dequantized again."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.op_type not in QUANTIZED_OPS and outputs.intersection(n.output)]


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes the tensorrt placement quantizes, in graph order."""
    keep_float = set(float_matmuls(model))
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name not in keep_float]


def kept_float(model: onnx.ModelProto, cfg: QuantConfig) -> list[str]:
    """Nodes no placement quantizes (see float_matmuls, attention_logits, size_dependent_nodes, output_nodes,
    FLOAT_OPS)."""
    return (float_matmuls(model, cfg.attention) + ([] if cfg.attention else attention_logits(model))
            + size_dependent_nodes(model) + output_nodes(model)
            + [n.name for n in model.graph.node if n.op_type in FLOAT_OPS])


def requantized_nodes(model: onnx.ModelProto, cfg: QuantConfig) -> list[str]:
    """Beyond Conv / MatMul / Gemm, the nodes whose arithmetic the cpu form runs on quantized values (residual Adds,
    LayerNorms, Concats that requantize to one scale, Resizes...): the guard's second rank, when keeping every
    Conv / MatMul / Gemm in float is not enough (a ViT's residual stream). None in the tensorrt form."""
    if cfg.target != "cpu":
        return []
    skip = set(kept_float(model, cfg))
    return [n.name for n in model.graph.node if n.op_type in REQUANTIZED_OPS and n.name not in skip]


def chunk_size(n: int, most: int = 4) -> int:
    """Images per calibration pass (bounds the memory of intermediate outputs); must divide n."""
    return max(d for d in range(1, min(most, n) + 1) if n % d == 0)


def quantize(fp32: Path, out: Path, images: CalibrationImages, cfg: QuantConfig, *, exclude: Sequence[str] = (),
             only: Sequence[str] | None = None, cache: Path | None = None) -> Path:
    """Write the Q/DQ model of `fp32` to `out`; calibration ranges are cached in `cache` (JSON) for reuse."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32))
    names = {n.name for n in model.graph.node}
    missing = [n for n in list(exclude) + list(only or []) if n not in names]
    if missing:
        raise EdgesegError(f"{fp32}: no node named {missing[0]!r} to keep in float; check the node names in report.json")
    trt = cfg.target == "tensorrt"
    options = {"CalibStridedMinMax": chunk_size(len(images)), "CalibPercentile": cfg.percentile,
               "ActivationSymmetric": trt, "CalibTensorRangeSymmetric": trt, "WeightSymmetric": True}
    if trt:
        options["OpTypesToExcludeOutputQuantization"] = list(QUANTIZED_OPS)
        options["QDQKeepRemovableActivations"] = True
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    images.rewind()
    try:  # quiet: quantize_static advises pre-processing (done: the graph is simplified) and prints histogram settings
        logging.disable(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(fp32), str(out), images, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTIZED_OPS) if trt else None, nodes_to_quantize=list(only or []),
                            nodes_to_exclude=list(exclude) + kept_float(model, cfg),
                            calibrate_method=method,
                            extra_options=options, calibration_cache_path=str(cache) if cache else None)
    except MemoryError as e:
        if cfg.method == "minmax":
            raise EdgesegError(f"INT8 calibration of {fp32} ran out of memory; pass fewer --calib-images") from None
        # ONNX Runtime's histogram keeps the bin width of a tensor's first calibration pass and adds bins up to later
        # maxima: a tensor near zero in the first images and large later asks for terabytes. Min/max needs no bins.
        cfg.fallback = (f"{cfg.method} calibration ran out of memory in ONNX Runtime's histogram "
                        f"({str(e).split(' for ')[0]}); min/max ranges instead")
        cfg.method = "minmax"
        return quantize(fp32, out, images, cfg, exclude=exclude, only=only, cache=cache)
    except EdgesegError:
        raise
    except Exception as e:  # onnxruntime.quantization raises ValueError / RuntimeError / ORT errors
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise EdgesegError(f"INT8 quantization of {fp32} failed ({type(e).__name__}: {why})") from None
    finally:
        logging.disable(logging.NOTSET)
    q = onnx.load(str(out))
    q.ir_version = model.ir_version
    shapes_from_quantized(q)
    onnx.save(q, str(out))
    return out


def shapes_from_quantized(model: onnx.ModelProto) -> int:
    """Let Shape nodes read the quantized tensor instead of its DequantizeLinear (same shape): a DQ that only fed
    shape reads then goes away, and with it a full pass over the tensor. Returns the Shape nodes rewired."""
    from edgeseg.export.graph import producers, remove_dead_nodes

    prod = producers(model.graph)
    n = 0
    for node in model.graph.node:
        src = prod.get(node.input[0]) if node.op_type == "Shape" else None
        if src is not None and src.op_type == "DequantizeLinear":
            node.input[0] = src.input[0]
            n += 1
    remove_dead_nodes(model.graph)
    return n


def qdq_summary(model: onnx.ModelProto) -> dict:
    """Which ops read a dequantized tensor (quantized inputs) and which do not: the placement a test checks."""
    from edgeseg.export.graph import producers

    prod = producers(model.graph)
    quantized: dict[str, int] = {}
    floating: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        reads_dq = any(i in prod and prod[i].op_type == "DequantizeLinear" for i in n.input)
        bucket = quantized if reads_dq else floating
        bucket[n.op_type] = bucket.get(n.op_type, 0) + 1
    return {"quantized_inputs": quantized, "float_inputs": floating}


# ---------------------------------------------------------------- accuracy guard
@dataclass
class GuardResult:
    fp32: dict  # metrics of the fp32 model on the guard split ({"miou", ...})
    int8: dict  # metrics of the int8 model written
    max_loss: float
    float_nodes: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # {"float_nodes": k, "miou": m, "loss_points": points}
    sensitivity: list[dict] = field(default_factory=list)  # {"node", "error"} worst first

    @property
    def fp32_miou(self) -> float:
        return self.fp32["miou"]

    @property
    def int8_miou(self) -> float:
        return self.int8["miou"]

    @property
    def loss(self) -> float:
        return 100.0 * (self.fp32_miou - self.int8_miou)

    def to_dict(self) -> dict:
        return {"fp32_miou": self.fp32_miou, "int8_miou": self.int8_miou, "loss_points": self.loss,
                "max_loss": self.max_loss, "float_nodes": self.float_nodes, "steps": self.steps,
                "sensitivity": self.sensitivity}


def sensitivity(fp32: Path, images: CalibrationImages, cfg: QuantConfig, cache: Path, work: Path,
                nodes: Sequence[str], *, probe: int = 4, progress: bool = True) -> list[dict]:
    """Output error (squared logit error / squared logit, or changed labels) caused by quantizing each node alone.

    Measured on the first `probe` calibration images; worst first.
    """
    ref = OrtPredictor(fp32)
    probes = [images.images[i] for i in range(min(probe, len(images)))]
    feeds = [model_input([img], fit(img.shape[:2], images.meta["input"]["size_divisor"]), images.meta) for img in probes]
    want = [ref(x) for x in feeds]
    out = []
    for name in progress_bar(nodes, show=progress, desc="int8 sensitivity", unit="layer", leave=False):
        path = quantize(fp32, work / "probe.onnx", images, cfg, only=[name], cache=cache)
        run = OrtPredictor(path)
        err = float(np.mean([_error(run(x), w) for x, w in zip(feeds, want)]))
        out.append({"node": name, "error": err})
    return sorted(out, key=lambda r: -r["error"])


def _error(got: np.ndarray, want: np.ndarray) -> float:
    """Relative squared error of logits; the fraction of changed pixels for an argmax head's labels."""
    if want.ndim == 3:
        return float(np.mean(got != want))
    return float(np.mean((got - want) ** 2) / max(float(np.mean(want ** 2)), 1e-12))


def guarded_quantize(fp32: Path, out: Path, images: CalibrationImages, cfg: QuantConfig, evaluate: Callable[[Path], dict],
                     *, max_loss: float = 0.5, progress: bool = True) -> GuardResult:
    """Quantize; while int8 loses more than max_loss mIoU points, keep the most sensitive layers in float.

    `evaluate(onnx_path) -> {"miou": 0..1, ...}` on the guard split. The number of layers kept in float is
    searched by doubling, then bisection: the smallest count found whose loss is within max_loss (about
    2 log2(layers) evaluations; the loss is close to monotonic in that count, not exactly).
    """
    with tempfile.TemporaryDirectory(prefix="edgeseg-int8-") as tmp:
        work = Path(tmp)
        cache = work / "ranges.json"
        base = evaluate(fp32)
        quantize(fp32, out, images, cfg, cache=cache)
        result = GuardResult(fp32=base, int8=evaluate(out), max_loss=max_loss)
        result.steps.append({"float_nodes": 0, "miou": result.int8_miou, "loss_points": result.loss})
        if result.loss <= max_loss:
            return result
        model = onnx.load(str(fp32))
        result.sensitivity = sensitivity(fp32, images, cfg, cache, work, quantizable_nodes(model), progress=progress)
        second = requantized_nodes(model, cfg)  # ranked only if every Conv / MatMul / Gemm in float is not enough
        if not result.sensitivity and not second:
            raise EdgesegError(f"INT8 loses {result.loss:.2f} mIoU points and {fp32} has no layer to keep in float")
        order = [r["node"] for r in result.sensitivity]
        trials: dict[int, dict] = {0: result.int8}

        def loss(k: int) -> float:
            if k not in trials:
                path = quantize(fp32, work / f"k{k}.onnx", images, cfg, exclude=order[:k], cache=cache)
                trials[k] = evaluate(path)
                result.steps.append({"float_nodes": k, "miou": trials[k]["miou"],
                                     "loss_points": 100.0 * (base["miou"] - trials[k]["miou"])})
            return 100.0 * (base["miou"] - trials[k]["miou"])

        lo, hi = 0, min(1, len(order))
        while loss(hi) > max_loss:
            if hi >= len(order) and second:
                ranked = sensitivity(fp32, images, cfg, cache, work, second, progress=progress)
                result.sensitivity += ranked
                order += [r["node"] for r in ranked]
                second = []
            elif hi >= len(order):  # every layer in float and still too far off: the float graphs disagree
                raise EdgesegError(f"INT8 loses {loss(hi):.2f} mIoU points even with every layer in float; "
                                   f"check the calibration images or export without int8")
            lo, hi = hi, min(max(1, 2 * hi), len(order))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if loss(mid) <= max_loss else (mid, hi)
        quantize(fp32, out, images, cfg, exclude=order[:hi], cache=cache)
        result.float_nodes, result.int8 = order[:hi], trials[hi]
        return result


def calibration_summary(images: CalibrationImages, cfg: QuantConfig, folder: Path) -> dict:
    sizes = sorted({tuple(img.shape[:2]) for img in images.images})
    out = {"folder": str(folder), "images": len(images), "method": cfg.method, "sizes": [list(s) for s in sizes],
           "target": cfg.target, "per_channel_weights": cfg.per_channel}
    if cfg.method == "percentile":
        out["percentile"] = cfg.percentile
    if cfg.fallback:
        out["fallback"] = cfg.fallback
    return out

