"""Temporal mode: the warp against DESIGN.md's FlowWarp (F.grid_sample), the key-frame logic on real frames moved by a
known translation, scene cuts, other-size frames, failed flows, stalls, and the `--temporal` flag."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from runtime_helpers import camvid_meta, conv_net, export_onnx

from edgeseg import kernels
from edgeseg.errors import EdgesegError
from edgeseg.runtime.motion import DisFlow, FlowWarp, MotionEstimator, flowwarp_model_bytes
from edgeseg.runtime.temporal import Temporal, TemporalSpec, parse_temporal

HW = (128, 160)  # frames and model input (H, W)
SHIFT = 2  # pixels per frame, to the right and down


@pytest.fixture(scope="session")
def ort_ops() -> None:
    from edgeseg.kernels import cmake

    try:
        summary = cmake.build(log=lambda *_: None)
    except EdgesegError as e:
        pytest.skip(f"kernels not built: {e}")
    if "edgeseg_ort_ops" not in summary["built"] or kernels.find_library("ort") is None:
        pytest.skip(f"edgeseg_ort_ops not built: {summary['skipped'].get('edgeseg_ort_ops')}")


def reference(x: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """DESIGN.md's FlowWarp with align_corners=0 and FLOW = 2 * flow (pixels), through F.grid_sample."""
    H, W = flow.shape[-2:]
    bx, by = (2 * torch.arange(W) + 1) / W - 1, (2 * torch.arange(H) + 1) / H - 1
    f = 2 * torch.from_numpy(flow).float()
    grid = torch.stack((bx[None, :] + f[0] / W, by[:, None] + f[1] / H), dim=-1)[None]
    return F.grid_sample(torch.from_numpy(x).float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).numpy()


def test_flowwarp_model_bytes_is_the_one_node_graph():
    m = onnx.load_from_string(flowwarp_model_bytes())
    (node,) = m.graph.node
    assert (node.op_type, node.domain, list(node.input), list(node.output)) == ("FlowWarp", "edgeseg", ["X", "FLOW"], ["Y"])
    assert [(a.name, a.i) for a in node.attribute] == [("align_corners", 0)]
    assert {o.domain: o.version for o in m.opset_import} == {"": 17, "edgeseg": 1}
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [onnx.TensorProto.FLOAT] * 2
    assert onnx.load_from_string(flowwarp_model_bytes(10)).graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


@pytest.mark.parametrize("backend", ["op", "opencv"])
@pytest.mark.parametrize("shape", [(11, 36, 48, 36, 48, 3.0), (4, 9, 13, 18, 26, 2.0), (3, 20, 24, 7, 9, 15.0)],
                         ids=["same-size", "upsampling", "large-flow"])
def test_warp_matches_flowwarp_definition(request, backend, shape):
    if backend == "op":
        request.getfixturevalue("ort_ops")
    c, h, w, H, W, scale = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    flow = (rng.standard_normal((2, H, W)) * scale).astype(np.float32)
    y = FlowWarp(backend).warp(x, flow)
    np.testing.assert_allclose(y, reference(x, flow), atol=5e-5)


def test_op_and_opencv_warps_agree_in_float16(ort_ops):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 30, 40)).astype(np.float16)
    flow = (rng.standard_normal((2, 30, 40)) * 4).astype(np.float32)
    a, b = FlowWarp("op").warp(x, flow), FlowWarp("opencv").warp(x, flow)
    assert a.dtype == b.dtype == np.float16
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-2)


def translated_frames(camvid, n: int, hw=HW, image: int = 0) -> list[np.ndarray]:
    """Crops of one real CamVid frame, moving SHIFT pixels right and down per frame (the scene moves up-left)."""
    image = cv2.imread(str(sorted((camvid / "images" / "val").iterdir())[image]))
    h, w = hw
    return [np.ascontiguousarray(image[100 + SHIFT * i:100 + SHIFT * i + h, 100 + SHIFT * i:100 + SHIFT * i + w])
            for i in range(n)]


def slot(index: int, frame: np.ndarray, t0: float = 0.0):
    return SimpleNamespace(index=index, frame=frame, t0=t0, plan=None)


def plans(temporal: Temporal, frames, start: int = 0) -> list:
    out = []
    for i, f in enumerate(frames, start):
        s = slot(i, f)
        temporal.plan(s)
        out.append(s.plan)
    return out


def test_flow_of_a_translation(camvid):
    a, b = (cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in translated_frames(camvid, 2))
    flow = DisFlow().flow(a, b)
    assert flow.shape == (2, *HW) and flow.dtype == np.float32
    # b(x) = a(x + SHIFT): the backward flow is +SHIFT in x and y
    inner = flow[:, 16:-16, 16:-16]
    assert np.median(inner[0]) == pytest.approx(SHIFT, abs=0.25) and np.median(inner[1]) == pytest.approx(SHIFT, abs=0.25)


def test_fixed_schedule_and_cut(camvid):
    other = [np.ascontiguousarray(255 - f) for f in translated_frames(camvid, 4, image=60)]  # another scene
    p = plans(Temporal(TemporalSpec("fixed", k=3), HW), [*translated_frames(camvid, 4), *other])
    assert [q.key for q in p] == [True, False, False, True, True, False, False, True]
    assert [q.reason for q in p if q.key] == ["first", "schedule", "cut", "schedule"]


def test_auto_keys_on_motion_and_gap(camvid):
    frames = translated_frames(camvid, 12)
    t = Temporal(TemporalSpec("auto", max_gap=5, border=0.2), HW)
    p = plans(t, frames)
    assert p[1].residual < t.spec.residual
    assert [q.key for q in p] == [i % 5 == 0 for i in range(12)]  # a smooth translation: only the gap keys
    assert [q.reason for q in p if q.key] == ["first", "schedule", "schedule"]
    # With the default border, the 3rd frame after a key samples > 8 % of its pixels outside the key frame
    # (3 px of a 64x80 flow image on two sides).
    p = plans(Temporal(TemporalSpec("auto", max_gap=5), HW), frames[:4])
    assert [q.key for q in p] == [True, False, False, True] and p[3].reason == "motion"
    jump = plans(t, [translated_frames(camvid, 40)[-1]], start=12)[0]  # 78 px away from the last key frame
    assert jump.key and jump.reason in ("motion", "cut")


def test_other_size_and_failed_flow_and_stall(camvid):
    frames = translated_frames(camvid, 3)
    t = Temporal(TemporalSpec("fixed", k=10), HW, live=True)
    t.plan(slot(0, frames[0], t0=0.0))
    s = slot(1, cv2.resize(frames[1], (200, 100)), t0=0.05)
    t.plan(s)
    assert s.plan.key and s.plan.reason == "size"
    s = slot(2, cv2.resize(frames[2], (200, 100)), t0=5.0)
    t.plan(s)
    assert s.plan.key and s.plan.reason == "stall"

    class Broken(MotionEstimator):
        name = "broken"

        def flow(self, prev, cur):
            return np.full((2, *cur.shape), np.nan, np.float32)

    t = Temporal(TemporalSpec("fixed", k=10), HW, motion=Broken())
    p = plans(t, frames)
    assert [q.reason for q in p] == ["first", "flow", "flow"] and t.summary()["warped_frames"] == 0


def test_parse_temporal():
    assert parse_temporal("off") is None and parse_temporal(None) is None
    assert parse_temporal("fixed:3") == TemporalSpec("fixed", k=3) and parse_temporal("AUTO").mode == "auto"
    for bad in ("fixed:0", "fixed:-2", "fixed:x", "bogus", "fixed"):
        with pytest.raises(EdgesegError, match="--temporal"):
            parse_temporal(bad)


@pytest.mark.parametrize("mode", ["fixed:0", "bogus"])
def test_cli_rejects_bad_temporal_in_one_line(tmp_path, mode):
    r = subprocess.run([sys.executable, "-m", "edgeseg", "run", "--model", str(tmp_path / "m.onnx"), "--source",
                        str(tmp_path / "clip.mp4"), "--temporal", mode], check=False, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and f"--temporal '{mode}'" in r.stderr, r.stderr


def test_pipeline_warps_a_translated_clip(camvid, tmp_path):
    """Every-frame labels of a translation are the key frame's labels shifted: the warped labels must equal them
    away from the borders (a conv net is translation-equivariant there), and --save-labels writes every frame."""
    from edgeseg.cli.run import run_stream

    model = export_onnx(conv_net(), tmp_path / "net.onnx", camvid_meta(), torch.zeros(1, 3, *HW))
    (tmp_path / "frames").mkdir()
    for i, f in enumerate(translated_frames(camvid, 9)):  # lossless: the translation stays exact
        cv2.imwrite(str(tmp_path / "frames" / f"{i:02d}.png"), f)
    runs = {}
    # labels are warped by default; with confidence maps written, the logits are (their confidence needs them)
    for name, mode, conf in (("off", "off", False), ("labels", "fixed:3", False), ("logits", "fixed:3", True)):
        labels = tmp_path / name
        kw = {"labels_dir": labels, "size": HW, "status": False, "temporal": mode}
        if conf:
            kw["confidence_dir"] = tmp_path / f"{name}-conf"
        summary, _ = run_stream(str(model), str(tmp_path / "frames"), ["null"], backend="ort-cpu", pipeline_kw=kw)
        runs[name] = (summary, [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(labels.iterdir())])
    off, ref = runs["off"]
    assert off["frames"] == len(ref) == 9 and "temporal" not in off
    m = 12 + SHIFT * 3  # border: the conv's reach plus the largest displacement from a key frame
    for target in ("labels", "logits"):
        tmp, warped = runs[target]
        assert tmp["frames"] == len(warped) == 9
        t = tmp["temporal"]
        assert (t["key_frames"], t["warped_frames"], t["key_reasons"]) == (3, 6, {"first": 1, "schedule": 2})
        assert t["warped"] == target and t["warp_ms"]["p50"] is not None
        json.dumps(tmp)  # the summary stays JSON
        for i in range(9):
            agree = (warped[i][m:-m, m:-m] == ref[i][m:-m, m:-m]).mean()
            assert agree >= (1.0 if i % 3 == 0 else 0.97), (target, i, agree)
    assert len(list((tmp_path / "logits-conf").iterdir())) == 9


def test_live_source_runs_temporal_mode_and_keeps_the_live_policy(camvid, tmp_path):
    """A paced source is live (the camera case): the temporal mode runs through the same pipeline and summary, every
    captured frame is either shown (key or warped) or counted as dropped."""
    from edgeseg.cli.run import run_stream

    model = export_onnx(conv_net(), tmp_path / "net.onnx", camvid_meta(), torch.zeros(1, 3, *HW))
    (tmp_path / "frames").mkdir()
    for i, f in enumerate(translated_frames(camvid, 9)):
        cv2.imwrite(str(tmp_path / "frames" / f"{i:02d}.png"), f)
    summary, _ = run_stream(str(model), str(tmp_path / "frames"), ["null"], backend="ort-cpu", source_kw={"rate": 30.0},
                            pipeline_kw={"size": HW, "status": False, "temporal": "auto", "policy": "auto"})
    t = summary["temporal"]
    assert summary["live"] and summary["paced"]
    assert t["key_frames"] >= 1 and t["key_frames"] + t["warped_frames"] == summary["frames"]
    assert summary["frames"] + summary["dropped"] == 9 and t["key_reasons"]["first"] == 1
