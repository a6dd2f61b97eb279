"""The export stage on real CamVid frames: parity, metadata, fp16, int8 Q/DQ and its guard, FlowWarp graphs, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeseg.cli import main
from edgeseg.data import CAMVID, read_image
from edgeseg.errors import EdgesegError
from edgeseg.export import export_model
from edgeseg.export.flowwarp import FlowWarpMatchError, count_flowwarp, fuse_flowwarp
from edgeseg.export.fp16 import FP32_OPS, float_types, fp32_nodes
from edgeseg.export.graph import constant_names, get_meta, load, op_counts, shape_derived
from edgeseg.export.int8 import (
    CalibrationImages,
    QuantConfig,
    attention_logits,
    float_matmuls,
    guarded_quantize,
    kept_float,
    qdq_summary,
    quantizable_nodes,
    quantize,
    requantized_nodes,
    size_dependent_nodes,
)
from edgeseg.export.torch_export import Deployable, example_input, export_onnx, split_thin_convs
from edgeseg.export.validate import Gates, OrtPredictor, image_files, model_input
from edgeseg.fileio import sha256_file
from edgeseg.kernels import find_library, register_ort_ops
from edgeseg.meta import META_KEY, parse_meta
from edgeseg.models import available, checkpoint, create
from edgeseg.models.attention import MASKED, MultiheadAttention
from edgeseg.models.layers import adaptive_avg_pool2d, flow_warp
from tests.conftest import shrink_camvid

SIZES = ((64, 96), (96, 128), (80, 160))  # H and W not multiples of 32: SFNet's resizes and warps at odd ratios
F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT


def realistic(model: nn.Module, images: np.ndarray, seed: int = 0) -> nn.Module:
    """Random weights that behave like trained ones where it matters here: non-zero flows (SFNet initialises
    them to zero) and batch-norm statistics of real images."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the batch below
        model.train()(torch.from_numpy(images))
    return model.eval()


@pytest.fixture(scope="module")
def frames(camvid) -> list[np.ndarray]:
    return [read_image(p) for p in image_files(camvid, "val")[::25][:4]]


@pytest.fixture(scope="module")
def sfnet_ckpt(tmp_path_factory, frames) -> Path:
    torch.manual_seed(0)
    model = create("sfnet", CAMVID.num_classes, fpn_dim=32, aux=False)
    meta = {"input": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "dtype": "float32", "layout": "NCHW"}}
    realistic(model, model_input(frames, (96, 128), meta))
    path = tmp_path_factory.mktemp("ckpt") / "sfnet-tiny.pt"
    checkpoint.save(checkpoint.model_record(model, CAMVID, train_size=[96, 128]), path)
    return path


@pytest.fixture(scope="module")
def ort_ops():
    if find_library("ort") is None:
        pytest.skip("the FlowWarp ONNX Runtime op is not built (`edgeseg kernels build`)")


@pytest.fixture(scope="module")
def exported(tiny_camvid, tmp_path_factory, ort_ops) -> dict:
    """One export of everything the tests below inspect: the shipped SFNet (trained: int8 behaves as it does in
    use, unlike random weights whose near-tied logits flip) to fp32, fp16, int8 (guarded, the TensorRT form) and
    FlowWarp graphs."""
    out = tmp_path_factory.mktemp("export")
    rep = export_model("demo", out, ("fp32", "fp16", "int8"), data=str(tiny_camvid), sizes=SIZES, calib_images=4,
                       validate_images=2, flowwarp_plugin=True, int8_target="tensorrt", progress=False)
    return {"report": rep, "out": out, "ckpt": checkpoint.resolve("demo")}


def torch_logits(ckpt: Path, x: np.ndarray) -> np.ndarray:
    model, _ = checkpoint.load_model(str(ckpt))
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------- fp32 parity and metadata
def test_fp32_matches_pytorch_at_three_sizes(exported, frames):
    rep = exported["report"]
    meta = get_meta(load(rep["outputs"]["fp32"]["path"]))
    run = OrtPredictor(rep["outputs"]["fp32"]["path"])
    for size in [(72, 104), (120, 168), (360, 480)]:  # none of them the export's sizes
        x = model_input(frames[:2], size, meta)
        want, got = torch_logits(exported["ckpt"], x), run(x)
        assert got.shape == want.shape == (2, CAMVID.num_classes, *size)
        assert np.abs(got - want).max() <= 1e-3
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999
    v = rep["validation"]["fp32"]
    assert v["passed"] and v["reference"] == "pytorch" and [r["size"] for r in v["sizes"]] == [list(s) for s in SIZES]


def test_metadata_round_trip(exported):
    rep = exported["report"]
    for key, f in rep["outputs"].items():
        # what a torch-free runtime does: onnxruntime's custom metadata map, then parse_meta
        sess = ort.InferenceSession(f["path"], providers=["CPUExecutionProvider"]) if "flowwarp" not in key else None
        text = (sess.get_modelmeta().custom_metadata_map[META_KEY] if sess else
                next(p.value for p in onnx.load(f["path"]).metadata_props if p.key == META_KEY))
        meta = parse_meta(text, f["path"])
        assert meta["arch"] == "sfnet" and meta["precision"] == f["precision"]
        assert meta["classes"] == list(CAMVID.names) and meta["ignore_index"] == CAMVID.ignore_index
        assert meta["palette"] == [list(c) for c in CAMVID.palette]
        assert meta["input"] == {"layout": "NCHW", "color": "RGB", "dtype": "float32", "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "size_divisor": 1,
                                 "train_size": list(checkpoint.load_record("demo")["train_size"])}
        assert meta["head"] == "logits" and meta["source"]["sha256"] == sha256_file(exported["ckpt"])
        assert meta["metrics"]["onnx_miou"] == pytest.approx(rep["metrics"][f["precision"]]["miou"])
        assert Path(f["path"]).name == ("demo" + ("-flowwarp" if "flowwarp" in key else "") + f".{f['precision']}.onnx")
    assert load(rep["outputs"]["int8"]["path"]).graph.input[0].type.tensor_type.shape.dim[2].dim_param == "H"


def test_report_files(exported):
    out, rep = exported["out"], exported["report"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["outputs"] == rep["outputs"]
    md = (out / "report.md").read_text()
    for word in ("Validation", "fp32", "fp16", "int8", "calibration", "mIoU"):
        assert word in md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    for f in rep["outputs"].values():
        assert sha256_file(f["path"]) == f["sha256"]


def test_second_export_is_cached(exported, tiny_camvid):
    rep = exported["report"]
    mtimes = {k: os.stat(f["path"]).st_mtime_ns for k, f in rep["outputs"].items()}
    again = export_model("demo", exported["out"], ("fp32", "fp16", "int8"), data=str(tiny_camvid), sizes=SIZES,
                         calib_images=4, validate_images=2, flowwarp_plugin=True, int8_target="tensorrt", progress=False)
    assert again["cached"] and {k: os.stat(f["path"]).st_mtime_ns for k, f in again["outputs"].items()} == mtimes


# ---------------------------------------------------------------- fp16
def test_fp16_keeps_sensitive_ops_in_fp32_and_agrees(exported, frames):
    rep = exported["report"]
    fp32, fp16 = (load(rep["outputs"][k]["path"]) for k in ("fp32", "fp16"))
    types = float_types(fp16)
    keep = set(fp32_nodes(fp32))
    by_name = {n.name: n for n in fp16.graph.node}
    checked = {"Conv": 0, "sensitive": 0, "grid": 0}
    for name, t in types.items():
        node = by_name[name]
        if t not in (F16, F32):  # index arithmetic
            continue
        if node.op_type in FP32_OPS:
            assert t == F32, f"{node.op_type} {name} runs in fp16"
            checked["sensitive"] += 1
        elif name in keep:
            assert t == F32, f"{name} (grid / shape arithmetic) runs in fp16"
            checked["grid"] += 1
        elif node.op_type == "Conv":
            assert t == F16
            checked["Conv"] += 1
    assert checked["Conv"] > 20 and checked["grid"] >= 3 and checked["sensitive"] >= 3 + 3  # GridSample x3, Resize...
    assert {"GridSample", "ReduceMean", "Resize"} <= {by_name[n].op_type for n in types if types[n] == F32}
    io = {v.name: v.type.tensor_type.elem_type for v in list(fp16.graph.input) + list(fp16.graph.output)}
    assert io == {"images": F32, "logits": F32}
    v = rep["validation"]["fp16"]
    assert v["reference"] == "fp32 onnx" and v["argmax_agreement"] >= 0.99
    # on real frames, fp16 logits within 1% of the fp32 logits' range: the shipped model's 50-odd fp16 layers
    # (eps 9.8e-4 each) reach 0.8%; a conversion that breaks a layer moves logits by their own scale
    x = model_input(frames, SIZES[1], get_meta(fp32))
    want, got = (OrtPredictor(rep["outputs"][k]["path"])(x) for k in ("fp32", "fp16"))
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()


# ---------------------------------------------------------------- int8
def test_int8_qdq_placement_suits_tensorrt(exported):
    rep = exported["report"]
    q = load(rep["outputs"]["int8"]["path"])
    dq_out = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    readers = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    kept_float = set(rep["int8"]["guard"]["float_nodes"]) | set(rep["int8"]["float_by_design"])
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    for conv in convs:
        quantized = conv.input[0] in dq_out and conv.input[1] in dq_out
        assert quantized == (conv.name not in kept_float), conv.name
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":  # every Q/DQ pair feeds a Conv / MatMul / Gemm; shape reads take the int8
            dqs = [r for r in readers[n.output[0]] if r.op_type == "DequantizeLinear"]
            assert len(dqs) == 1 and all(r.op_type in ("DequantizeLinear", "Shape") for r in readers[n.output[0]])
            assert any(r.op_type in ("Conv", "MatMul", "Gemm") for r in readers[dqs[0].output[0]])
            assert not any(r.op_type == "Shape" for r in readers[dqs[0].output[0]])
            zero = onnx.numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == n.input[2]))
            assert zero.dtype == np.int8 and not zero.any()  # symmetric int8: what TensorRT accepts
        if n.op_type in ("Resize", "GridSample", "Softmax"):  # quantized would be DQ -> op -> Q
            reads_dq = any(i in dq_out for i in n.input)
            assert not (reads_dq and any(r.op_type == "QuantizeLinear" for r in readers.get(n.output[0], []))), n.name
    summary = qdq_summary(q)
    assert "MatMul" in summary["float_inputs"]  # PPM's pooling products with shape-derived matrices
    assert set(rep["int8"]["float_by_design"]) == {n.name for n in q.graph.node if n.op_type == "MatMul"}
    c = rep["int8"]["calibration"]
    assert c["images"] == 4 and c["method"] == "percentile" and c["target"] == "tensorrt"
    assert rep["metrics"]["int8"]["images"] == 4 and "miou" in rep["int8"]["guard"]["steps"][0]


class _TokensAndPooling(nn.Module):
    """A Linear over flattened tokens (a weight operand) beside a pyramid pooling (a shape-derived operand)."""
    num_classes = 4

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 8)

    def forward(self, x):
        f = self.conv(x)
        n, c, h, w = f.shape
        tokens = self.fc(f.flatten(2).transpose(1, 2))
        attn = torch.softmax(tokens @ tokens.transpose(1, 2), -1) @ tokens  # two products of activations
        tokens = (tokens + attn).transpose(1, 2).reshape(n, c, h, w)
        pooled = F.interpolate(adaptive_avg_pool2d(f, 3), size=(h, w), mode="bilinear", align_corners=False)
        return (tokens + pooled)[:, :4]


def test_int8_quantizes_weighted_matmuls_and_keeps_pooling_and_attention_float():
    """A Linear's weight is quantized (all of a transformer's MatMuls were once kept float, so its int8 was no faster
    than fp32); products with an operand computed from shapes stay float, and attention's products unless asked."""
    model = export_onnx(Deployable(_TokensAndPooling().eval()), example_input(32, 48, False))
    const = constant_names(model.graph)
    matmuls = {n.name: list(n.input) for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    weights = {n for n, ins in matmuls.items() if any(i in const for i in ins)}
    derived = shape_derived(model.graph) - const
    pooling = {n for n, ins in matmuls.items() if any(i in derived for i in ins)}
    attention = set(matmuls) - weights - pooling
    assert len(weights) == 1 and len(pooling) == 2 and len(attention) == 2
    assert set(float_matmuls(model)) == pooling | attention
    assert set(float_matmuls(model, attention=True)) == pooling


class _MaskedTokens(nn.Module):
    """Pixels as tokens attending under an additive mask bias (MASKED on the keys whose first channel is negative),
    as Mask2Former's masked attention does."""
    num_classes = 4

    def __init__(self):
        super().__init__()
        self.conv, self.attn, self.out = nn.Conv2d(3, 8, 3, padding=1), MultiheadAttention(8, 2), nn.Conv2d(8, 4, 1)
        with torch.no_grad():  # logits spread over tens of units, as trained ones are: attention that matters
            self.attn.q.weight *= 10

    def forward(self, x):
        f = self.conv(x)
        n, c, h, w = f.shape
        t = f.flatten(2).transpose(1, 2)
        bias = (t[..., :1].transpose(1, 2) < 0).float()[:, None] * MASKED  # [N, 1, 1, keys]
        return self.out(self.attn(t, t, t, bias).transpose(1, 2).reshape(n, c, h, w))


def test_int8_keeps_masked_attention_logits_float(tmp_path, camvid):
    """The cpu form requantized the logits + mask bias Add to the range of -1e9: every real logit became one value
    (a trained Mask2Former lost 12 mIoU points with every Conv and MatMul float). The Add stays float."""
    torch.manual_seed(0)
    model = export_onnx(Deployable(_MaskedTokens().eval()), example_input(24, 32, False))
    kept = attention_logits(model)
    assert [n.op_type for n in model.graph.node if n.name in kept] == ["Add"]
    onnx.save(model, str(tmp_path / "masked.onnx"))
    files = []  # small images: every pixel is a token, and calibration keeps the tokens x tokens logits
    for i, f in enumerate(image_files(camvid, "train")[:4]):
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), cv2.resize(cv2.imread(str(f)), (32, 24), interpolation=cv2.INTER_AREA))
    q = quantize(tmp_path / "masked.onnx", tmp_path / "q.onnx", CalibrationImages(files, SMALL_META),
                 QuantConfig(method="minmax", target="cpu"))
    x = model_input([read_image(f) for f in files], (24, 32), SMALL_META)
    want, got = OrtPredictor(tmp_path / "masked.onnx")(x), OrtPredictor(q)(x)
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.95
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_int8_keeps_every_masked_attention_logit_float():
    """In Mask2Former every Softmax's input (logits + mask bias) stays float, the first layer's too, whose queries
    are a learned constant (its q.k^T counts as a shape-derived product)."""
    torch.manual_seed(0)
    model = export_onnx(Deployable(create("mask2former", 4, dim=32, queries=8, layers=3, heads=2).eval()),
                        example_input(64, 64, False))
    producer = {o: n for n in model.graph.node for o in n.output}
    biased = [producer[n.input[0]] for n in model.graph.node if n.op_type == "Softmax"]
    biased = {n.name for n in biased if n.op_type == "Add" and "cross_attn" in n.name}  # not the class scores
    assert len(biased) == 3 and biased <= set(kept_float(model, QuantConfig(target="cpu")))


def test_int8_cpu_form_keeps_size_dependent_arithmetic_float(camvid, tmp_path, ort_ops):
    """The cpu form quantizes everything it can, but not the flow-warp grids and index arithmetic: calibrated at one
    size, their ranges would be wrong at the others (int8 then disagreed with fp32 on a quarter of the pixels).
    Frames at 192x256 and sizes near it: the shipped model trained at 360x480 sees objects at 1/5 of their size in
    a 64x96 frame, where near-tied logits flip under any quantization (91% agreement there, 97% at these sizes)."""
    data = shrink_camvid(camvid, tmp_path / "camvid", n_train=8, n_val=4, size=(192, 256))
    rep = export_model("demo", tmp_path / "out", ("int8",), data=str(data), sizes=((136, 184), (192, 256), (168, 232)),
                       calib_images=4, validate_images=2, int8_target="cpu", guard=False, flowwarp_plugin=True,
                       progress=False)
    assert rep["validation"]["int8-flowwarp"]["passed"]  # the pass matches grids whose size is read from the int8 flow
    rows = rep["validation"]["int8"]["sizes"]
    assert len(rows) == 3 and min(r["argmax_agreement"] for r in rows) >= 0.95
    q = load(rep["outputs"]["int8"]["path"])
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    q_in = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    size_dependent = set(size_dependent_nodes(load(rep["outputs"]["fp32"]["path"])))
    assert len(size_dependent) > 50
    for n in q.graph.node:
        if n.name in size_dependent and n.op_type != "GridSample":  # float, between int8 feature maps
            assert not any(o in q_in for o in n.output), n.name  # grid arithmetic is never quantized
            only_flow_enters = n.op_type in ("Gather", "Slice", "Split")  # the flow's channel split reads int8
            assert only_flow_enters or not any(i in dq_out for i in n.input), n.name
    summary = qdq_summary(q)["quantized_inputs"]
    assert {"Conv", "Add", "Concat", "Resize"} <= set(summary)  # what ONNX Runtime runs as uint8 kernels
    zero_points = [onnx.numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_zero_point")]
    assert any(z.dtype == np.uint8 for z in zero_points)
    out = {o: n for n in q.graph.node for o in n.output}["logits"]  # full-resolution logits: not quantized, then
    assert out.op_type == "Resize" and out.input[0] in dq_out      # dequantized again; upsampled from dequantized
    # ONNX Runtime runs every int8 convolution in NHWC, also those after a FlowWarp (whose output rank the graph keeps)
    convs = [n for n in ort_optimized(rep["outputs"]["int8-flowwarp"]["path"]).graph.node if n.op_type == "QLinearConv"]
    assert len(convs) >= 20 and all(n.domain == "com.microsoft" for n in convs), [n.name for n in convs if not n.domain]


def ort_optimized(path) -> onnx.ModelProto:
    """The graph as ONNX Runtime's CPU provider runs it after all its optimisations."""
    so = ort.SessionOptions()
    register_ort_ops(so)
    so.optimized_model_filepath = str(Path(path).with_suffix(".optimized.onnx"))
    so.log_severity_level = 3  # its warning that the saved graph is tied to this CPU is known
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return load(so.optimized_model_filepath)


SMALL_META = {"input": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "dtype": "float32",
                        "layout": "NCHW", "size_divisor": 1}}


def _agreement_with(fp32: Path, frames, meta: dict):
    """An `evaluate` for the guard: the "mIoU" of a graph is its argmax agreement with the fp32 graph's own decisions
    on `frames` (1.0 for fp32 itself)."""
    batches = [model_input([f], (96, 128), meta) for f in frames]
    ref = OrtPredictor(fp32)
    truth = [ref(x).argmax(1) for x in batches]

    def agreement(path: Path) -> dict:
        run = OrtPredictor(path)
        return {"miou": float(np.mean([(run(x).argmax(1) == t).mean() for x, t in zip(batches, truth)]))}
    return agreement


def _small_net_onnx(path: Path, frames) -> dict:
    """A small trained-looking conv net (4 convs) exported like a zoo model."""
    class Small(nn.Module):
        num_classes = 11

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 11, 1))

        def forward(self, x):
            return F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    torch.manual_seed(0)
    model = export_onnx(Deployable(Small().eval()), example_input(64, 96, False))
    onnx.save(model, str(path))
    return SMALL_META


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_methods(method, tmp_path, frames, camvid):
    meta = _small_net_onnx(tmp_path / "small.onnx", frames)
    images = CalibrationImages(image_files(camvid, "train")[:3], meta)  # 3: calibrated in passes of 3 images
    q = quantize(tmp_path / "small.onnx", tmp_path / "q.onnx", images, QuantConfig(method=method))
    x = model_input(frames, (96, 128), meta)
    want, got = OrtPredictor(tmp_path / "small.onnx")(x), OrtPredictor(q)(x)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max() and (got.argmax(1) == want.argmax(1)).mean() > 0.9
    assert op_counts(load(q))["DequantizeLinear"] >= 8  # 4 convs: activation and weight each


def test_histogram_calibration_that_runs_out_of_memory_falls_back_to_min_max(tmp_path):
    """A tensor near zero in the first calibration pass and large later: ONNX Runtime's histogram keeps the first
    pass's bin width (x^4 of pixels up to 1/255: 1e-13) and would grow to terabytes of bins for pixels up to 1."""
    class Fourth(nn.Module):
        num_classes = 11

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 11, 1)

        def forward(self, x):
            return self.conv((x * x) * (x * x))

    torch.manual_seed(0)
    onnx.save(export_onnx(Deployable(Fourth().eval()), example_input(64, 96, False)), str(tmp_path / "fourth.onnx"))
    meta = {"input": {**SMALL_META["input"], "mean": [0.0] * 3, "std": [1.0] * 3}}
    rng = np.random.default_rng(0)
    files = []
    for i, top in enumerate([1, 1, 1, 1, 255, 255, 255, 255]):  # passes of 4 images: dark, then bright
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), rng.integers(0, top + 1, (64, 96, 3), dtype=np.uint8))
    cfg = QuantConfig(method="percentile")
    q = quantize(tmp_path / "fourth.onnx", tmp_path / "q.onnx", CalibrationImages(files, meta), cfg)
    assert cfg.method == "minmax" and "ran out of memory" in cfg.fallback
    x = model_input([read_image(files[-1])], (64, 96), meta)
    want, got = OrtPredictor(tmp_path / "fourth.onnx")(x), OrtPredictor(q)(x)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # ranges from every image, the bright ones too


def test_guard_keeps_sensitive_layers_in_float(tmp_path, frames, camvid):
    """Forced to lose almost nothing, the guard leaves the most sensitive layers in float, as few as it can."""
    meta = _small_net_onnx(tmp_path / "small.onnx", frames)
    agreement = _agreement_with(tmp_path / "small.onnx", frames, meta)
    images = CalibrationImages(image_files(camvid, "train")[:2], meta)
    cfg = QuantConfig(method="minmax")
    first = guarded_quantize(tmp_path / "small.onnx", tmp_path / "q.onnx", images, cfg, agreement, max_loss=100.0)
    assert first.float_nodes == [] and first.loss > 0  # int8 changes some decisions
    limit = first.loss / 4
    result = guarded_quantize(tmp_path / "small.onnx", tmp_path / "q.onnx", images, cfg, agreement, max_loss=limit)
    k = len(result.float_nodes)
    assert k >= 1 and result.loss <= limit
    assert [r["node"] for r in result.sensitivity][:k] == result.float_nodes  # the most sensitive first
    assert all(s["loss_points"] > limit for s in result.steps if s["float_nodes"] < k)  # none fewer was enough
    q = load(tmp_path / "q.onnx")
    dq = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    for conv in (n for n in q.graph.node if n.op_type == "Conv"):
        assert (conv.input[1] in dq) == (conv.name not in result.float_nodes)
    assert agreement(tmp_path / "q.onnx")["miou"] == pytest.approx(result.int8_miou)
    assert set(result.float_nodes) <= set(quantizable_nodes(load(tmp_path / "small.onnx")))


def test_guard_ranks_the_cpu_forms_requantized_adds_when_every_conv_in_float_is_not_enough(tmp_path, frames, camvid):
    """An Add whose operand spans 0..500 (a ViT's residual stream has such outliers) leaves uint8 steps of ~2 for
    features of ~1: no Conv kept in float repairs that, only the Add in float does."""
    class Offset(nn.Module):
        num_classes = 11

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 11, 1)
            self.register_buffer("offset", torch.zeros(1, 8, 1, 1))
            self.offset[0, 0] = 500.0
            with torch.no_grad():  # conv2 removes what the offset adds, so the float model ignores it
                self.conv2.bias -= self.conv2.weight[:, 0, 0, 0] * 500.0

        def forward(self, x):
            return F.interpolate(self.conv2(torch.relu(self.conv1(x)) + self.offset), size=x.shape[-2:], mode="bilinear")

    torch.manual_seed(0)
    onnx.save(export_onnx(Deployable(Offset().eval()), example_input(64, 96, False)), str(tmp_path / "offset.onnx"))
    agreement = _agreement_with(tmp_path / "offset.onnx", frames, SMALL_META)
    images = CalibrationImages(image_files(camvid, "train")[:2], SMALL_META)
    cfg = QuantConfig(method="minmax", target="cpu")
    model = load(tmp_path / "offset.onnx")
    adds = [n.name for n in model.graph.node if n.op_type == "Add"]
    assert requantized_nodes(model, cfg) == adds and requantized_nodes(model, QuantConfig()) == []
    result = guarded_quantize(tmp_path / "offset.onnx", tmp_path / "q.onnx", images, cfg, agreement, max_loss=5.0)
    assert result.steps[0]["loss_points"] > 20  # the Add quantized: most decisions change
    assert adds[0] in result.float_nodes and result.loss <= 5.0
    assert {s["float_nodes"] for s in result.steps} >= {2}  # both convs in float were tried first, and were not enough
    assert next(s for s in result.steps if s["float_nodes"] == 2)["loss_points"] > 5.0


# ---------------------------------------------------------------- FlowWarp plugin graphs
def test_flowwarp_pass_on_sfnet(exported, frames):
    rep = exported["report"]
    plain, plugin = load(rep["outputs"]["fp32"]["path"]), load(rep["outputs"]["fp32-flowwarp"]["path"])
    assert count_flowwarp(plugin) == 3 and op_counts(plugin).get("GridSample", 0) == 0
    assert op_counts(plain)["GridSample"] == 3 and "Range" not in {n.op_type for n in plugin.graph.node if "align" in n.name}
    info = rep["flowwarp"]["fp32"]
    assert info["replaced"] == 3 and len(plugin.graph.node) == info["nodes_after"] == len(plain.graph.node) - info["removed_nodes"]
    fw = [n for n in plugin.graph.node if n.op_type == "FlowWarp"]
    assert all(n.domain == "edgeseg" and onnx.helper.get_attribute_value(n.attribute[0]) == 1 for n in fw)
    meta = get_meta(plain)
    a, b = OrtPredictor(rep["outputs"]["fp32"]["path"]), OrtPredictor(rep["outputs"]["fp32-flowwarp"]["path"])
    for size in [(64, 96), (136, 200)]:
        x = model_input(frames[:2], size, meta)
        assert np.abs(a(x) - b(x)).max() <= 1e-4
    for p in ("fp16", "int8"):
        assert count_flowwarp(load(rep["outputs"][f"{p}-flowwarp"]["path"])) == 3
        assert rep["validation"][f"{p}-flowwarp"]["argmax_agreement"] >= 0.995


class _Warp(nn.Module):
    """GridSample with a grid of the given kind: the pass must refuse everything but a flow warp's."""
    num_classes = 4

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.flow = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        f = self.conv(x)
        flow = self.flow(x)
        if self.kind == "learned":  # the grid is a network output, not base grid + flow
            grid = torch.tanh(flow).permute(0, 2, 3, 1)
            return F.grid_sample(f, grid, align_corners=True)
        h, w = flow.shape[-2:]
        gx = torch.arange(w).to(x.dtype) * (2.0 / (w - 1)) - 1.0
        gy = torch.arange(h).to(x.dtype) * (2.0 / (h - 1)) - 1.0
        # wrong normaliser: both components divided by W
        grid = torch.stack((gx[None, None, :] + flow[:, 0] / w, gy[None, :, None] + flow[:, 1] / w), -1)
        return F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


@pytest.mark.parametrize("kind, words", [("learned", "not flow-warp grid arithmetic"), ("wrong-size", "not the flow-warp grid")])
def test_flowwarp_pass_refuses_other_grids(kind, words):
    model = export_onnx(Deployable(_Warp(kind).eval()), example_input(32, 48, False))
    with pytest.raises(FlowWarpMatchError, match=words) as e:
        fuse_flowwarp(model)
    assert "GridSample" in str(e.value) and "\n" not in str(e.value)


class _MixedWarps(nn.Module):
    """A flow warp, then a sampler on a learned grid (as deformable attention's): auto fuses only the first."""
    num_classes = 4

    def __init__(self):
        super().__init__()
        self.flow = nn.Conv2d(3, 2, 3, padding=1)
        self.learned = _Warp("learned")

    def forward(self, x):
        return flow_warp(x, self.flow(x)).mean(1, keepdim=True) + self.learned(x)


def test_flowwarp_pass_can_keep_the_samplers_that_are_not_flow_warps():
    model = export_onnx(Deployable(_MixedWarps().eval()), example_input(32, 48, False))
    with pytest.raises(FlowWarpMatchError, match="not flow-warp grid arithmetic"):
        fuse_flowwarp(model)
    fused, info = fuse_flowwarp(model, keep_others=True)
    assert count_flowwarp(fused) == info["replaced"] == 1
    assert [n.op_type for n in fused.graph.node].count("GridSample") == 1
    assert len(info["kept"]) == 1 and "not flow-warp grid arithmetic" in info["kept"][0]
    with pytest.raises(FlowWarpMatchError, match="no GridSample is a flow warp"):
        fuse_flowwarp(export_onnx(Deployable(_Warp("learned").eval()), example_input(32, 48, False)), keep_others=True)


class _NoWarp(nn.Module):
    num_classes = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_flowwarp_pass_needs_a_gridsample():
    with pytest.raises(FlowWarpMatchError, match="no GridSample"):
        fuse_flowwarp(export_onnx(Deployable(_NoWarp().eval()), example_input(32, 48, False)))


# ---------------------------------------------------------------- heads, preprocessing, Triton
def test_thin_convs_export_as_a_matrix_product_and_the_same_function():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(5, 2, 3, padding=1, bias=True), nn.ReLU(), nn.Conv2d(2, 8, 3, padding=1),
                        nn.Conv2d(8, 3, 3, padding=1, bias=False), nn.Conv2d(3, 1, 3, padding=2, dilation=2))
    split = split_thin_convs(net)
    assert [type(m).__name__ for m in split] == ["TapSplitConv", "ReLU", "Conv2d", "TapSplitConv", "Conv2d"]
    assert isinstance(net[0], nn.Conv2d)  # the original is left as it was
    for shape in [(1, 5, 1, 1), (2, 5, 7, 13)]:
        x = torch.randn(shape)
        assert torch.allclose(net(x), split(x), atol=1e-5)


def test_argmax_head_and_fused_preprocessing(sfnet_ckpt, tiny_camvid, tmp_path, frames):
    rep = export_model(sfnet_ckpt, tmp_path, ("fp32",), data=str(tiny_camvid), sizes=SIZES[:1], head="argmax",
                       fused_preprocess=True, guard=False, validate_images=1, triton_repo=str(tmp_path / "triton"),
                       progress=False)
    path = rep["outputs"]["fp32"]["path"]
    meta = get_meta(load(path))
    assert meta["head"] == "argmax" and meta["input"]["layout"] == "NHWC" and meta["input"]["color"] == "BGR"
    assert meta["input"]["dtype"] == "uint8"
    bgr = np.stack([cv2.cvtColor(cv2.resize(f, (136, 104)), cv2.COLOR_RGB2BGR) for f in frames[:2]])
    labels = OrtPredictor(path)(bgr)
    assert labels.dtype == np.int32 and labels.shape == (2, 104, 136)
    plain_meta = dict(meta, input=dict(meta["input"], layout="NCHW", color="RGB", dtype="float32"))
    want = torch_logits(sfnet_ckpt, model_input([f for f in frames[:2]], (104, 136), plain_meta)).argmax(1)
    assert (labels == want).mean() >= 0.999
    config = (tmp_path / "triton" / "sfnet-tiny_fp32" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "TYPE_UINT8" in config and "dims: [ -1, -1, 3 ]" in config
    assert 'name: "labels"' in config and "TYPE_INT32" in config and "dims: [ -1, -1 ]" in config
    assert (tmp_path / "triton" / "sfnet-tiny_fp32" / "1" / "model.onnx").read_bytes() == Path(path).read_bytes()


@pytest.mark.parametrize("arch", available())
def test_every_zoo_model_exports(arch, tiny_camvid, tmp_path):
    torch.manual_seed(0)
    model = create(arch, CAMVID.num_classes).eval()
    ckpt = tmp_path / f"{arch}.pt"
    checkpoint.save(checkpoint.model_record(model, CAMVID), ckpt)
    d = getattr(model, "size_divisor", 1)
    sizes = tuple((-(-h // max(d, 1)) * d, -(-w // max(d, 1)) * d) for h, w in ((64, 96), (96, 128), (72, 104)))
    rep = export_model(ckpt, tmp_path / "out", ("fp32",), data=str(tiny_camvid), sizes=sizes, guard=False,
                       validate_images=1, progress=False)
    v = rep["validation"]["fp32"]
    assert v["passed"] and len(v["sizes"]) == 3
    # the default gate, 1e-3 per unit of the largest |logit| above 1 (U2-Nets at random init reach ~500)
    assert all(r["max_abs_diff"] <= 1e-3 * max(1.0, r["reference_max_abs"]) for r in v["sizes"])


# ---------------------------------------------------------------- bad input
def _no_onnx(folder: Path) -> bool:
    return not list(folder.glob("*.onnx")) and not [p for p in folder.iterdir() if p.name.startswith(".export")]


def test_bad_checkpoints(tmp_path, tiny_camvid):
    with pytest.raises(EdgesegError, match="no such checkpoint"):
        export_model(tmp_path / "missing.pt", tmp_path / "out", progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgesegError, match="not a readable edgeseg checkpoint"):
        export_model(bad, tmp_path / "out", progress=False)


def test_bad_onnx_files(tmp_path):
    with pytest.raises(EdgesegError, match="no such ONNX file"):
        load(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x08garbage")
    with pytest.raises(EdgesegError, match="not a valid ONNX model"):
        load(tmp_path / "bad.onnx")
    model = export_onnx(Deployable(_NoWarp().eval()), example_input(32, 48, False))
    model.opset_import[0].version = 13
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(EdgesegError, match="opset 13 is not supported"):
        load(tmp_path / "old.onnx")


def test_unsupported_opset(sfnet_ckpt, tiny_camvid, tmp_path):
    with pytest.raises(EdgesegError, match="opset 21 is not supported"):
        export_model(sfnet_ckpt, tmp_path, data=str(tiny_camvid), opset=21, guard=False, progress=False)
    assert _no_onnx(tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["status"] == "failed"


def test_bad_calibration_folders_leave_no_output(sfnet_ckpt, tiny_camvid, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(EdgesegError, match="no images"):
        export_model(sfnet_ckpt, out, ("int8",), data=str(tiny_camvid), calib=str(empty), sizes=SIZES[:1], guard=False,
                     validate_images=1, progress=False)
    assert _no_onnx(out) and "no images" in json.loads((out / "report.json").read_text())["error"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "frame.png").write_bytes(b"not a png")
    with pytest.raises(EdgesegError, match="frame.png: cannot read the image"):
        export_model(sfnet_ckpt, out, ("int8",), data=str(tiny_camvid), calib=str(broken), sizes=SIZES[:1], guard=False,
                     validate_images=1, progress=False)
    assert _no_onnx(out)


def test_failed_validation_keeps_previous_outputs(sfnet_ckpt, tiny_camvid, tmp_path):
    """A later export that fails validation leaves the last good files and says why in the report."""
    good = export_model(sfnet_ckpt, tmp_path, ("fp32",), data=str(tiny_camvid), sizes=SIZES[:1], guard=False,
                        validate_images=1, progress=False)
    before = Path(good["outputs"]["fp32"]["path"]).read_bytes()
    impossible = Gates(fp32_max_abs=-1.0)  # every export now fails validation
    with pytest.raises(EdgesegError, match="fp32 validation failed against pytorch"):
        export_model(sfnet_ckpt, tmp_path, ("fp32",), data=str(tiny_camvid), sizes=SIZES[1:2], guard=False,
                     validate_images=1, gates=impossible, progress=False)
    assert Path(good["outputs"]["fp32"]["path"]).read_bytes() == before
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["status"] == "failed" and rep["validation"]["fp32"]["passed"] is False


def test_cli_export_and_errors(sfnet_ckpt, tiny_camvid, tmp_path, capsys):
    assert main(["export", "--model", str(sfnet_ckpt), "--out", str(tmp_path), "--data", str(tiny_camvid),
                 "--no-guard", "--validate-sizes", "64x96"]) == 0
    assert (tmp_path / "sfnet-tiny.fp32.onnx").is_file() and "report.md" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeseg export: error:") and "nope.pt" in err and "\n" not in err
    (tmp_path / "afile").write_text("kept")
    for out, said in ((tmp_path / "afile", "is a file, not a folder"), (tiny_camvid / "images", "is inside the input")):
        assert main(["export", "--model", str(sfnet_ckpt), "--out", str(out), "--data", str(tiny_camvid)]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and "\n" not in err
    assert (tmp_path / "afile").read_text() == "kept"
