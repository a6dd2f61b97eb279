"""Foreign ONNX adoption: models exported elsewhere (fixed or dynamic size, NHWC, 1/4-resolution scores, argmax heads,
a transformers SegFormer) become edgeseg models that the runtime, `edgeseg eval` and `edgeseg run` take as they are.
References: the PyTorch module each ONNX came from, and the original ONNX file in ONNX Runtime."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from runtime_helpers import camvid_frames, conv_net, write_video
from torch import nn

from edgeseg.cli import main
from edgeseg.data import SegFolder
from edgeseg.data.classes import CAMVID
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import evaluate
from edgeseg.export.adopt import adopt_onnx
from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD, META_KEY
from edgeseg.runtime.backends import open_backend

NORM = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def torch_export(module, path, hw=(96, 128), *, dynamic=False, nhwc=False, names=("pixel_values", "out"), outputs=None):
    """The route a user takes: torch.onnx.export, opset 17, their own tensor names."""
    module.eval()
    x = torch.zeros(1, *hw, 3) if nhwc else torch.zeros(1, 3, *hw)
    outputs = outputs or [names[1]]
    axes = None
    if dynamic:
        axes = {names[0]: {0: "batch", 1: "height", 2: "width"} if nhwc else {0: "batch", 2: "height", 3: "width"}}
        axes.update({o: {0: "batch"} for o in outputs})
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=[names[0]],
                      output_names=outputs, dynamic_axes=axes)
    return path


def norm(img_rgb: np.ndarray) -> torch.Tensor:
    x = (img_rgb.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def rgb_frames(camvid, n=2, size=(96, 128)):
    return [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in camvid_frames(camvid, n, size)]


class Frozen(nn.Module):
    """A graph frozen to its export size: a Reshape to constant dims (a flattened spatial softmax)."""

    def __init__(self, net, hw):
        super().__init__()
        self.net, self.hw = net, hw

    def forward(self, x):
        y = self.net(x)
        return y.reshape(1, 11, self.hw[0] * self.hw[1]).softmax(-1).reshape(1, 11, *self.hw)


class Nhwc(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


class LabelMap(nn.Module):
    """An argmax head as other exporters write it: int64 [N,1,H,W]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).argmax(1, keepdim=True)


def quarter_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 11, 3, stride=2, padding=1))


def test_fixed_size_export_becomes_dynamic_and_matches_pytorch(tmp_path, tiny_camvid, camvid):
    net = conv_net()
    src = torch_export(net, tmp_path / "theirs.onnx")
    meta = adopt_onnx(src, tmp_path / "ours.onnx", classes=CAMVID, data=tiny_camvid, **NORM)
    assert meta["head"] == "logits" and meta["classes"] == list(CAMVID.names) and "output_stride" not in meta
    assert meta["adopted"]["dynamic_hw"] and meta["adopted"]["input"] == "pixel_values"
    assert [r["size"] for r in meta["adopted"]["validation"]["sizes"]] == [[96, 128], [64, 96], [64, 64]]
    proto = onnx.load(str(tmp_path / "ours.onnx"))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert proto.graph.input[0].name == "images" and proto.graph.output[0].name == "logits" and dims == ["N", 3, "H", "W"]
    assert json.loads(next(p.value for p in proto.metadata_props if p.key == META_KEY)) == meta
    with open_backend(tmp_path / "ours.onnx", "ort-cpu") as be:
        assert be.fixed_hw is None
        for img in rgb_frames(camvid, 1, (160, 224)) + rgb_frames(camvid, 1, (64, 96)):
            x = norm(img)
            with torch.inference_mode():
                ref = net(x).numpy()
            assert np.abs(be.infer(x.numpy()) - ref).max() < 1e-4


def test_frozen_graph_keeps_its_size_and_says_so(tmp_path, tiny_camvid, capsys):
    src = torch_export(Frozen(conv_net(), (64, 96)), tmp_path / "frozen.onnx", (64, 96))
    dst = tmp_path / "frozen.edgeseg.onnx"
    meta = adopt_onnx(src, dst, classes=CAMVID, data=tiny_camvid, **NORM)
    assert not meta["adopted"]["dynamic_hw"] and "Reshape" in meta["adopted"]["fixed_reason"]
    assert meta["input"]["fixed_size"] == [64, 96]
    with open_backend(dst, "ort-cpu") as be:
        assert be.fixed_hw == (64, 96)
        with pytest.raises(EdgesegError, match=r"does not fit the model input float32 \[\?,3,64,96\]|does not fit"):
            be.infer(np.zeros((1, 3, 96, 128), np.float32))
    # eval resizes each (96x128) image to the model's size and the scores back
    assert main(["eval", "--model", str(dst), "--data", str(tiny_camvid), "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= m["miou"] <= 1.0 and m["images"] == 4


def test_quarter_resolution_scores_record_their_stride_and_evaluate_like_pytorch(tmp_path, tiny_camvid, camvid):
    net = quarter_net().eval()
    src = torch_export(net, tmp_path / "q.onnx", dynamic=True)
    dst = tmp_path / "q.edgeseg.onnx"
    meta = adopt_onnx(src, dst, classes=CAMVID, data=tiny_camvid, **NORM)
    assert meta["output_stride"] == 4 and meta["adopted"]["dynamic_hw"]
    assert meta["adopted"]["validation"]["sizes"][0]["output"] == [2, 11, 24, 32]
    assert meta["adopted"]["validation"]["sizes"][0]["max_abs_diff"] == 0.0

    @torch.inference_mode()
    def reference(x):
        return net(torch.from_numpy(x)).numpy()
    data = SegFolder(tiny_camvid, "val")
    want = evaluate(reference, data, CAMVID, size_divisor=32, **NORM, progress=False)
    assert main(["eval", "--model", str(dst), "--data", str(tiny_camvid), "--json", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["miou"] == pytest.approx(want["miou"], abs=1e-6)
    video = write_video(tmp_path / "clip.avi", camvid_frames(camvid, 3, (96, 128)))
    assert main(["run", "--model", str(dst), "--source", str(video), "--sink", "null", "--save-labels",
                 str(tmp_path / "labels"), "--quiet"]) == 0
    labels = cv2.imread(str(tmp_path / "labels" / "000002.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (96, 128) and labels.max() < 11


def test_argmax_head_with_int64_label_map(tmp_path, tiny_camvid, camvid):
    net = conv_net()
    src = torch_export(LabelMap(net), tmp_path / "argmax.onnx", dynamic=True, names=("input", "seg"))
    dst = tmp_path / "argmax.edgeseg.onnx"
    meta = adopt_onnx(src, dst, classes=CAMVID, data=tiny_camvid, **NORM)
    assert meta["head"] == "argmax"
    out = onnx.load(str(dst)).graph.output[0]
    assert out.name == "labels" and out.type.tensor_type.elem_type == TensorProto.INT64
    assert len(out.type.tensor_type.shape.dim) == 3  # [N,1,H,W] squeezed to the contract's [N,H,W]
    frames = camvid_frames(camvid, 3, (96, 128))
    with open_backend(dst, "ort-cpu") as be:
        x = norm(cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB))
        with torch.inference_mode():
            ref = net(x).argmax(1).numpy()
        assert np.array_equal(be.infer(x.numpy()), ref)
    assert main(["eval", "--model", str(dst), "--data", str(tiny_camvid), "--json", str(tmp_path / "m.json")]) == 0
    assert 0.0 <= json.loads((tmp_path / "m.json").read_text())["miou"] <= 1.0
    video = write_video(tmp_path / "clip.avi", frames)
    assert main(["run", "--model", str(dst), "--source", str(video), "--sink", "null", "--save-labels",
                 str(tmp_path / "labels"), "--quiet"]) == 0
    assert len(list((tmp_path / "labels").glob("*.png"))) == 3


def test_nhwc_input_gets_a_transpose_and_matches_pytorch(tmp_path, tiny_camvid, camvid):
    net = conv_net()
    src = torch_export(Nhwc(net), tmp_path / "nhwc.onnx", nhwc=True, dynamic=True, names=("images", "logits"))
    meta = adopt_onnx(src, tmp_path / "ours.onnx", classes=CAMVID, input_layout="NHWC", data=tiny_camvid, **NORM)
    assert meta["input"]["layout"] == "NCHW" and meta["adopted"]["input_layout"] == "NHWC"
    x = norm(rgb_frames(camvid, 1, (64, 96))[0])
    with open_backend(tmp_path / "ours.onnx", "ort-cpu") as be, torch.inference_mode():
        assert np.abs(be.infer(x.numpy()) - net(x).numpy()).max() < 1e-4


def test_normalisation_read_from_the_model_in_pixel_units(tmp_path, tiny_camvid):
    src = torch_export(conv_net(), tmp_path / "theirs.onnx")
    proto = onnx.load(str(src))
    proto.metadata_props.add(key="mean", value="[123.675, 116.28, 103.53]")
    proto.metadata_props.add(key="std", value="[58.395, 57.12, 57.375]")
    onnx.save(proto, str(src))
    meta = adopt_onnx(src, tmp_path / "ours.onnx", classes=CAMVID, data=tiny_camvid)
    assert meta["input"]["mean"] == pytest.approx(IMAGENET_MEAN, abs=1e-6)
    assert meta["input"]["std"] == pytest.approx(IMAGENET_STD, abs=1e-6)


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a + b


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_net(), conv_net()

    def forward(self, x):
        return self.a(x), self.b(x)


class NhwcTwoOutputs(nn.Module):
    """An NHWC model with two score outputs, exported the way a user would: what `--input-layout` and `--output` are for."""

    def __init__(self):
        super().__init__()
        self.pair = TwoOutputs()

    def forward(self, x):
        return self.pair(x.permute(0, 3, 1, 2))


def test_cli_export_chooses_the_input_layout_and_the_output(tmp_path, tiny_camvid, camvid, capsys):
    model = NhwcTwoOutputs().eval()
    src = torch_export(model, tmp_path / "theirs.onnx", nhwc=True, names=("rgb", "left"),
                       outputs=["left", "right"])
    (tmp_path / "classes.json").write_text(json.dumps(CAMVID.to_dict()))
    argv = ["export", "--model", str(src), "--classes", str(tmp_path / "classes.json"), "--mean", "0.485,0.456,0.406",
            "--std", "0.229,0.224,0.225", "--data", str(tiny_camvid), "--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "nchw")]) == 2  # read as NCHW it has no 3-channel image input
    assert "try --input-layout NHWC" in capsys.readouterr().err
    assert main([*argv, "--input-layout", "NHWC", "--out", str(tmp_path / "two")]) == 2
    assert "choose one with --output NAME" in capsys.readouterr().err
    out = tmp_path / "ours"
    assert main([*argv, "--input-layout", "NHWC", "--output", "right", "--out", str(out)]) == 0
    ours = out / "theirs.fp32.onnx"
    # the original takes only its export shape: the adoption compared the two there, the export checks the rest
    fp32 = json.loads((out / "report.json").read_text())["validation"]["fp32"]
    assert fp32["passed"] and fp32["reference"] == "adopted onnx (matched the original at 1x96x128x3)"
    x = norm(rgb_frames(camvid, 1, (64, 96))[0])
    with open_backend(ours, "ort-cpu") as be, torch.inference_mode():
        want = model.pair.b(x).numpy()  # the output chosen, from an NCHW input
        assert np.abs(be.infer(x.numpy()) - want).max() < 1e-4
    assert main(["export", "--model", "demo", "--input-layout", "NHWC", "--out", str(tmp_path / "demo")]) == 2
    assert "choose the image input of a foreign ONNX file" in capsys.readouterr().err


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 11, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _custom_op(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 11, 32, 32])
    graph = helper.make_graph([helper.make_node("Magic", ["x"], ["y"], domain="acme")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


BAD = {
    "no image input": (lambda p: torch.onnx.export(nn.Conv2d(1, 11, 1), (torch.zeros(1, 1, 32, 32),), str(p),
                                                   dynamo=False, opset_version=17), {}, "no 4-D 3-channel NCHW image input"),
    "two image inputs": (lambda p: torch.onnx.export(TwoInputs(), (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)),
                                                     str(p), dynamo=False, opset_version=17, input_names=["a", "b"]),
                         {}, "2 candidate image inputs (a float [1,3,8,8]; b float [1,3,8,8]); choose one with --input NAME"),
    "unknown input name": (lambda p: torch_export(conv_net(), p), {"input_name": "rgb"}, "no input named 'rgb'"),
    "two outputs": (lambda p: torch_export(TwoOutputs(), p, outputs=["left", "right"]), {},
                    "2 candidate outputs (left float [1,11,96,128]; right float [1,11,96,128]); choose one with --output NAME"),
    "classification": (lambda p: torch_export(_classifier(), p, names=("x", "probs")), {},
                       "output probs float [1,11] has no spatial dims: a classification model"),
    "class count": (lambda p: torch_export(conv_net(19), p), {}, "scores 19 classes but the classes file has 11"),
    "no normalisation": (lambda p: torch_export(conv_net(), p), {"mean": None, "std": None},
                         "the input normalisation is not in the model; pass --mean and --std"),
    "custom op": (_custom_op, {}, "custom ops acme::Magic cannot run on this machine"),
    "layout": (lambda p: torch_export(conv_net(), p), {"input_layout": "HWC"}, "input layout 'HWC': use NCHW or NHWC"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_leaves_dst_alone(case, tmp_path, tiny_camvid):
    make, kwargs, message = BAD[case]
    src, dst = tmp_path / "theirs.onnx", tmp_path / "ours.onnx"
    make(src)
    dst.write_bytes(b"previous model")
    with pytest.raises(EdgesegError) as e:
        adopt_onnx(src, dst, classes=CAMVID, data=tiny_camvid, **{**NORM, **kwargs})
    assert message in str(e.value) and "\n" not in str(e.value)
    assert dst.read_bytes() == b"previous model" and sorted(p.name for p in tmp_path.iterdir()) == ["ours.onnx", "theirs.onnx"]


def tiny_segformer():
    """A transformers SegFormer (MiT encoder + all-MLP decoder) with small widths and random weights: no download."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SegformerConfig(num_labels=11, hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2],
                                       depths=[1, 1, 1, 1], decoder_hidden_size=32)
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(cfg).eval()

    class Logits(nn.Module):  # what a user writes to export it: the output object's logits
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits
    return Logits().eval()


@pytest.fixture(scope="module")
def segformer(tmp_path_factory):
    net = tiny_segformer()
    folder = tmp_path_factory.mktemp("segformer")
    return net, torch_export(net, folder / "segformer.onnx", dynamic=True, names=("pixel_values", "logits"))


def test_transformers_segformer_adopted_quantized_run_and_evaluated(segformer, tmp_path, tiny_camvid, camvid):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgeseg.export.int8 import CalibrationImages
    from edgeseg.export.validate import image_files

    net, src = segformer
    dst = tmp_path / "segformer.fp32.onnx"
    meta = adopt_onnx(src, dst, classes=CAMVID, data=tiny_camvid, **NORM)
    assert meta["output_stride"] == 4 and meta["adopted"]["dynamic_hw"]
    x = norm(rgb_frames(camvid, 1, (160, 224))[0])  # not a size the model was exported or validated at
    with open_backend(dst, "ort-cpu") as be, torch.inference_mode():
        got, want = be.infer(x.numpy()), net(x).numpy()
    assert got.shape == (1, 11, 40, 56) and np.abs(got - want).max() < 1e-4

    # int8 the way ONNX Runtime's own quantizer does it, calibrated on real frames through edgeseg's reader
    int8 = tmp_path / "segformer.int8.onnx"
    calib = CalibrationImages(image_files(tiny_camvid, "train"), meta)
    quantize_static(str(dst), str(int8), calib, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8)).graph.node) > 10
    scores = {}
    for name, path in (("fp32", dst), ("int8", int8)):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--model", str(path), "--data", str(tiny_camvid), "--json", str(out)]) == 0
        scores[name] = json.loads(out.read_text())
        assert 0.0 <= scores[name]["miou"] <= 1.0 and scores[name]["images"] == 4
    video = write_video(tmp_path / "clip.avi", camvid_frames(camvid, 3, (96, 128)))
    assert main(["run", "--model", str(int8), "--source", str(video), "--sink", "null", "--json",
                 str(tmp_path / "run.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run.json").read_text())["frames"] == 3
