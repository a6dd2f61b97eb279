"""The transformer architectures beyond the shared model test: in-graph position-embedding resize, the decoder
options, mask classification, masked and deformable attention, fp16 logits, and TensorRT-parsable op types."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator
from onnxconverter_common import float16
from torch import nn

from edgeseg.export.fp16 import FP32_OPS, fp32_nodes, to_fp16
from edgeseg.export.torch_export import Deployable, export_onnx
from edgeseg.models import create
from edgeseg.models.archs.mask2former import MSDeformAttn, attention_bias
from edgeseg.models.archs.maskformer import SemanticInference
from edgeseg.models.attention import MASKED, MultiheadAttention
from edgeseg.models.backbones import create_backbone
from edgeseg.models.backbones.vit import VisionTransformer
from edgeseg.models.layers import resize_to

pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export",
                                        "ignore:The feature will be removed")
SIZES = [(64, 96), (65, 97), (40, 130)]
ORT_CPU = ["CPUExecutionProvider"]

# onnx-tensorrt's operator support list (TensorRT 10, docs/operators.md), the ops a transformer graph can contain
TENSORRT_OPS = frozenset(["Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool", "LRN", "LSTM", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "PRelu", "Pow", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round", "Scan", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Where", "Xor"])


def export(module: nn.Module, hw=(64, 96), opset: int = 17) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), (torch.randn(1, 3, *hw),), buf, dynamo=False, opset_version=opset,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N", 2: "H", 3: "W"}})
    return buf.getvalue()


def assert_parity(module: nn.Module, onnx_bytes: bytes, sizes=SIZES, atol: float = 1e-4) -> None:
    sess = ort.InferenceSession(onnx_bytes, providers=ORT_CPU)
    for h, w in sizes:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            ref = module(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        assert got.shape == ref.shape and np.abs(ref).max() > 0.05
        assert np.abs(got - ref).max() <= atol, f"at {h}x{w}: max |onnx - torch| = {np.abs(got - ref).max():.2e}"


class Tokens(nn.Module):
    """A ViT's last token map as a [N, C, H/16, W/16] output (the export under test)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit(x)[-1]


# ---------------------------------------------------------------- ViT
def test_vit_position_embeddings_resize_in_the_graph():
    torch.manual_seed(0)
    vit = VisionTransformer(dim=64, depth=2, heads=2, out_indices=(2,), drop_path=0.0).eval()
    with torch.no_grad():
        vit.pos_embed.mul_(50)  # make the embedding dominate, so a wrong resize shows
    onnx_bytes = export(Tokens(vit))
    resize = [n for n in onnx.load_from_string(onnx_bytes).graph.node if n.op_type == "Resize"]
    assert [next(a.s for a in n.attribute if a.name == "mode") for n in resize] == [b"cubic"]
    # one file, three token grids (4x6, 5x7, 3x9), none of them the table's 14x14
    assert_parity(Tokens(vit), onnx_bytes, sizes=[(64, 96), (65, 97), (40, 130)])
    emb = vit.position_embedding(5, 7)
    ref = F.interpolate(vit.pos_embed, size=(5, 7), mode="bicubic", align_corners=False)
    assert torch.equal(emb, ref) and emb.shape == (1, 64, 5, 7)


@pytest.mark.parametrize("name,dim", [("vit_tiny", 192), ("vit_small", 384)])
def test_vit_widths_and_patch_grid(name, dim):
    vit = create_backbone(name, out_indices=(6, 12)).eval()
    assert vit.channels == [dim, dim] and len(vit.blocks) == 12
    with torch.no_grad():
        feats = vit(torch.randn(1, 3, 65, 97))  # padded to 80x112: a 5x7 grid
    assert [f.shape for f in feats] == [(1, dim, 5, 7)] * 2


# ---------------------------------------------------------------- decoder options
@pytest.mark.parametrize("arch,options", [("setr", {"decoder": "naive"}), ("setr", {"decoder": "mla"}),
                                          ("segmenter", {"decoder": "linear"}),
                                          ("maskformer", {"backbone": "mobilenetv2", "layers": 2}),
                                          ("mask2former", {"backbone": "mit_b0", "layers": 3, "enc_layers": 1})])
def test_decoder_options_export_at_every_size(arch, options):
    torch.manual_seed(0)
    model = create(arch, 5, **options).eval()
    assert model.hparams.items() >= options.items()
    assert_parity(model, export(model))


@pytest.mark.parametrize("arch,options,match", [("setr", {"decoder": "fpn"}, "unknown decoder 'fpn'"),
                                                ("segmenter", {"backbone": "resnet18"}, "is not a ViT")])
def test_bad_decoder_options(arch, options, match):
    from edgeseg.errors import EdgesegError
    with pytest.raises(EdgesegError, match=match):
        create(arch, 5, **options)


# ---------------------------------------------------------------- mask classification
def test_semantic_inference_is_the_papers_einsum():
    torch.manual_seed(0)
    classes, masks = torch.randn(2, 7, 4 + 1), torch.randn(2, 7, 5, 6) * 3
    got = SemanticInference()((classes, masks))
    ref = torch.einsum("bqc,bqhw->bchw", classes.softmax(-1)[..., :-1], masks.sigmoid())
    torch.testing.assert_close(got, ref.log(), rtol=1e-5, atol=1e-5)
    assert got.shape == (2, 4, 5, 6)


def test_semantic_inference_holds_onnx_runtime_to_pytorch_on_near_zero_scores():
    """Trained masks sit far below 0: scores of 1e-6..1e-30 decide most pixels, where ONNX Runtime's Sigmoid is
    exact only to 1.6e-7 absolute (log-scores 0.07 apart from PyTorch's): the head must hold them within 1e-4."""
    torch.manual_seed(0)
    classes = torch.randn(1, 7, 4 + 1)
    masks = torch.cat([torch.empty(1, 7, 3, 8).uniform_(-17, -13), torch.empty(1, 7, 3, 8).uniform_(-70, -20)], 2)
    buf = io.BytesIO()
    torch.onnx.export(SemanticInference(), ((classes, masks),), buf, dynamo=False, input_names=["classes", "masks"])
    got = ort.InferenceSession(buf.getvalue(), providers=ORT_CPU).run(None, {"classes": classes.numpy(),
                                                                            "masks": masks.numpy()})[0]
    ref = SemanticInference()((classes, masks)).numpy()
    assert np.abs(got - ref).max() < 1e-4 and np.array_equal(got.argmax(1), ref.argmax(1))


def test_segformer_decoder_is_the_papers_concatenation_and_fuse():
    """The decoder sums each stage's merged projection-and-fuse block before upsampling; the paper projects,
    upsamples, concatenates (last stage first) and fuses: the same function of the same parameters."""
    torch.manual_seed(0)
    decoder = create("segformer", 11).eval().decoder
    bn = decoder.fuse[1]
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    feats = [torch.randn(1, c, -(-97 // s), -(-131 // s)) for c, s in zip((32, 64, 160, 256), (4, 8, 16, 32))]
    maps = [proj(f) for proj, f in zip(decoder.proj, feats)]
    paper = decoder.fuse(torch.cat([resize_to(m, maps[0]) for m in maps[:0:-1]] + [maps[0]], 1))
    torch.testing.assert_close(decoder(feats), paper, rtol=1e-5, atol=1e-5)
    nodes = onnx.load_from_string(export(create("segformer", 11))).graph.node
    producer = {o: n.op_type for n in nodes for o in n.output}
    assert not [n.name for n in nodes if n.op_type == "Concat" and {"Conv", "Resize"} & {producer.get(i) for i in n.input}]


def test_masked_attention_ignores_masked_keys_and_guards_empty_masks():
    torch.manual_seed(0)
    masks = torch.randn(1, 3, 4, 4)
    masks[0, 2] = -1.0  # query 2 predicts an empty mask
    bias = attention_bias(masks, torch.zeros(1, 1, 4, 4))
    assert bias.shape == (1, 1, 3, 16)
    assert torch.equal(bias[0, 0, :2] == MASKED, masks[0, :2].flatten(1) < 0)
    assert torch.equal(bias[0, 0, 2], torch.zeros(16))  # an empty mask attends everywhere, not NaN
    attn = MultiheadAttention(8, 2).eval()
    q, kv = torch.randn(1, 3, 8), torch.randn(1, 16, 8)
    with torch.no_grad():
        out = attn(q, kv, kv, bias)
        for i in range(2):  # each query equals attention over its unmasked keys only
            keep = masks[0, i].flatten() >= 0
            ref = attn(q[:, i:i + 1], kv[:, keep], kv[:, keep])
            torch.testing.assert_close(out[:, i:i + 1], ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[:, 2:], attn(q[:, 2:], kv, kv), rtol=1e-5, atol=1e-6)


def test_deformable_attention_samples_at_its_reference_points():
    """Zero offsets, one point: each query reads the value at its own pixel centre (bilinear there is exact)."""
    torch.manual_seed(0)
    attn = MSDeformAttn(16, levels=2, heads=4, points=1).eval()
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
        attn.attention_weights.weight.zero_()
        attn.attention_weights.bias.zero_()  # equal weights: the mean of the two levels
    maps = [torch.randn(1, 16, 5, 7), torch.randn(1, 16, 5, 7)]
    xs, ys = (torch.arange(7) + 0.5) / 7, (torch.arange(5) + 0.5) / 5
    ref_pts = torch.stack((xs[None].expand(5, -1), ys[:, None].expand(-1, 7)), -1).reshape(1, 35, 2)
    with torch.no_grad():
        out = attn(torch.randn(1, 35, 16), ref_pts, maps)
        values = [attn.value_proj(m.flatten(2).transpose(1, 2)) for m in maps]
        ref = attn.output_proj((values[0] + values[1]) / 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- fp16
class HotAttention(nn.Module):
    """Patch embedding + one attention layer whose q.k logits pass 65504 though q and k fit fp16 easily."""

    def __init__(self, dim: int = 64, gain: float = 300.0):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, 1)
        self.cls = nn.Conv2d(dim, 5, 1)
        with torch.no_grad():
            self.attn.q.weight.mul_(gain)
            self.attn.k.weight.mul_(gain)

    def logits(self, x):
        t = self.norm(self.embed(x).flatten(2).transpose(1, 2))
        return (self.attn.q(t) * self.attn.scale) @ self.attn.k(t).transpose(1, 2)

    def forward(self, x):
        m = self.embed(x)
        t = self.norm(m.flatten(2).transpose(1, 2))
        t = self.attn(t, t, t)
        return F.interpolate(self.cls(t.transpose(1, 2).reshape(m.shape)), size=x.shape[-2:], mode="bilinear")


def run_fp16(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    """ONNX's reference evaluator computes each node in its declared type, as a GPU does; ONNX Runtime's CPU
    provider would run fp16 MatMuls in fp32 (it inserts casts where it has no fp16 kernel) and hide an overflow."""
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow a plain conversion shows
        return ReferenceEvaluator(model).run(None, {"images": x.numpy()})[0].astype(np.float32)


@pytest.mark.parametrize("opset", [16, 17])
def test_fp16_keeps_attention_logits_in_fp32(opset):
    torch.manual_seed(0)
    model = HotAttention().eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert model.logits(x).abs().max() > 65504  # the case under test
    fp32 = onnx.load_from_string(export(model, (48, 64), opset))
    fp16, info = to_fp16(fp32)
    kept = set(fp32_nodes(fp32))
    assert any(n.op_type == "MatMul" and n.name in kept for n in fp32.graph.node)  # the logits product
    assert info["fp32_nodes"] < info["nodes"]
    ref = ort.InferenceSession(fp32.SerializeToString(), providers=ORT_CPU).run(None, {"images": x.numpy()})[0]
    plain = float16.convert_float_to_float16(fp32, keep_io_types=True, op_block_list=FP32_OPS)
    assert not np.isfinite(run_fp16(plain, x)).all()  # what happens without: inf logits, NaN softmax
    got = run_fp16(fp16, x)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_fp16_keeps_a_decomposed_layernorm_in_fp32():
    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.norm = nn.Conv2d(3, 16, 1), nn.LayerNorm(16)

        def forward(self, x):  # activations near 1e3: their variance (1e6) overflows fp16
            return self.norm(self.embed(x).permute(0, 2, 3, 1) * 1000.0).permute(0, 3, 1, 2)

    torch.manual_seed(0)
    model = Big().eval()
    fp32 = onnx.load_from_string(export(model, (8, 8), opset=16))
    assert "LayerNormalization" not in {n.op_type for n in fp32.graph.node}
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        ref = model(x).numpy()
    plain = float16.convert_float_to_float16(fp32, keep_io_types=True, op_block_list=FP32_OPS)
    assert np.abs(run_fp16(plain, x) - ref).max() > 0.5  # without: an infinite variance zeroes the output
    got = run_fp16(to_fp16(fp32)[0], x)
    assert np.isfinite(got).all() and np.abs(got - ref).max() < 1e-2


# ---------------------------------------------------------------- TensorRT
@pytest.mark.parametrize("arch,options", [("setr", {}), ("setr", {"decoder": "mla"}), ("segmenter", {}),
                                          ("segmenter", {"decoder": "linear"}), ("maskformer", {"layers": 1}),
                                          ("mask2former", {"layers": 3, "enc_layers": 1})])
def test_export_op_types_are_in_tensorrts_parser(arch, options):
    model = create(arch, 5, **options).eval()
    graph = export_onnx(Deployable(model), torch.randn(1, 3, 64, 96))
    for m in (graph, to_fp16(graph)[0]):
        ops = {n.op_type for n in m.graph.node}
        assert ops - TENSORRT_OPS == set(), f"{arch} {options}: not in onnx-tensorrt's list: {sorted(ops - TENSORRT_OPS)}"
        assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}
    if arch == "mask2former":
        assert "GridSample" in ops and "Einsum" not in ops
