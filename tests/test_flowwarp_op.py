"""The edgeseg::FlowWarp ONNX Runtime CPU op against F.grid_sample built from DESIGN.md's definition.

The op library is built once per test session with `edgeseg.kernels.cmake.build()` (CMake, seconds; a no-op
when up to date); the tests skip with the build's own reason when this machine cannot build it.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from edgeseg import kernels
from edgeseg.data import normalize
from edgeseg.errors import EdgesegError
from edgeseg.kernels import cmake
from edgeseg.models.layers import flow_warp
from edgeseg.runtime.backends.ort import ort_session

ONNX_TYPE = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


@pytest.fixture(scope="session")
def ort_ops() -> str:
    try:
        summary = cmake.build(log=lambda *_: None)
    except EdgesegError as e:
        pytest.skip(f"kernels not built: {e}")
    if "edgeseg_ort_ops" not in summary["built"]:
        pytest.skip(f"edgeseg_ort_ops not built: {summary['skipped'].get('edgeseg_ort_ops')}")
    return str(kernels.find_library("ort"))


def flowwarp_model(align_corners: int | None = 1, dtype=np.float32, flow_dtype=None) -> bytes:
    attrs = {} if align_corners is None else {"align_corners": align_corners}
    node = helper.make_node("FlowWarp", ["X", "FLOW"], ["Y"], domain="edgeseg", **attrs)
    x = helper.make_tensor_value_info("X", ONNX_TYPE[dtype], None)
    f = helper.make_tensor_value_info("FLOW", ONNX_TYPE[flow_dtype or dtype], None)
    y = helper.make_tensor_value_info("Y", ONNX_TYPE[dtype], None)
    graph = helper.make_graph([node], "flowwarp", [x, f], [y])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("edgeseg", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString()


def session(model: bytes, threads: int = 2) -> ort.InferenceSession:
    return ort_session(model, threads=threads)


def run(x: np.ndarray, flow: np.ndarray, align_corners: int = 1, threads: int = 2) -> np.ndarray:
    return session(flowwarp_model(align_corners, x.dtype.type), threads).run(None, {"X": x, "FLOW": flow})[0]


def reference(x: np.ndarray, flow: np.ndarray, align_corners: bool) -> np.ndarray:
    """DESIGN.md, literally: G = (bx + FLOW_x / W, by + FLOW_y / H), bx = linspace(-1, 1, W) or pixel centres."""
    H, W = flow.shape[-2:]
    if align_corners:
        bx, by = torch.linspace(-1, 1, W), torch.linspace(-1, 1, H)
    else:
        bx, by = (2 * torch.arange(W) + 1) / W - 1, (2 * torch.arange(H) + 1) / H - 1
    f = torch.from_numpy(flow).float()
    grid = torch.stack((bx[None, None, :] + f[:, 0] / W, by[None, :, None] + f[:, 1] / H), dim=-1)
    return F.grid_sample(torch.from_numpy(x).float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=align_corners).numpy()


SHAPES = [  # (N, C, h, w, H, W, flow scale in pixels)
    (1, 4, 6, 8, 12, 16, 2.0),      # the 2x upsampling of SFNet's flow-alignment modules
    (2, 3, 5, 7, 9, 11, 3.0),       # odd sizes, batch of 2
    (1, 5, 13, 17, 1, 1, 4.0),      # 1x1 output
    (1, 2, 1, 1, 6, 5, 0.5),        # 1x1 input
    (1, 3, 20, 24, 7, 9, 2.0),      # input larger than the output
    (3, 2, 4, 6, 10, 14, 40.0),     # large flows, most points outside the image
    (1, 16, 23, 30, 45, 60, 2.0),   # an SFNet stage shape with the work split over threads
]


@pytest.mark.parametrize("align_corners", [1, 0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])))
def test_matches_grid_sample(ort_ops, shape, align_corners):
    N, C, h, w, H, W, scale = shape
    rng = np.random.default_rng(sum(shape[:6]) + align_corners)
    x = rng.standard_normal((N, C, h, w), dtype=np.float32)
    flow = (scale * rng.standard_normal((N, 2, H, W))).astype(np.float32)
    y = run(x, flow, align_corners)
    assert y.shape == (N, C, H, W) and y.dtype == np.float32
    np.testing.assert_allclose(y, reference(x, flow, bool(align_corners)), rtol=0, atol=1e-4)
    layer = flow_warp(torch.from_numpy(x), torch.from_numpy(flow), align_corners=bool(align_corners)).numpy()
    np.testing.assert_allclose(y, layer, rtol=0, atol=1e-4)


def test_zero_flow_with_equal_sizes_is_identity(ort_ops):
    x = np.random.default_rng(1).standard_normal((1, 3, 7, 9), dtype=np.float32)
    np.testing.assert_allclose(run(x, np.zeros((1, 2, 7, 9), np.float32), 1), x, atol=1e-6)


def test_align_corners_defaults_to_1(ort_ops):
    rng = np.random.default_rng(2)
    x, flow = rng.standard_normal((1, 2, 5, 6), dtype=np.float32), rng.standard_normal((1, 2, 9, 11), dtype=np.float32)
    y = session(flowwarp_model(align_corners=None)).run(None, {"X": x, "FLOW": flow})[0]
    np.testing.assert_allclose(y, reference(x, flow, True), atol=1e-4)


def test_real_image_features(ort_ops, camvid):
    """A CamVid frame as the low-resolution feature, warped by a smooth flow to twice its size."""
    path = sorted((camvid / "images" / "val").iterdir())[0]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    x = normalize(cv2.resize(rgb, (60, 45), interpolation=cv2.INTER_AREA))[None]
    yy, xx = np.mgrid[0:90, 0:120].astype(np.float32)
    flow = np.stack([3 * np.sin(yy / 9), 2 * np.cos(xx / 13)])[None].astype(np.float32)
    for align_corners in (1, 0):
        y = run(x, flow, align_corners)
        np.testing.assert_allclose(y, reference(x, flow, bool(align_corners)), rtol=0, atol=1e-4)
    y16 = run(x.astype(np.float16), flow.astype(np.float16))
    ref16 = reference(x.astype(np.float16).astype(np.float32), flow.astype(np.float16).astype(np.float32), True)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16.astype(np.float32), ref16, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("align_corners", [1, 0])
def test_nonfinite_flow_gives_what_torch_gives(ort_ops, align_corners):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 6), dtype=np.float32)
    flow = rng.standard_normal((2, 2, 8, 9)).astype(np.float32)
    flow[0, 0, 0, 0], flow[0, 1, 1, 1], flow[1, 0, 2, 3] = np.nan, np.inf, -np.inf
    flow[1, 1, 4, 4], flow[1, 0, 5, 5], flow[0, 1, 7, 8] = 1e30, -3e9, np.nan
    y = run(x, flow, align_corners)
    ref = reference(x, flow, bool(align_corners))
    assert np.isnan(ref).any() and (ref == 0).any()  # torch: NaN for non-finite points, zeros far outside
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-4, equal_nan=True)


def test_float16_matches_float32_reference(ort_ops):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 9, 10)).astype(np.float16)
    flow = (2 * rng.standard_normal((2, 2, 17, 19))).astype(np.float16)
    y = run(x, flow)
    assert y.dtype == np.float16
    ref = reference(x.astype(np.float32), flow.astype(np.float32), True)
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=1e-3, atol=2e-3)


def test_threads_do_not_change_the_result(ort_ops):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 30, 40), dtype=np.float32)
    flow = (2 * rng.standard_normal((2, 2, 60, 80))).astype(np.float32)
    np.testing.assert_array_equal(run(x, flow, threads=1), run(x, flow, threads=2))


def test_empty_batch_gives_empty_output(ort_ops):
    y = run(np.zeros((0, 3, 4, 5), np.float32), np.zeros((0, 2, 6, 7), np.float32))
    assert y.shape == (0, 3, 6, 7)


@pytest.mark.parametrize("x_shape, flow_shape, message", [
    ((1, 3, 4, 5), (1, 3, 6, 7), "FLOW must be [N,2,H,W]"),
    ((1, 3, 4, 5), (1, 2, 6), "FLOW must be [N,2,H,W]"),
    ((2, 3, 4, 5), (1, 2, 6, 7), "different batch sizes"),
    ((3, 4, 5), (1, 2, 6, 7), "X must be [N,C,h,w]"),
    ((1, 3, 0, 5), (1, 2, 6, 7), "empty spatial size"),
])
def test_bad_shapes_give_a_clear_error(ort_ops, x_shape, flow_shape, message):
    sess = session(flowwarp_model())
    with pytest.raises(Exception, match=f"FlowWarp: .*{message.replace('[', '.').replace(']', '.')}"):
        sess.run(None, {"X": np.zeros(x_shape, np.float32), "FLOW": np.zeros(flow_shape, np.float32)})
    # The session survives the error and still computes.
    ok = sess.run(None, {"X": np.ones((1, 1, 2, 2), np.float32), "FLOW": np.zeros((1, 2, 2, 2), np.float32)})[0]
    np.testing.assert_allclose(ok, 1.0)


def test_mixed_dtypes_are_refused(ort_ops):
    with pytest.raises(Exception, match="FlowWarp"):
        session(flowwarp_model(dtype=np.float32, flow_dtype=np.float16))


def test_bad_align_corners_is_refused(ort_ops):
    with pytest.raises(Exception, match="align_corners must be 0 or 1"):
        session(flowwarp_model(align_corners=2))


def test_registered_whenever_built(ort_ops):
    """As mmdeploy does: the library goes on every session once built; a model without the op does not notice."""
    assert kernels.register_ort_ops(ort.SessionOptions()) is True
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "g",
                                                [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
                                                [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    out = ort_session(plain).run(None, {"a": np.array([-1.0, 2.0], np.float32)})[0]
    assert out.tolist() == [0.0, 2.0]


def test_missing_library_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "source_dir", lambda: None)
    assert kernels.register_ort_ops(ort.SessionOptions()) is False
    with pytest.raises(EdgesegError, match=r"uses the edgeseg::FlowWarp op, which is not built.*edgeseg kernels build"):
        ort_session(flowwarp_model())


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(EdgesegError, match="bad.onnx: ONNX Runtime cannot load the model"):
        ort_session(bad)
    with pytest.raises(EdgesegError, match="missing.onnx: ONNX Runtime cannot load the model"):
        ort_session(tmp_path / "missing.onnx")


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export", "ignore:The feature will be removed")
def test_mask2former_deformable_sampling_runs_through_the_flowwarp_op(ort_ops):
    """sampler=flowwarp: the same model as GridSample sampling (same weights), and after the FlowWarp pass every
    deformable sampler is an edgeseg::FlowWarp node that ONNX Runtime runs to PyTorch's output at two sizes."""
    import io

    import onnx

    from edgeseg.export.flowwarp import count_flowwarp, fuse_flowwarp
    from edgeseg.models import create

    torch.manual_seed(0)
    small = dict(dim=32, queries=10, layers=3, enc_layers=2)
    grid_model = create("mask2former", 11, **small).eval()
    flow_model = create("mask2former", 11, sampler="flowwarp", **small).eval()
    flow_model.load_state_dict(grid_model.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(flow_model(x), grid_model(x), rtol=1e-4, atol=1e-4)
    buf = io.BytesIO()
    torch.onnx.export(flow_model, (x,), buf, dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {2: "H", 3: "W"}, "logits": {2: "H", 3: "W"}})
    fused, info = fuse_flowwarp(onnx.load_from_string(buf.getvalue()), keep_others=True)
    assert count_flowwarp(fused) == 2 * 3 and not info["kept"]  # encoder layers x levels
    assert not [n for n in fused.graph.node if n.op_type == "GridSample"]
    sess = session(fused.SerializeToString())
    for hw in ((96, 128), (81, 113)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            ref = grid_model(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"images": x.numpy()})[0], ref, rtol=1e-3, atol=1e-3)
