"""The runtime's parts against references: backends vs PyTorch, preprocessing vs data.normalize, argmax and
softmax vs numpy, rendering vs the palette, sources and sinks on real files, TensorRT's plain logic."""
from __future__ import annotations

import enum
import json
import time

import cv2
import numpy as np
import pytest
import torch
from runtime_helpers import SIZE, Argmax, Fused, camvid_frames, camvid_meta, conv_net, export_onnx, sfnet, write_video

from edgeseg.data import CAMVID, normalize
from edgeseg.errors import EdgesegError
from edgeseg.runtime import trt
from edgeseg.runtime.backends import open_backend
from edgeseg.runtime.postprocess import Postprocessor, upsample
from edgeseg.runtime.preprocess import Preprocessor, model_size
from edgeseg.runtime.render import Renderer, palette_lut
from edgeseg.runtime.sinks import DisplaySink, ImageDirSink, Sink, VideoSink, gui_available, open_sink
from edgeseg.runtime.sources import open_source, parse_source, read_video_frames


# ---------------------------------------------------------------- models
@pytest.fixture(scope="module")
def sfnet_model(tmp_path_factory):
    net = sfnet()
    path = export_onnx(net, tmp_path_factory.mktemp("m") / "sfnet.onnx", camvid_meta(), torch.zeros(1, 3, *SIZE))
    return path, net


@pytest.fixture(scope="module")
def frames(camvid):
    return camvid_frames(camvid, 4)


def test_ort_backend_matches_torch_and_writes_in_place(sfnet_model):
    path, net = sfnet_model
    x = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        ref = net(x).numpy()
    with open_backend(path, "ort-cpu") as be:
        assert be.name == "ort-cpu" and be.meta["classes"] == list(CAMVID.names) and be.fixed_hw is None
        assert be.output_shape((2, 3, 96, 128)) == (2, 11, 96, 128)
        out = np.empty((2, 11, 96, 128), np.float32)
        y = be.infer(x.numpy(), out=out)
        assert y is out
        np.testing.assert_allclose(out, ref, atol=2e-4, rtol=1e-4)
        np.testing.assert_array_equal(be.infer(x.numpy()), out)  # a new array, same numbers
        y64 = be.infer(x[:1, :, :64, :96].numpy())  # another size in the same session
        with torch.inference_mode():
            np.testing.assert_allclose(y64, net(x[:1, :, :64, :96]).numpy(), atol=2e-4, rtol=1e-4)


def test_backend_rejects_input_that_does_not_fit(tmp_path):
    meta = camvid_meta()
    path = export_onnx(conv_net(), tmp_path / "fixed.onnx", meta, torch.zeros(1, 3, 32, 48), dynamic=False)
    with open_backend(path) as be:
        assert be.fixed_hw == (32, 48) and be.preferred_hw == (32, 48)
        be.infer(np.zeros((1, 3, 32, 48), np.float32))
        for bad in (np.zeros((1, 3, 32, 64), np.float32), np.zeros((1, 3, 32, 48), np.float64), np.zeros((1, 4, 32, 48), np.float32)):
            with pytest.raises(EdgesegError, match=r"fixed\.onnx: input .* does not fit the model input float32 \[1,3,32,48\]"):
                be.infer(bad)


def test_open_backend_errors_name_the_problem(tmp_path, sfnet_model):
    with pytest.raises(EdgesegError, match="missing.onnx: model file not found"):
        open_backend(tmp_path / "missing.onnx")
    (tmp_path / "m.xyz").write_bytes(b"x")
    with pytest.raises(EdgesegError, match=r"unknown model format '\.xyz'.*edgeseg export"):
        open_backend(tmp_path / "m.xyz")
    (tmp_path / "m.pt").write_bytes(b"x")  # checkpoints open with the torch backend
    with pytest.raises(EdgesegError, match=r"m.pt: not a readable edgeseg checkpoint"):
        open_backend(tmp_path / "m.pt")
    with pytest.raises(EdgesegError, match=r"--backend ort-cpu runs ONNX files; export the checkpoint"):
        open_backend(tmp_path / "m.pt", "ort-cpu")
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf" * 10)
    with pytest.raises(EdgesegError, match="garbage.onnx"):
        open_backend(tmp_path / "garbage.onnx")
    with pytest.raises(EdgesegError, match="unknown backend 'gpu'"):
        open_backend(sfnet_model[0], "gpu")
    with pytest.raises(EdgesegError, match="--backend tensorrt runs engines; build one"):
        open_backend(sfnet_model[0], "tensorrt")
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(EdgesegError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
            open_backend(sfnet_model[0], "ort-cuda")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(EdgesegError, match="a TensorRT engine runs with --backend tensorrt"):
        open_backend(engine, "ort-cpu")


def test_model_without_metadata_or_with_bad_metadata(tmp_path):
    import onnx

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(conv_net(), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["logits"])
    with pytest.raises(EdgesegError, match=r"plain.onnx: no edgeseg metadata.*edgeseg export"):
        open_backend(plain)
    proto = onnx.load(str(plain))
    meta = camvid_meta(dtype="uint8", layout="NHWC")  # says uint8 NHWC, the graph takes float32 NCHW
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgeseg", json.dumps(meta)
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    with pytest.raises(EdgesegError, match="metadata says input uint8 but the graph takes float32"):
        open_backend(tmp_path / "lying.onnx")


def test_flowwarp_model_runs_with_the_custom_op_library_or_says_how_to_build_it(tmp_path):
    """A graph with the edgeseg FlowWarp node: registered from edgeseg.kernels when built, else one clear line."""
    import onnx
    from onnx import TensorProto, helper

    from edgeseg import kernels
    from edgeseg.models.layers import flow_warp

    nodes = [helper.make_node("Conv", ["images", "w"], ["feat"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["feat"], ["coarse"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["images", "wf"], ["flow"], pads=[1, 1, 1, 1]),
             helper.make_node("FlowWarp", ["coarse", "flow"], ["logits"], domain="edgeseg", align_corners=1)]
    rng = np.random.default_rng(0)
    w, wf = rng.normal(size=(11, 3, 3, 3)).astype(np.float32), rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(nodes, "fw", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 24])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 11, 16, 24])],
                              [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(wf, "wf")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgeseg", 1)], ir_version=8)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgeseg", json.dumps(camvid_meta())
    path = tmp_path / "fw.onnx"
    onnx.save(proto, str(path))
    x = rng.normal(size=(1, 3, 16, 24)).astype(np.float32)
    if kernels.find_library("ort") is None:
        with pytest.raises(EdgesegError, match=r"fw.onnx uses the edgeseg::FlowWarp op.*edgeseg kernels build"):
            open_backend(path)
        return
    with open_backend(path) as be:
        y = be.infer(x)
    xt = torch.from_numpy(x)
    feat = torch.nn.functional.conv2d(xt, torch.from_numpy(w), padding=1)
    ref = flow_warp(torch.nn.functional.max_pool2d(feat, 2), torch.nn.functional.conv2d(xt, torch.from_numpy(wf), padding=1))
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-4)


# ---------------------------------------------------------------- preprocess
def _reference_input(frame_bgr, size):
    resized = frame_bgr if frame_bgr.shape[:2] == size else cv2.resize(frame_bgr, size[::-1], interpolation=cv2.INTER_LINEAR)
    return normalize(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))[None]


@pytest.mark.parametrize("size", [SIZE, (32, 64), (96, 160)])
def test_preprocess_is_bit_identical_to_the_training_transform(frames, size):
    pre = Preprocessor(camvid_meta(), size)
    out = pre.new_input()
    for f in frames:
        assert pre(f, out=out) is out
        np.testing.assert_array_equal(out, _reference_input(f, size))


def test_preprocess_layouts_and_dtypes(frames):
    f = frames[0]
    ref = _reference_input(f, (32, 48))
    small = cv2.resize(f, (48, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(Preprocessor(camvid_meta(layout="NHWC"), (32, 48))(f), ref.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(Preprocessor(camvid_meta(dtype="float16"), (32, 48))(f), ref.astype(np.float16))
    np.testing.assert_array_equal(Preprocessor(camvid_meta(dtype="uint8", layout="NHWC", color="BGR"), (32, 48))(f), small[None])
    np.testing.assert_array_equal(Preprocessor(camvid_meta(dtype="uint8", layout="NHWC", color="RGB"), (32, 48))(f), small[None, ..., ::-1])
    np.testing.assert_array_equal(Preprocessor(camvid_meta(dtype="uint8"), (32, 48))(f), small[..., ::-1].transpose(2, 0, 1)[None])
    rgb_frames = Preprocessor(camvid_meta(), (32, 48), frame_color="RGB")  # e.g. data.read_image's output
    np.testing.assert_array_equal(rgb_frames(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)), ref)
    batch = Preprocessor(camvid_meta(), (32, 48)).new_input(2)
    Preprocessor(camvid_meta(), (32, 48))(f, out=batch, index=1)
    np.testing.assert_array_equal(batch[1:], ref)
    with pytest.raises(EdgesegError, match="expected a uint8 HxWx3"):
        Preprocessor(camvid_meta(), (32, 48))(f[..., 0])


def test_model_size():
    meta = camvid_meta(size_divisor=32)
    assert model_size((360, 480), meta) == (352, 480)
    assert model_size((10, 20), meta) == (32, 32)
    assert model_size((360, 480), camvid_meta()) == (360, 480)
    assert model_size((360, 480), meta, fixed=(256, 256)) == (256, 256)
    assert model_size((360, 480), meta, requested=(256, 320)) == (256, 320)
    with pytest.raises(EdgesegError, match="--size 250x320: the model needs multiples of 32, e.g. 256x320"):
        model_size((360, 480), meta, requested=(250, 320))
    with pytest.raises(EdgesegError, match="this model only takes 256x256"):
        model_size((360, 480), meta, fixed=(256, 256), requested=(128, 128))
    trained = camvid_meta(size_divisor=8, train_size=[360, 480])  # the frame scaled down to the training size
    assert model_size((576, 768), trained) == (360, 480)
    assert model_size((720, 1280), trained) == (272, 480)  # aspect kept, rounded to the divisor
    assert model_size((240, 320), trained) == (240, 320)  # never upscaled
    assert model_size((576, 768), trained, requested=(576, 768)) == (576, 768)


def test_fused_and_argmax_models_match_torch_through_the_runtime(tmp_path, frames):
    net = conv_net()
    fused = export_onnx(Fused(net), tmp_path / "fused.onnx", camvid_meta(dtype="uint8", layout="NHWC", color="BGR"),
                        torch.zeros(1, *SIZE, 3, dtype=torch.uint8))
    argmax = export_onnx(Argmax(net), tmp_path / "argmax.onnx", camvid_meta(head="argmax"), torch.zeros(1, 3, *SIZE),
                         output_name="labels")
    ref_x = _reference_input(frames[0], SIZE)
    with torch.inference_mode():
        ref = net(torch.from_numpy(ref_x)).numpy()
    with open_backend(fused) as be:
        x = Preprocessor(be.meta, SIZE)(frames[0])
        assert x.dtype == np.uint8 and x.shape == (1, *SIZE, 3)
        np.testing.assert_allclose(be.infer(x), ref, atol=1e-4)
    with open_backend(argmax) as be:
        labels = be.infer(Preprocessor(be.meta, SIZE)(frames[0]))
        post = Postprocessor("argmax", 11, SIZE)
        np.testing.assert_array_equal(post.labels(labels), ref[0].argmax(0))


# ---------------------------------------------------------------- postprocess
def test_argmax_matches_numpy_including_ties_and_half_precision():
    rng = np.random.default_rng(1)
    logits = rng.integers(-3, 3, size=(1, 11, 37, 53)).astype(np.float32)  # many exact ties
    post = Postprocessor("logits", 11, (37, 53))
    np.testing.assert_array_equal(post.labels(logits), logits[0].argmax(0))
    np.testing.assert_array_equal(post.labels(logits.astype(np.float16)), logits[0].argmax(0))
    many = rng.normal(size=(1, 300, 9, 7)).astype(np.float32)
    labels = Postprocessor("logits", 300, (9, 7)).labels(many)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, many[0].argmax(0))


def test_confidence_is_the_max_softmax_probability():
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=(1, 11, 20, 30)) * 4).astype(np.float32)
    post = Postprocessor("logits", 11, (20, 30))
    post.labels(logits)
    p = np.exp(logits[0] - logits[0].max(0))
    ref = 255 * (p / p.sum(0)).max(0)
    assert np.abs(post.confidence(logits).astype(np.float64) - ref).max() <= 1.0


def test_upsample_nearest_and_linear():
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    up = upsample(labels, (6, 8))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(labels, 2, 0), 2, 1))
    out = np.empty((6, 8), np.uint8)
    assert upsample(labels, (6, 8), out=out) is out
    np.testing.assert_array_equal(upsample(labels, (3, 4)), labels)
    conf = np.array([[0, 255]], np.uint8)
    assert list(upsample(conf, (1, 4), nearest=False)[0]) == sorted(upsample(conf, (1, 4), nearest=False)[0])


# ---------------------------------------------------------------- render
def test_colours_overlay_mask_and_both(frames):
    frame = frames[0]
    labels = (np.arange(SIZE[0] * SIZE[1]) % 11).astype(np.uint8).reshape(SIZE)
    colours = np.asarray(CAMVID.palette, np.uint8)[labels][..., ::-1]
    r = Renderer(CAMVID, "mask", legend=False)
    np.testing.assert_array_equal(r(frame, labels), colours)
    np.testing.assert_array_equal(palette_lut(CAMVID)[0, :11], np.asarray(CAMVID.palette)[:, ::-1])
    np.testing.assert_array_equal(Renderer(CAMVID, "overlay", alpha=0.0, legend=False)(frame, labels), frame)
    np.testing.assert_array_equal(Renderer(CAMVID, "overlay", alpha=1.0, legend=False)(frame, labels), colours)
    half = Renderer(CAMVID, "overlay", alpha=0.5, legend=False)(frame, labels)
    assert np.abs(half.astype(int) - (frame.astype(int) + colours) / 2).max() <= 1
    both = Renderer(CAMVID, "both", alpha=0.5, legend=False)(frame, labels)
    assert both.shape == (SIZE[0], 2 * SIZE[1], 3)
    np.testing.assert_array_equal(both[:, SIZE[1]:], colours)
    np.testing.assert_array_equal(both[:, :SIZE[1]], half)
    with pytest.raises(EdgesegError, match="--vis 'x'"):
        Renderer(CAMVID, "x")
    with pytest.raises(EdgesegError, match="--alpha 2"):
        Renderer(CAMVID, alpha=2)


def test_legend_and_caption_are_drawn_where_expected():
    frame = np.zeros((240, 320, 3), np.uint8)
    labels = np.full((240, 320), 3, np.uint8)  # all road
    plain = Renderer(CAMVID, "mask", legend=False)(frame, labels).copy()
    with_legend = Renderer(CAMVID, "mask", legend=True)(frame, labels, caption="12.0 FPS").copy()
    diff = np.any(with_legend != plain, axis=2)
    ys, xs = np.nonzero(diff[:, 160:])
    assert ys.max() < 30 and xs.min() > 60  # one legend row, top right
    assert diff[:20, :80].any()  # the caption, top left
    assert not diff[60:, :].any()


# ---------------------------------------------------------------- sources
def test_parse_source_uris(tmp_path, frames):
    assert (s := parse_source("0")).kind == "camera" and s.target == 0 and s.live
    assert parse_source("v4l2:///dev/video2").target == "/dev/video2"
    csi = parse_source("csi://1", 640, 480, 15)
    assert csi.kind == "csi" and "sensor-id=1" in csi.target and "width=(int)640" in csi.target and "15/1" in csi.target
    assert parse_source("rtsp://cam.local:554/stream").kind == "network"
    assert parse_source("videotestsrc ! appsink").kind == "gstreamer"
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), f)
    (tmp_path / "notes.txt").write_text("x")
    folder = parse_source(str(tmp_path))
    assert folder.kind == "images" and [p.name for p in folder.target] == [f"{i:02d}.png" for i in range(4)] and not folder.live
    assert [p.name for p in parse_source(str(tmp_path / "0[12].png")).target] == ["01.png", "02.png"]
    assert parse_source(f"file://{tmp_path / '00.png'}").kind == "images"
    with pytest.raises(EdgesegError, match="no such file or folder.*check --source"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(EdgesegError, match="matches no images"):
        parse_source(str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgesegError, match="holds no images"):
        parse_source(str(tmp_path / "empty"))
    with pytest.raises(EdgesegError, match="csi://N"):
        parse_source("csi://left")


def test_video_source_decodes_into_the_given_buffer_loops_and_resizes(tmp_path, frames):
    video = write_video(tmp_path / "v.avi", frames)
    with open_source(str(video)) as src:
        assert not src.live and src.fps == pytest.approx(10)
        img, name = src.read()
        buf = img.copy()
        img2, _ = src.read(buf)
        assert img2 is buf and name is None
        assert src.read() is not None and src.read() is not None and src.read() is None
        assert src.end_reason == "end of file" and src.frames == 4 and src.corrupt == 0
    with open_source(str(video), loop=1, width=48) as src:
        got = [src.read() for _ in range(9)]
        assert all(g[0].shape == (32, 48, 3) for g in got[:8]) and got[8] is None


def test_rate_paces_a_file_like_a_camera(tmp_path, frames):
    video = write_video(tmp_path / "v.avi", frames)
    with open_source(str(video), rate=40) as src:
        t = time.perf_counter()
        while src.read() is not None:
            pass
        assert time.perf_counter() - t >= 3 / 40


def test_corrupt_and_truncated_files(tmp_path, frames):
    video = write_video(tmp_path / "v.avi", frames * 3)
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 3) if data[i:i + 3] == b"\xff\xd8\xff"]  # JPEG frames in the AVI
    bad = bytearray(data)
    bad[starts[5]:starts[5] + 400] = bytes(400)  # destroy frame 5
    (tmp_path / "corrupt.avi").write_bytes(bad)
    with open_source(str(tmp_path / "corrupt.avi")) as src:
        n = sum(1 for _ in iter(src.read, None))
        assert (n, src.corrupt, src.end_reason) == (11, 1, "end of file")
    (tmp_path / "cut.avi").write_bytes(data[: starts[7] + 100])
    with open_source(str(tmp_path / "cut.avi")) as src:
        n = sum(1 for _ in iter(src.read, None))
        assert n == 7 and src.corrupt == 0 and src.end_reason == "end of file after 7 of 12 frames (truncated?)"
    mp4 = write_video(tmp_path / "v.mp4", frames)
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # no index: unplayable
    with pytest.raises(EdgesegError, match="cut.mp4: OpenCV cannot open this video"):
        open_source(str(tmp_path / "cut.mp4"))
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(EdgesegError, match="text.mp4: OpenCV cannot open this video"):
        open_source(str(tmp_path / "text.mp4"))


def test_image_folder_skips_and_counts_unreadable_images(tmp_path, frames):
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i}.png"), f)
    (tmp_path / "2.png").write_bytes(b"\x89PNG garbage")
    with open_source(str(tmp_path)) as src:
        names = [name for _, name in iter(src.read, None)]
    assert names == ["0", "1", "3"] and src.corrupt == 1 and src.end_reason == "end of images"


def test_unreachable_stream_fails_after_retries_without_hanging():
    """A TCP port that accepts and never answers: the open timeout and the retry limit end it."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    try:
        t = time.perf_counter()
        with pytest.raises(EdgesegError, match=r"rtsp://127.0.0.1:\d+/cam: cannot open the source \(1 retries\)"):
            open_source(f"rtsp://127.0.0.1:{port}/cam", max_retries=1, timeout_s=1.0)
        assert time.perf_counter() - t < 20
    finally:
        server.close()


# ---------------------------------------------------------------- sinks
def test_video_sink_appears_only_when_finalised(tmp_path, frames):
    sink = open_sink(str(tmp_path / "out" / "v.mp4"), fps=10)
    assert isinstance(sink, VideoSink)
    for i, f in enumerate(frames):
        sink.write(f, i)
    sink.write(cv2.resize(frames[0], (40, 30)), 4)  # another size: resized to the first's
    assert not (tmp_path / "out" / "v.mp4").exists() and sink.tmp.exists()
    sink.close()
    assert not sink.tmp.exists()
    got = read_video_frames(tmp_path / "out" / "v.mp4")
    assert len(got) == 5 and got[0].shape == frames[0].shape
    empty = open_sink(str(tmp_path / "empty.mp4"))
    empty.close()
    assert not any(tmp_path.glob("*empty*"))
    with pytest.raises(EdgesegError, match="cannot write H264 video to a .mp4 file here"):
        VideoSink(tmp_path / "x.mp4", 10, "H264").write(frames[0], 0)


def test_image_sinks_and_uris(tmp_path, frames):
    sink = open_sink(str(tmp_path / "frames") + "/")
    assert isinstance(sink, ImageDirSink) and sink.suffix == ".jpg"
    sink.write(frames[0], 3)
    sink.write(frames[1], 4, "0016E5_07961")
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["000003.jpg", "0016E5_07961.jpg"]
    png = open_sink(str(tmp_path / "labels" / "*.png"))
    png.write(np.full((4, 5), 7, np.uint8), 0)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "labels" / "000000.png"), cv2.IMREAD_UNCHANGED), np.full((4, 5), 7))
    assert type(open_sink("null")) is Sink
    assert isinstance(open_sink(str(tmp_path / "x.avi")), VideoSink)
    with pytest.raises(EdgesegError, match="unknown output"):
        open_sink(str(tmp_path / "x.xyz"))
    if not gui_available():
        with pytest.raises(EdgesegError, match="display://: .*--sink out.mp4"):
            open_sink("display://")
    else:
        assert isinstance(open_sink("display://"), DisplaySink)


# ---------------------------------------------------------------- TensorRT logic
def test_trt_dtype_mapping():
    class DataType(enum.Enum):  # the shape of tensorrt.DataType members
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3
        BOOL = 4
        UINT8 = 5
        FP8 = 6
        INT64 = 7

    assert trt.numpy_dtype(DataType.FLOAT) == np.float32 and trt.numpy_dtype(DataType.HALF) == np.float16
    assert trt.numpy_dtype(DataType.INT64) == np.int64 and trt.numpy_dtype("DataType.UINT8") == np.uint8
    with pytest.raises(EdgesegError, match="FP8 has no numpy equivalent"):
        trt.numpy_dtype(DataType.FP8)


def test_trt_profile_selection_and_opt_size():
    profiles = [((1, 3, 128, 128), (1, 3, 256, 256), (1, 3, 512, 512)), ((1, 3, 512, 512), (1, 3, 720, 1280), (1, 3, 1088, 1920))]
    assert trt.select_profile(profiles, (1, 3, 360, 480)) == 0
    assert trt.select_profile(profiles, (1, 3, 720, 1280)) == 1
    assert trt.select_profile(profiles, (1, 3, 512, 512)) == 0
    with pytest.raises(EdgesegError, match=r"outside every optimisation profile.*\[1, 3, 128, 128\]\.\.\[1, 3, 512, 512\]"):
        trt.select_profile(profiles, (1, 3, 64, 64))
    with pytest.raises(EdgesegError, match="outside"):
        trt.select_profile(profiles, (2, 3, 256, 256))
    assert trt.opt_hw(profiles, "NCHW") == (256, 256)
    assert trt.opt_hw([((1, 64, 64, 3), (1, 360, 480, 3), (1, 720, 960, 3))], "NHWC") == (360, 480)
    assert trt.opt_hw([], "NCHW") is None


def test_cuda_error_check():
    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInsufficientDriver = 35

    assert trt.check_cuda((cudaError_t.cudaSuccess, 1234)) == 1234
    assert trt.check_cuda((cudaError_t.cudaSuccess,)) is None
    assert trt.check_cuda((cudaError_t.cudaSuccess, 1, 2)) == (1, 2)
    with pytest.raises(EdgesegError, match="cudaErrorInsufficientDriver"):
        trt.check_cuda((cudaError_t.cudaErrorInsufficientDriver, 0))


def test_engine_metadata_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    with pytest.raises(EdgesegError, match=r"m.engine.json: the engine's metadata sidecar is missing"):
        trt.engine_meta(engine)
    meta = camvid_meta(precision="int8")
    trt.sidecar_path(engine).write_text(json.dumps(meta))
    assert trt.engine_meta(engine) == meta
    trt.sidecar_path(engine).write_text(json.dumps({"edgeseg": meta, "tensorrt": "10.3"}))
    assert trt.engine_meta(engine) == meta
    trt.sidecar_path(engine).write_text("{broken")
    with pytest.raises(EdgesegError, match="not valid JSON"):
        trt.engine_meta(engine)


def test_engine_without_tensorrt_says_how_to_install(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    trt.sidecar_path(engine).write_text(json.dumps(camvid_meta()))
    with pytest.raises(EdgesegError, match=r"TensorRT is not installed: .*JetPack.*edgeseg\[trt\]"):
        open_backend(engine)


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnx_runtime(sfnet_model, tmp_path):
    """Build an engine with a dynamic-shape profile, run it through the runtime, compare with ONNX Runtime."""
    tensorrt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU)")
    path, _ = sfnet_model
    logger = tensorrt.Logger(tensorrt.Logger.WARNING)
    builder = tensorrt.Builder(logger)
    network = builder.create_network(0)
    parser = tensorrt.OnnxParser(network, logger)
    assert parser.parse(path.read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, 32, 32), (1, 3, *SIZE), (1, 3, 128, 160))
    config.add_optimization_profile(profile)
    engine = tmp_path / "sfnet.engine"
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))
    with open_backend(path) as be:
        trt.sidecar_path(engine).write_text(json.dumps(be.meta))
        x = np.random.default_rng(0).normal(size=(1, 3, 96, 128)).astype(np.float32)
        ref = be.infer(x)
    with open_backend(engine) as be:
        assert be.name == "tensorrt" and be.preferred_hw == SIZE
        np.testing.assert_allclose(be.infer(x), ref, atol=1e-2)
