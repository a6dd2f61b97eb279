"""`edgeseg inspect` and `edgeseg compare` on real graphs: adopted fp32, edgeseg's and ONNX Runtime's int8 Q/DQ,
mixed fp16, custom ops, an engine sidecar; comparisons checked against ONNX Runtime sessions and `edgeseg eval`."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.quantization import QuantFormat, quantize_static
from runtime_helpers import conv_net
from test_adopt import NORM, LabelMap, torch_export

from edgeseg.cli import main
from edgeseg.compare import compare_models
from edgeseg.data import SegFolder, normalize
from edgeseg.data.classes import CAMVID, ClassInfo
from edgeseg.errors import EdgesegError
from edgeseg.export.adopt import adopt_onnx
from edgeseg.export.fp16 import to_fp16
from edgeseg.export.int8 import CalibrationImages, QuantConfig, qdq_summary, quantize
from edgeseg.export.validate import image_files, pick
from edgeseg.inspection import format_text, inspect_model
from edgeseg.kernels import find_library
from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD
from edgeseg.sizes import fit


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_camvid):
    """The same tiny net as fp32 (adopted), edgeseg int8 (cpu form), ONNX Runtime's default int8, and argmax head."""
    d = tmp_path_factory.mktemp("models")
    net = conv_net()
    fp32 = d / "net.fp32.onnx"
    meta = adopt_onnx(torch_export(net, d / "theirs.onnx", dynamic=True), fp32, classes=CAMVID, data=tiny_camvid, **NORM)
    calib = CalibrationImages(image_files(tiny_camvid, "train")[:4], meta)
    int8 = quantize(fp32, d / "net.int8.onnx", calib, QuantConfig(method="minmax", target="cpu"))
    ort_int8 = d / "net.ort-int8.onnx"
    calib.rewind()
    quantize_static(str(fp32), str(ort_int8), calib, quant_format=QuantFormat.QDQ, per_channel=True)
    argmax = d / "net.argmax.onnx"
    adopt_onnx(torch_export(LabelMap(net), d / "labels.onnx", dynamic=True), argmax, classes=CAMVID, data=tiny_camvid, **NORM)
    return {"fp32": fp32, "int8": int8, "ort-int8": ort_int8, "argmax": argmax, "calib": calib}


def test_inspect_fp32_graph(models, tmp_path, capsys):
    info = inspect_model(models["fp32"])
    assert info["inputs"] == [{"name": "images", "dtype": "float", "shape": ["N", 3, "H", "W"], "dynamic": [0, 2, 3]}]
    assert info["outputs"][0]["name"] == "logits" and info["outputs"][0]["dynamic"] == [0, 2, 3]
    assert info["opsets"] == {"ai.onnx": 17} and info["ir_version"] == onnx.load(str(models["fp32"])).ir_version
    assert info["ops"] == {"Conv": 2, "Relu": 1} and info["parameters"] == 3 * 8 * 9 + 8 + 8 * 11 * 9 + 11
    assert info["metadata"]["classes"] == list(CAMVID.names) and info["metadata"]["adopted"]["input"] == "pixel_values"
    assert (info["int8"]["int8"], info["int8"]["layers"], info["fp16"]["fp16"], info["custom_ops"]) == (0, 2, 0, [])
    assert main(["inspect", str(models["fp32"]), "--json", str(tmp_path / "i.json")]) == 0
    out = capsys.readouterr().out
    assert "images: float [N,3,H,W] (dynamic: axes 0,2,3)" in out and "int8: 0 of 2 Conv/MatMul/Gemm layers" in out
    assert json.loads((tmp_path / "i.json").read_text())["ops"] == {"Conv": 2, "Relu": 1}


@pytest.mark.parametrize("kind", ["int8", "ort-int8"])
def test_inspect_int8_coverage_matches_the_qdq_placement(models, kind):
    model = onnx.load(str(models[kind]))
    info = inspect_model(models[kind])
    assert qdq_summary(model)["quantized_inputs"]["Conv"] == 2  # the export stage's own view of the placement
    assert (info["int8"]["int8"], info["int8"]["layers"], info["int8"]["fraction"]) == (2, 2, 1.0)
    assert info["int8"]["qdq_nodes"] == sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def test_inspect_partial_int8_names_the_float_layers(models, tmp_path):
    first = next(n.name for n in onnx.load(str(models["fp32"])).graph.node if n.op_type == "Conv")
    path = quantize(models["fp32"], tmp_path / "partial.onnx", models["calib"], QuantConfig(method="minmax", target="cpu"),
                    exclude=[first])
    info = inspect_model(path)
    assert (info["int8"]["int8"], info["int8"]["float_layers"]) == (1, [first])
    assert f"float: {first}" in format_text(info)


def test_inspect_fp16_coverage(models, tmp_path):
    fp16, _ = to_fp16(onnx.load(str(models["fp32"])))
    onnx.save(fp16, str(tmp_path / "net.fp16.onnx"))
    info = inspect_model(tmp_path / "net.fp16.onnx")
    assert (info["fp16"]["fp16"], info["fp16"]["layers"]) == (2, 2) and info["fp16"]["casts"] >= 2
    assert info["outputs"][0]["dtype"] == "float"  # fp16 inside, fp32 at the edges


def test_inspect_custom_ops_and_whether_they_run_here(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])
    flow = helper.make_tensor_value_info("flow", TensorProto.FLOAT, [1, 2, 16, 16])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 16, 16])
    nodes = [helper.make_node("FlowWarp", ["x", "flow"], ["y"], domain="edgeseg", align_corners=1),
             helper.make_node("Magic", ["y"], ["z"], domain="acme")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, flow], [z]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgeseg", 1),
                                             helper.make_opsetid("acme", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "custom.onnx"))
    info = inspect_model(tmp_path / "custom.onnx")
    rows = {(c["domain"], c["op"]): c for c in info["custom_ops"]}
    assert rows[("edgeseg", "FlowWarp")]["ort_cpu"] == (find_library("ort") is not None)
    assert rows[("acme", "Magic")]["ort_cpu"] is False
    assert info["ops"] == {"acme::Magic": 1, "edgeseg::FlowWarp": 1} and info["metadata"] is None
    text = format_text(info)
    assert "custom op acme::Magic x1: cannot run here" in text and "edgeseg metadata: none" in text


def test_inspect_engine_sidecar(models, tmp_path):
    meta = inspect_model(models["int8"])["metadata"]
    engine = tmp_path / "net.engine"
    engine.write_bytes(b"serialized engine")
    (tmp_path / "net.engine.json").write_text(json.dumps({"tensorrt": "10.13", "precision": "int8", "edgeseg": meta,
                                                          "profiles": [{"opt": [1, 3, 360, 480]}]}))
    info = inspect_model(engine)
    assert info["format"] == "tensorrt-sidecar" and info["engine"] == str(engine) and info["precision"] == "int8"
    assert info["metadata"]["classes"] == list(CAMVID.names) and "TensorRT 10.13" in format_text(info)
    with pytest.raises(EdgesegError, match="no such file"):
        inspect_model(tmp_path / "other.engine")


def _session_outputs(path, images):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [s.run(None, {"images": normalize(img, IMAGENET_MEAN, IMAGENET_STD)[None]})[0] for img in images]


def test_compare_fp32_and_int8_against_sessions_and_eval(models, tiny_camvid, tmp_path, capsys):
    data = SegFolder(tiny_camvid, "val")
    images = [data[i][0] for i in range(3)]
    assert all(fit(img.shape[:2], 32) == img.shape[:2] for img in images)  # so the models see the images as they are
    ya, yb = _session_outputs(models["fp32"], images), _session_outputs(models["int8"], images)
    agree = np.mean([(a[0].argmax(0) == b[0].argmax(0)).mean() for a, b in zip(ya, yb)])
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ya, yb))
    assert main(["compare", str(models["fp32"]), str(models["int8"]), "--data", str(tiny_camvid), "--limit", "3",
                 "--json", str(tmp_path / "c.json")]) == 0
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["images"] == 3 and r["argmax_agreement"] == pytest.approx(agree, abs=1e-9)
    assert r["max_abs_diff"] == pytest.approx(diff, rel=1e-6) and 0 < diff
    for key, path in (("a", models["fp32"]), ("b", models["int8"])):
        assert main(["eval", "--model", str(path), "--data", str(tiny_camvid), "--limit", "3",
                     "--json", str(tmp_path / f"{key}.json")]) == 0
        want = json.loads((tmp_path / f"{key}.json").read_text())
        assert r[key]["miou"] == pytest.approx(want["miou"], abs=1e-12)
        assert r[key]["per_class_iou"] == want["per_class_iou"]
    row = next(x for x in r["per_class"] if x["a"] is not None and x["b"] is not None)
    assert row["diff"] == pytest.approx(row["b"] - row["a"])
    out = capsys.readouterr().out
    assert f"argmax agreement {100 * agree:.2f} %" in out and "| class        | A IoU % | B IoU % |  B - A |" in out


def test_compare_argmax_head_with_its_logits_model(models, tiny_camvid):
    r = compare_models(models["fp32"], models["argmax"], tiny_camvid, limit=2, progress=False)
    assert r["argmax_agreement"] == 1.0 and r["max_abs_diff"] is None and "argmax head" in r["max_abs_diff_note"]
    assert r["a"]["miou"] == r["b"]["miou"]


def test_per_layer_int8_sensitivity(models, tiny_camvid, tmp_path):
    r = compare_models(models["int8"], models["fp32"], tiny_camvid, limit=2, per_layer=True,
                       calib=tiny_camvid / "images" / "train", calib_images=4, progress=False)
    p = r["per_layer"]
    assert p["float_model"] == str(models["fp32"]) and len(p["layers"]) == 2
    assert [x["agreement"] for x in p["layers"]] == sorted(x["agreement"] for x in p["layers"])
    # the worst row again by hand: only that layer quantized, from the same calibration images
    worst = p["layers"][0]
    calib = CalibrationImages(pick(image_files(tiny_camvid, "train"), 4), models["calib"].meta)
    one = quantize(models["fp32"], tmp_path / "one.onnx", calib, QuantConfig(method="minmax", target="cpu"),
                   only=[worst["layer"]])
    data = SegFolder(tiny_camvid, "val")
    images = [data[i][0] for i in range(2)]
    ref, got = _session_outputs(models["fp32"], images), _session_outputs(one, images)
    assert worst["agreement"] == pytest.approx(np.mean([(a[0].argmax(0) == b[0].argmax(0)).mean() for a, b in zip(ref, got)]))


def test_compare_errors(models, tiny_camvid, tmp_path):
    with pytest.raises(EdgesegError, match="--per-layer needs one float model and one int8"):
        compare_models(models["fp32"], models["argmax"], tiny_camvid, limit=1, per_layer=True, progress=False)
    three = ClassInfo(("a", "b", "c"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)), 255)
    other = tmp_path / "three.onnx"
    adopt_onnx(torch_export(conv_net(3), tmp_path / "t.onnx"), other, classes=three, data=tiny_camvid, **NORM)
    with pytest.raises(EdgesegError, match="compare models of the same classes"):
        compare_models(models["fp32"], other, tiny_camvid, progress=False)
    with pytest.raises(EdgesegError, match="model file not found|not found"):
        compare_models(models["fp32"], tmp_path / "missing.onnx", tiny_camvid, progress=False)
