"""TensorRT building: the version-aware plan, profiles, cache keys and calibration batches (plain functions, run
here); the build itself needs TensorRT and an NVIDIA GPU (marked gpu, skipped with the reason elsewhere)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.data import CAMVID, read_image
from edgeseg.errors import EdgesegError
from edgeseg.export.tensorrt import (
    BuildRequest,
    build_engine,
    cache_key,
    calibration_batches,
    make_profile,
    parse_version,
    plan_build,
)
from edgeseg.export.validate import image_files
from edgeseg.meta import make_meta

META = make_meta("sfnet", CAMVID)
NHWC = make_meta("sfnet", CAMVID, layout="NHWC", color="BGR", dtype="uint8")
DEVICE = {"name": "Orin", "compute_capability": "8.7"}


def test_parse_version():
    assert parse_version("10.13.3.9") == (10, 13, 3) and parse_version("8.2") == (8, 2, 0)
    with pytest.raises(EdgesegError):
        parse_version("ten")


@pytest.mark.parametrize("version", ["10.3.0", "10.13.3", "11.4.1"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_10_and_11_take_precision_from_the_graph(version, precision):
    plan = plan_build(version, precision, has_gridsample=True)
    assert plan.strongly_typed and plan.precision == precision and plan.builder_flags == [] and not plan.calibrator
    assert plan.network_flags == (["STRONGLY_TYPED"] if version.startswith("10.") else [])
    assert plan_build(version, precision, precision).precision == precision
    other = "fp16" if precision != "fp16" else "int8"
    with pytest.raises(EdgesegError, match=f"build from the {other} export"):
        plan_build(version, precision, other)


def test_tensorrt_8_uses_builder_flags_and_a_calibrator():
    fp16 = plan_build("8.6.1", "fp32", "fp16", has_gridsample=True)
    assert not fp16.strongly_typed and fp16.network_flags == ["EXPLICIT_BATCH"] and fp16.builder_flags == ["FP16"]
    int8 = plan_build("8.6.1", "fp32", "int8")
    assert set(int8.builder_flags) == {"INT8", "FP16"} and int8.calibrator  # implicit quantization from fp32
    qdq = plan_build("8.6.1", "int8")
    assert "INT8" in qdq.builder_flags and not qdq.calibrator  # the Q/DQ graph carries its scales
    assert plan_build("8.2.1", "fp32", has_flowwarp=True).workspace_api == "max_workspace_size"
    assert plan_build("8.4.0", "fp32").workspace_api == "memory_pool"
    with pytest.raises(EdgesegError, match="--precision int8"):
        plan_build("8.6.1", "int8", "fp16")


def test_old_tensorrt_without_gridsample_needs_the_plugin_graph():
    with pytest.raises(EdgesegError, match="has no GridSample.*--flowwarp-plugin"):
        plan_build("8.2.1", "fp32", "fp16", has_gridsample=True)
    plan = plan_build("8.2.1", "fp32", "fp16", has_flowwarp=True)  # the plugin graph builds
    assert any("FlowWarp" in w for w in plan.warnings)


def test_dla_and_opset_20_rules():
    assert "GPU_FALLBACK" in plan_build("8.5.2", "fp32", "fp16", dla_core=0).builder_flags
    assert "GPU_FALLBACK" in plan_build("10.3.0", "int8", dla_core=1).builder_flags
    with pytest.raises(EdgesegError, match="DLA runs fp16 and int8 only"):
        plan_build("8.5.2", "fp32", dla_core=0)
    with pytest.raises(EdgesegError, match="no DLA support"):
        plan_build("10.13.3", "fp16", dla_core=0)
    assert any("#4646" in w for w in plan_build("10.13.3", "fp32", has_gridsample=True, opset=20).warnings)
    assert not plan_build("10.13.3", "fp32", has_gridsample=True, opset=17).warnings


def test_profiles():
    p = make_profile(META)
    assert p == {"min": [1, 3, 180, 240], "opt": [1, 3, 360, 480], "max": [1, 3, 720, 960]}
    p = make_profile(NHWC, opt=(256, 320), min_hw=(128, 160), max_hw=(512, 640), batch=(1, 2, 4))
    assert p == {"min": [1, 128, 160, 3], "opt": [2, 256, 320, 3], "max": [4, 512, 640, 3]}
    divisible = make_meta("pspnet", CAMVID, size_divisor=8)
    with pytest.raises(EdgesegError, match="multiples of the model's size divisor 8"):
        make_profile(divisible, opt=(360, 482))
    with pytest.raises(EdgesegError, match="min <= opt <= max"):
        make_profile(META, opt=(360, 480), min_hw=(400, 240))
    with pytest.raises(EdgesegError, match="batch"):
        make_profile(META, batch=(2, 1, 4))


def test_cache_key_changes_with_each_input():
    prof = make_profile(META)
    base = dict(onnx_sha256="a" * 64, trt_version="10.3.0", device=DEVICE, precision="fp16", profile=prof)
    k = cache_key(**base)
    assert k == cache_key(**base) and len(k) == 64
    variants = [dict(base, onnx_sha256="b" * 64), dict(base, trt_version="10.3.1"),
                dict(base, device={"name": "Orin", "compute_capability": "8.9"}), dict(base, device={**DEVICE, "name": "Xavier"}),
                dict(base, precision="int8"), dict(base, profile=make_profile(META, opt=(256, 320))), dict(base, dla_core=0)]
    assert len({cache_key(**v) for v in variants} | {k}) == len(variants) + 1


def test_calibration_batches_from_real_images(camvid):
    images = [read_image(p) for p in image_files(camvid, "train")[:7]]
    prof = make_profile(META, opt=(96, 128), batch=(1, 3, 4))
    batches = list(calibration_batches(images, META, prof["opt"]))
    assert len(batches) == 2 and all(b.shape == (3, 3, 96, 128) and b.dtype == np.float32 for b in batches)
    assert batches[0].flags["C_CONTIGUOUS"]
    assert abs(float(batches[0].mean())) < 2  # normalised
    nhwc = list(calibration_batches(images, NHWC, make_profile(NHWC, opt=(96, 128), batch=(2, 2, 2))["opt"]))
    assert len(nhwc) == 3 and nhwc[0].shape == (2, 96, 128, 3) and nhwc[0].dtype == np.uint8
    # BGR order: the first image's blue channel is the RGB image's third
    import cv2

    rgb = cv2.resize(images[0], (128, 96), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(nhwc[0][0][..., 0], rgb[..., 2])
    with pytest.raises(EdgesegError, match="cannot fill one batch"):
        list(calibration_batches(images[:1], META, make_profile(META, batch=(2, 2, 2))["opt"]))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_without_tensorrt_says_how_to_install(tmp_path, capsys):
    import onnx
    import torch.nn as nn

    from edgeseg.export.graph import set_meta
    from edgeseg.export.torch_export import Deployable, example_input, export_onnx

    class Tiny(nn.Module):
        num_classes = 11

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 11, 1)

        def forward(self, x):
            return self.conv(x)

    model = export_onnx(Deployable(Tiny().eval()), example_input(32, 32, False))
    set_meta(model, META)
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(EdgesegError, match="TensorRT is not installed"):
        build_engine(BuildRequest(onnx=tmp_path / "m.onnx"))
    assert main(["build", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err.strip()
    assert "TensorRT is not installed" in err and "\n" not in err and not (tmp_path / "m.engine").exists()
    assert main(["build", str(tmp_path / "missing.onnx")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err


def _have_gpu_tensorrt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    try:
        from edgeseg.runtime.trt import gpu_info

        gpu_info()
    except Exception as e:  # no driver, no GPU, no cuda-python
        return f"no usable NVIDIA GPU ({e})"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_have_gpu_tensorrt() is not None, reason=str(_have_gpu_tensorrt()))
@pytest.mark.parametrize("key", ["fp32", "fp16", "int8", "fp32-flowwarp"])
def test_engine_matches_onnx_runtime(key, tmp_path, camvid):
    """Build each exported precision (and the FlowWarp plugin graph) and compare with ONNX Runtime on real frames."""
    import torch

    from edgeseg.export import export_model
    from edgeseg.export.validate import OrtPredictor, model_input, pick
    from edgeseg.models import checkpoint, create

    torch.manual_seed(0)
    ckpt = tmp_path / "sfnet.pt"
    checkpoint.save(checkpoint.model_record(create("sfnet", CAMVID.num_classes).eval(), CAMVID), ckpt)
    rep = export_model(ckpt, tmp_path / "out", ("fp32", "fp16", "int8"), data=str(camvid), sizes=((96, 128),),
                       calib_images=4, guard=False, flowwarp_plugin=True, progress=False)
    onnx_path = Path(rep["outputs"][key]["path"])
    info = build_engine(BuildRequest(onnx=onnx_path, out=tmp_path / "m.engine", opt=(96, 128), use_cache=False))
    assert info["precision"] == rep["outputs"][key]["precision"] and (tmp_path / "m.engine.json").is_file()
    from edgeseg.runtime.backends import open_backend

    engine = open_backend(str(tmp_path / "m.engine"), backend="tensorrt")
    meta = info["edgeseg"]
    x = model_input([read_image(p) for p in pick(image_files(camvid, "val"), 1)], (96, 128), meta)
    want = OrtPredictor(Path(rep["outputs"]["fp32"]["path"]))(x)
    got = engine.infer(x)
    assert (got.argmax(1) == want.argmax(1)).mean() >= (0.999 if key.startswith("fp32") else 0.98)


def test_sidecar_is_what_the_runtime_reads(tmp_path):
    from edgeseg.export.tensorrt import sidecar
    from edgeseg.fileio import write_json
    from edgeseg.runtime.trt import engine_meta

    plan = plan_build("10.3.0", "fp16")
    prof = make_profile(META)
    info = sidecar(trt_version="10.3.0", device=DEVICE, plan=plan, profile=prof, onnx_path=tmp_path / "m.fp16.onnx",
                   onnx_sha256="c" * 64, meta=dict(META, precision="fp16"), dla_core=None, workspace_mb=1024,
                   key=cache_key("c" * 64, "10.3.0", DEVICE, "fp16", prof), seconds=12.0)
    assert info["tensorrt"] == "10.3.0" and info["device"] == DEVICE and info["precision"] == "fp16"
    assert info["profiles"] == [prof] and info["source"]["sha256"] == "c" * 64
    write_json(tmp_path / "m.engine.json", info)
    assert engine_meta(tmp_path / "m.engine") == dict(META, precision="fp16")


def test_triton_config_for_an_engine(tmp_path):
    from edgeseg.export.triton import add_model

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan bytes")
    folder = add_model(tmp_path / "repo", "demo.fp16_trt", engine, dict(META, precision="fp16"), engine=True,
                       plugin="/opt/lib/libedgeseg_trt_plugin.so")
    assert folder.name == "demo_fp16_trt" and (folder / "1" / "model.plan").read_bytes() == b"plan bytes"
    config = (folder / "config.pbtxt").read_text()
    assert 'name: "demo_fp16_trt"' in config and 'platform: "tensorrt_plan"' in config
    assert "dims: [ 3, -1, -1 ]" in config and f"dims: [ {CAMVID.num_classes}, -1, -1 ]" in config
    assert "plugins=\"/opt/lib/libedgeseg_trt_plugin.so\"" in config and "max_batch_size: 8" in config
