"""The export stage from any torch module and from ONNX files; the gates, partial publishing and the derived CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.cli import build_parser, main
from edgeseg.data import CAMVID
from edgeseg.errors import EdgesegError
from edgeseg.export import export_model
from edgeseg.export.graph import get_meta, load
from edgeseg.export.pipeline import PartialExport
from edgeseg.export.report import to_markdown
from edgeseg.export.validate import Gates, OrtPredictor, compare, image_files, judge, model_input
from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD

SIZES = ((64, 96), (96, 128))
META = {"input": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "dtype": "float32", "layout": "NCHW",
                  "size_divisor": 1}}


class Plain(nn.Module):
    """A user's network, not from the zoo: scores at full resolution, returned as a tensor."""

    def __init__(self, classes: int = 11):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 24, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(24, classes, 1))

    def forward(self, x):
        return F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class QuarterDict(nn.Module):
    """Like a transformers SegFormer: a dict output whose scores are at 1/4 of the input."""

    def __init__(self, classes: int = 11):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(24, classes, 1))

    def forward(self, x):
        y = self.body(x)
        return {"aux": y.mean((2, 3)), "scores": y}


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


@pytest.fixture(scope="module")
def frames(camvid) -> list[np.ndarray]:
    from edgeseg.data import read_image

    return [read_image(p) for p in image_files(camvid, "val")[::40][:2]]


def test_plain_module_exports_like_a_checkpoint(tiny_camvid, tmp_path, frames):
    net = _seeded(Plain)
    rep = export_model(net, tmp_path, ("fp32", "fp16", "int8"), classes=CAMVID, data=str(tiny_camvid), sizes=SIZES,
                       calib_images=4, validate_images=2, int8_target="cpu", progress=False)
    assert rep["status"] == "ok" and rep["source"]["kind"] == "module"
    assert set(rep["outputs"]) == {"fp32", "fp16", "int8"}
    v = rep["validation"]["fp32"]
    assert v["passed"] and v["reference"] == "pytorch" and v["max_abs_diff"] <= 1e-3
    assert rep["int8"]["guard"]["loss_points"] <= 0.5 and rep["metrics"]["int8"]["images"] == 4
    meta = get_meta(load(rep["outputs"]["fp32"]["path"]))
    assert meta["arch"] == "Plain" and meta["classes"] == list(CAMVID.names) and "output_stride" not in meta
    assert (tmp_path / "plain.fp32.onnx").is_file()
    x = model_input(frames, (72, 104), meta)  # a size the validation did not use
    with torch.inference_mode():
        want = net(torch.from_numpy(x)).numpy()
    assert np.abs(OrtPredictor(rep["outputs"]["fp32"]["path"])(x) - want).max() <= 1e-4


def _run_labels(model_path, frames, tmp_path, tag) -> list[np.ndarray]:
    """`edgeseg run` over a folder of frames; the class IDs it saves at frame resolution."""
    src, out = tmp_path / f"{tag}-frames", tmp_path / f"{tag}-labels"
    src.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(src / f"{i}.png"), cv2.cvtColor(cv2.resize(f, (128, 96)), cv2.COLOR_RGB2BGR))
    assert main(["run", "--model", str(model_path), "--source", str(src), "--sink", "null",
                 "--save-labels", str(out)]) == 0
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(out.iterdir())]


def test_dict_output_at_quarter_resolution_both_ways(tiny_camvid, tmp_path, frames):
    """Scores at 1/4: upsampled in the graph, or declared as output_stride and upsampled by the runtime; both give
    the labels of the module's scores upsampled bilinearly."""
    net = _seeded(QuarterDict)
    common = {"classes": CAMVID, "output": "scores", "data": str(tiny_camvid), "sizes": SIZES, "guard": False,
              "validate_images": 2, "progress": False}
    in_graph = export_model(net, tmp_path / "graph", ("fp32",), resize_output=True, **common)
    declared = export_model(net, tmp_path / "meta", ("fp32",), resize_output=False, **common)
    g, d = (get_meta(load(r["outputs"]["fp32"]["path"])) for r in (in_graph, declared))
    assert "output_stride" not in g and d["output_stride"] == 4
    x = model_input(frames, (96, 128), META)
    assert OrtPredictor(in_graph["outputs"]["fp32"]["path"])(x).shape == (2, 11, 96, 128)
    assert OrtPredictor(declared["outputs"]["fp32"]["path"])(x).shape == (2, 11, 24, 32)
    assert declared["validation"]["fp32"]["passed"] and in_graph["validation"]["fp32"]["passed"]

    with torch.inference_mode():
        want = F.interpolate(net(torch.from_numpy(x))["scores"], size=(96, 128), mode="bilinear",
                             align_corners=False).argmax(1).numpy()
    a = _run_labels(in_graph["outputs"]["fp32"]["path"], frames, tmp_path, "graph")
    b = _run_labels(declared["outputs"]["fp32"]["path"], frames, tmp_path, "meta")
    for la, lb, w in zip(a, b, want):
        assert la.shape == lb.shape == (96, 128)
        assert (la == w).mean() >= 0.995 and (lb == w).mean() >= 0.995 and (la == lb).mean() >= 0.995
    nearest = cv2.resize(OrtPredictor(declared["outputs"]["fp32"]["path"])(x)[0].argmax(0).astype(np.uint8),
                         (128, 96), interpolation=cv2.INTER_NEAREST)
    assert (nearest == want[0]).mean() < (b[0] == want[0]).mean()  # the runtime upsampled scores, not labels


def test_module_output_errors(tiny_camvid, tmp_path):
    net = _seeded(QuarterDict)
    with pytest.raises(EdgesegError, match="cannot take output 'logits'") as e:
        export_model(net, tmp_path, classes=CAMVID, output="logits", data=str(tiny_camvid), guard=False, progress=False)
    assert "aux" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EdgesegError, match="outputs 11 class scores but classes= names 3"):
        three = type(CAMVID)(("a", "b", "c"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)), 255)
        export_model(net, tmp_path, classes=three, output="scores", data=str(tiny_camvid), guard=False, progress=False)
    with pytest.raises(EdgesegError, match="classes= is required"):
        export_model(_seeded(Plain), tmp_path, data=str(tiny_camvid), guard=False, progress=False)


def test_foreign_onnx_is_adopted_and_exported(tiny_camvid, tmp_path, frames):
    net = _seeded(Plain)
    foreign = tmp_path / "theirs.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 64, 96),), str(foreign), dynamo=False, opset_version=17,
                      input_names=["pixel_values"], output_names=["out"],
                      dynamic_axes={"pixel_values": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "h", 3: "w"}})
    rep = export_model(foreign, tmp_path / "out", ("fp32", "int8"), classes=CAMVID, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, data=str(tiny_camvid), sizes=SIZES, calib_images=4, int8_target="cpu",
                       progress=False)
    assert rep["source"]["kind"] == "onnx" and rep["validation"]["fp32"]["reference"] == "source onnx"
    assert rep["validation"]["fp32"]["max_abs_diff"] <= 1e-5 and rep["validation"]["int8"]["passed"]
    assert rep["int8"]["guard"]["loss_points"] <= 0.5  # the guard ran on the adopted graph as on a torch export
    path = rep["outputs"]["fp32"]["path"]
    meta = get_meta(load(path))
    assert meta["classes"] == list(CAMVID.names) and meta["precision"] == "fp32"
    assert [i.name for i in onnx.load(path).graph.input] == ["images"]
    x = model_input(frames, (72, 104), meta)
    with torch.inference_mode():
        assert np.abs(OrtPredictor(path)(x) - net(torch.from_numpy(x)).numpy()).max() <= 1e-4


def test_failed_int8_publishes_what_validated(tiny_camvid, tmp_path, capsys):
    """An int8 step that cannot meet its gate (a loss limit of -1000 mIoU points): fp32 and fp16 are published, the
    report says why, the CLI exits non-zero. The source is an exported fp32 ONNX (with edgeseg metadata): the passes
    run from that graph."""
    first = export_model(_seeded(Plain), tmp_path / "fp32", classes=CAMVID, data=str(tiny_camvid), sizes=SIZES[:1],
                         guard=False, validate_images=1, progress=False)
    src = first["outputs"]["fp32"]["path"]
    out = tmp_path / "out"
    with pytest.raises(PartialExport, match="int8") as e:
        export_model(src, out, ("fp16", "int8"), data=str(tiny_camvid), sizes=SIZES[:1], validate_images=1,
                     calib_images=2, gates={"int8_max_loss": -1000.0}, int8_target="cpu", progress=False)
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "partial" and set(rep["outputs"]) == {"fp32", "fp16"} == set(e.value.report["outputs"])
    assert rep["passes"]["int8"]["status"] == "failed"
    assert "even with every layer in float" in rep["passes"]["int8"]["why"]
    assert {p.name for p in out.glob("*.onnx")} == {"plain.fp32.onnx", "plain.fp16.onnx"}
    assert rep["validation"]["fp32"]["reference"] == "source onnx" and rep["validation"]["fp32"]["max_abs_diff"] == 0
    assert "## What failed" in (out / "report.md").read_text()
    capsys.readouterr()
    code = main(["export", "--model", src, "--out", str(tmp_path / "cli"), "--precision", "int8", "--data",
                 str(tiny_camvid), "--validate-sizes", "64x96", "--validate-images", "1", "--calib-images", "2",
                 "--int8-max-loss", "-1000", "--int8-target", "cpu"])
    io = capsys.readouterr()
    last = io.err.strip().splitlines()[-1]  # after the progress lines: one error line
    assert code != 0 and "plain.fp32.onnx" in io.out and last.startswith("edgeseg export: error: int8")


def test_gates_judge_each_row_as_printed():
    rows = [{"size": [64, 96], "batch": 2, "argmax_agreement": 0.95374},
            {"size": [96, 128], "batch": 2, "argmax_agreement": 0.949996},  # printed 95.00: a pass at >= 95 %
            {"size": [80, 160], "batch": 2, "argmax_agreement": 0.9449}]
    passed, limit = judge(rows, min_agree=Gates().int8_agreement)
    assert not passed and [r["passed"] for r in rows] == [True, True, False] and limit == "argmax agreement >= 95.00%"
    md = to_markdown({"validation": {"int8": {"reference": "fp32 onnx", "sizes": rows, "limit": limit,
                                               "passed": passed}}})
    results = [line.rsplit("|", 2)[-2].strip() for line in md.splitlines() if line.startswith("| int8")]
    assert results == ["pass", "pass", "FAIL"] and "| 95.37 |" in md and "| 95.00 |" in md
    with pytest.raises(EdgesegError, match="unknown gate 'fp32_max'"):
        Gates.of({"fp32_max": 1.0})


def test_difference_gate_scales_with_the_reference_logits():
    """fp32 rounding grows with the values: 1e-3 holds per unit of the largest |logit|, and absolutely below 1."""
    rows = [{"size": [64, 96], "batch": 1, "argmax_agreement": 1.0, "max_abs_diff": 2.6e-2, "reference_max_abs": 500.0},
            {"size": [96, 128], "batch": 1, "argmax_agreement": 1.0, "max_abs_diff": 6e-1, "reference_max_abs": 500.0},
            {"size": [72, 104], "batch": 1, "argmax_agreement": 1.0, "max_abs_diff": 2e-3, "reference_max_abs": 0.5}]
    passed, limit = judge(rows, max_abs=1e-3)
    assert not passed and [r["passed"] for r in rows] == [True, False, False]
    assert limit == "max abs diff <= 0.001 x max(1, largest |reference logit|)"


def test_hard_decisions_move_the_difference_gate_to_the_999th_percentile():
    """A model whose last-bit differences can flip a discrete choice (a mask at logit 0) is judged on the 99.9th
    percentile of |diff|: one flipped pixel in 10^4 passes, a shifted map does not; the agreement limit still holds."""
    ref = np.random.default_rng(0).standard_normal((1, 3, 100, 100)).astype(np.float32)
    flipped = ref.copy()
    flipped[0, :, 5, 7] += 0.5  # one pixel of 10^4
    shifted = ref + 2e-2  # beyond 1e-3 x the largest |logit| (about 4)
    rows = compare(lambda x: ref, lambda x: flipped, [np.zeros((8, 8, 3), np.uint8)], [(8, 8)], META)
    assert rows[0]["max_abs_diff"] == pytest.approx(0.5) and rows[0]["p999_abs_diff"] < 1e-6
    assert not judge([dict(rows[0])], max_abs=1e-3)[0]
    passed, limit = judge(rows, max_abs=1e-3, min_agree=0.999, hard_decisions="a mask")
    assert passed and limit.startswith("99.9th percentile abs diff (a mask) <= 0.001")
    rows = compare(lambda x: ref, lambda x: shifted, [np.zeros((8, 8, 3), np.uint8)], [(8, 8)], META)
    assert not judge(rows, max_abs=1e-3, hard_decisions="a mask")[0]


def test_cli_options_come_from_the_dataclass():
    from dataclasses import fields

    from edgeseg.export.pipeline import ExportOptions

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["export"]
    text = sub.format_help()
    by_dest = {a.dest: a for a in sub._actions}
    for f in [*fields(ExportOptions), *fields(Gates)]:
        if f.metadata.get("cli", True):
            dest = f.name if f.name in by_dest else f"gate_{f.name}"
            assert by_dest[dest].help, f.name
    assert "--no-guard" in text and "True" not in text and "(default: auto)" in text and "(default: 0.5)" in text
    guard = by_dest["guard"]
    assert guard.help.startswith("skip") and guard.option_strings == ["--no-guard"]
    args = build_parser().parse_args(["export", "--model", "m.pt", "--out", "o", "--no-guard", "--int8-max-loss", "1"])
    assert args.guard is False and args.gate_int8_max_loss == 1.0 and args.int8_target == "auto" and args.opset == 17


class Warped(nn.Module):
    """A user's network with a flow warp (edgeseg.models.layers.flow_warp): what the FlowWarp pass rewrites."""

    def __init__(self, classes: int = 11):
        super().__init__()
        self.feat = nn.Conv2d(3, classes, 3, 2, 1)
        self.flow = nn.Conv2d(3, 2, 3, 1, 1)

    def forward(self, x):
        from edgeseg.models.layers import flow_warp

        return flow_warp(self.feat(x), self.flow(x))


def test_flowwarp_pass_on_a_user_module(tiny_camvid, tmp_path):
    """The FlowWarp pass runs on a module's graph as on a zoo model's. Where the ONNX Runtime op is not built, the
    plugin graph cannot be validated: that graph alone fails, fp32 is published and the report says why."""
    from edgeseg.kernels import find_library

    common = {"classes": CAMVID, "data": str(tiny_camvid), "sizes": SIZES, "guard": False, "validate_images": 2,
              "flowwarp_plugin": True, "progress": False}
    if find_library("ort") is not None:
        rep = export_model(_seeded(Warped), tmp_path, **common)
        assert rep["validation"]["fp32-flowwarp"]["passed"] and rep["flowwarp"]["fp32"]["replaced"] == 1
        return
    with pytest.raises(PartialExport, match="fp32-flowwarp") as e:
        export_model(_seeded(Warped), tmp_path, **common)
    rep = e.value.report
    assert set(rep["outputs"]) == {"fp32"} and rep["flowwarp"]["fp32"]["replaced"] == 1
    assert rep["passes"]["flowwarp"]["status"] == "failed" and (tmp_path / "warped.fp32.onnx").is_file()
    assert not (tmp_path / "warped-flowwarp.fp32.onnx").exists()


def test_scores_are_selected_by_key_attribute_or_index():
    from types import SimpleNamespace

    from edgeseg.export.torch_export import select_output

    y = torch.randn(1, 11, 8, 8)
    assert select_output(y) is y
    assert select_output({"logits": y, "aux": y[:, :1]}) is y  # a dict's logits by default
    assert select_output(SimpleNamespace(logits=y, hidden_states=None)) is y  # what transformers models return
    assert select_output((y, None)) is y and select_output([None, y], 1) is y
    assert select_output({"seg": y}, "seg") is y and select_output(SimpleNamespace(seg=y), "seg") is y
    with pytest.raises(EdgesegError, match=r"\['seg'\]: cannot take output 'logits'"):
        select_output({"seg": y})
    with pytest.raises(EdgesegError, match=r"output 'aux' is \[1, 11\], not per-class scores"):
        select_output({"aux": y.mean((2, 3))}, "aux")
