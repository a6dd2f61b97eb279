"""FLOPs and parameters from ONNX graphs, checked against hand computation (2 x MACs)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.benchmark.flops import count_flops, count_params
from edgeseg.errors import EdgesegError

IR = 8  # ONNX Runtime 1.31 reads IR <= 13; onnx 1.23 writes 14 by default


def conv_out(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def graph_model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = IR
    return m


def conv_model(cin=4, cout=6, k=3, stride=2, pad=1, groups=2, bias=True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)}
    if bias:
        inits["b"] = rng.standard_normal(cout).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], kernel_shape=[k, k], strides=[stride, stride],
                            pads=[pad] * 4, group=groups)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, "H", "W"])  # dynamic, as edgeseg exports
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return graph_model([node], [x], [y], inits)


def test_conv_flops_match_the_formula_at_any_size():
    cin, cout, k, stride, pad, groups = 4, 6, 3, 2, 1, 2
    m = conv_model(cin, cout, k, stride, pad, groups)
    for n, h, w in ((1, 17, 23), (3, 64, 96)):
        ho, wo = conv_out(h, k, stride, pad), conv_out(w, k, stride, pad)
        want = 2 * (cin // groups) * cout * k * k * ho * wo * n
        got = count_flops(m, (n, cin, h, w))
        assert got["total"] == want and got["by_op"] == {"Conv": want} and got["uncounted"] == []
    assert count_params(m) == cout * (cin // groups) * k * k + cout


def test_matmul_and_gemm_flops():
    rng = np.random.default_rng(1)
    b, m_, k, n = 5, 7, 11, 3
    mm = helper.make_node("MatMul", ["x", "w"], ["h"])
    gemm = helper.make_node("Gemm", ["h2", "g"], ["y"], transB=1)
    flat = helper.make_node("Reshape", ["h", "shape"], ["h2"])
    inits = {"w": rng.standard_normal((k, n)).astype(np.float32), "g": rng.standard_normal((4, b * m_ * n)).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, m_, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = graph_model([mm, flat, gemm], [x], [y], inits)
    got = count_flops(model, (b, m_, k))
    assert got["by_op"] == {"MatMul": 2 * b * m_ * k * n, "Gemm": 2 * 1 * (b * m_ * n) * 4}
    assert count_params(model) == k * n + 4 * b * m_ * n  # the int64 shape constant is not a parameter


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is the project's choice
def test_exported_torch_layers_and_their_int8_form(tmp_path):
    """A PyTorch export (dynamic H, W, ConvTranspose) counted at another size, and its Q/DQ int8 form counts the same."""
    torch = pytest.importorskip("torch")
    from onnxruntime.quantization import QuantFormat, quantize_static

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=4), torch.nn.ConvTranspose2d(8, 4, 2, stride=2)).eval()
    fp32 = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(fp32), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["out"], dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}})
    h, w = 40, 56
    h1, w1 = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
    want = {"Conv": 2 * 3 * 8 * 9 * h1 * w1 + 2 * (8 // 4) * 8 * 9 * h1 * w1,
            "ConvTranspose": 2 * (8 * h1 * w1) * 4 * 2 * 2}  # every input element scatters into Cout*k*k outputs
    assert count_flops(fp32, (1, 3, h, w))["by_op"] == want
    assert count_params(fp32) == sum(p.numel() for p in net.parameters())

    class Reader:
        def __init__(self):
            self.it = iter([{"images": np.random.default_rng(i).standard_normal((1, 3, h, w)).astype(np.float32)} for i in range(2)])

        def get_next(self):
            return next(self.it, None)

    int8 = tmp_path / "net.int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    q = onnx.load(str(int8))
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    assert count_flops(q, (1, 3, h, w))["by_op"] == want
    assert count_params(q) == count_params(fp32)  # int8 weights and int32 biases, not the scales and zero points


def test_shapes_the_symbolic_inference_cannot_follow_come_from_a_run():
    """Token count from float arithmetic on the input size (as a ViT computes its position-embedding grid): the
    symbolic inference loses the MatMul's shapes, one ONNX Runtime run on zeros gives them."""
    from edgeseg.benchmark.flops import tensor_shapes

    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
             helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT), helper.make_node("Sqrt", ["hf"], ["hs"]),
             helper.make_node("Mul", ["hs", "hs"], ["hh"]), helper.make_node("Round", ["hh"], ["hr"]),
             helper.make_node("Cast", ["hr"], ["hi"], to=TensorProto.INT64),
             helper.make_node("Concat", ["one", "hi", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["t"]), helper.make_node("MatMul", ["t", "w"], ["y"])]
    inits = {"one": np.array([1], np.int64), "i2": np.array([2], np.int64), "m1": np.array([-1], np.int64),
             "w": np.zeros((32, 5), np.float32)}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", 8])
    model = graph_model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    for h in (9, 16):
        assert "t" not in tensor_shapes(model, (1, 4, h, 8))
        assert count_flops(model, (1, 4, h, 8)) == {"total": 2 * h * 5 * 32, "by_op": {"MatMul": 2 * h * 5 * 32},
                                                    "uncounted": []}


def test_flops_bad_input(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(EdgesegError, match="junk.onnx"):
        count_flops(junk, (1, 3, 8, 8))
    with pytest.raises(EdgesegError, match="rank"):
        count_flops(conv_model(), (1, 4, 8))
