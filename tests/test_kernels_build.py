"""The CMake build of kernels/: what it builds here, what it skips and why, and `edgeseg kernels`."""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg import kernels
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.kernels import cmake


@pytest.fixture(scope="module")
def summary() -> dict:
    try:
        return cmake.build(log=lambda *_: None)
    except EdgesegError as e:
        pytest.skip(f"kernels not built: {e}")


def test_every_target_is_built_or_skipped_with_a_reason(summary):
    targets = {"edgeseg_ort_ops", "edgeseg_flowwarp_cuda", "edgeseg_trt_plugin"}
    assert set(summary["built"]) | set(summary["skipped"]) == targets
    assert not set(summary["built"]) & set(summary["skipped"])
    assert all(summary["skipped"].values())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler (nvcc) on PATH")
def test_cuda_kernel_compiles_for_the_configured_architectures(summary):
    assert "edgeseg_flowwarp_cuda" in summary["built"]
    lib = Path(cmake.info()["cuda"])
    symbols = subprocess.run(["nm", "-C", str(lib)], capture_output=True, text=True, check=True).stdout
    for dtype in ("float", "__half"):
        assert f"T edgeseg::flowwarp_cuda({dtype} const*" in symbols
    # One device ELF (e_machine EM_CUDA = 190) per configured architecture inside the fat binary.
    cache = (lib.parent.parent / "CMakeCache.txt").read_text()
    archs = re.search(r"^CMAKE_CUDA_ARCHITECTURES:STRING=(.*)$", cache, re.M).group(1).split(";")
    data = lib.read_bytes()
    cubins = [m.start() for m in re.finditer(rb"\x7fELF", data) if struct.unpack_from("<H", data, m.start() + 18)[0] == 190]
    assert len(cubins) == len(archs), f"{len(cubins)} device images for architectures {archs}"


def test_tensorrt_plugin_is_skipped_without_tensorrt(summary):
    if "edgeseg_trt_plugin" in summary["built"]:
        assert kernels.find_library("trt") is not None
    else:
        assert "TensorRT" in summary["skipped"]["edgeseg_trt_plugin"] or "CUDA" in summary["skipped"]["edgeseg_trt_plugin"]
        with pytest.raises(EdgesegError, match="edgeseg kernels build"):
            kernels.load_trt_plugins()


def test_kernels_info_cli(summary, capsys):
    assert main(["kernels", "info", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["ort"] == (str(kernels.find_library("ort")) if "edgeseg_ort_ops" in summary["built"] else None)
    assert found["last_build"] == summary
    assert main(["kernels", "info"]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime CPU op" in out and "TensorRT plugin" in out


def test_build_without_sources_says_so(monkeypatch):
    monkeypatch.setattr(kernels, "source_dir", lambda: None)
    with pytest.raises(EdgesegError, match="source checkout"):
        cmake.build()


def test_kernels_module_is_torch_free():
    code = "import sys, edgeseg.kernels, edgeseg.cli.kernels; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
