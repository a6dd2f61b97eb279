"""The CPU side of bench/gpu_check.sh: its arithmetic, its grid_sample reference and the CUDA entry points it builds."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from edgeseg.models.layers import flow_warp

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_traffic_and_bandwidth_arithmetic():
    # X 1x128x45x60, FLOW 1x2x90x120, Y 1x128x90x120, fp16
    assert gpu_check.traffic_bytes(1, 128, 45, 60, 90, 120, 2) == 2 * (128 * 45 * 60 + 2 * 90 * 120 + 128 * 90 * 120)
    assert gpu_check.gbs(2_000_000_000, 1000.0) == pytest.approx(2.0)
    assert gpu_check.within_tolerance("fp32", 5e-5) and not gpu_check.within_tolerance("fp32", 5e-4)
    assert gpu_check.within_tolerance("fp16", 1e-2)


def test_markdown_table():
    text = gpu_check.markdown("t", ["a", "b"], [["x", 1.23456], ["y", 2]])
    assert text.splitlines()[2:] == ["| a | b |", "|---|---|", "| x | 1.235 |", "| y | 2 |"]


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 9, 11, 17), (1, 4, 1, 1, 1, 1), (1, 2, 7, 6, 13, 1)])
def test_reference_is_the_flowwarp_definition(shape, align_corners):
    """The GPU check's grid_sample reference equals the model's flow_warp (DESIGN.md), here on the CPU."""
    n, c, h, w, big_h, big_w = shape
    g = torch.Generator().manual_seed(0)
    x, flow = torch.randn(n, c, h, w, generator=g), 3 * torch.randn(n, 2, big_h, big_w, generator=g)
    want = flow_warp(x, flow, align_corners=align_corners)
    assert (gpu_check._reference(torch, x, flow, align_corners) - want).abs().max() <= 1e-5


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_entry_points_compile(tmp_path):
    lib = tmp_path / "libcapi.so"
    cmd = ["nvcc", "-O3", "-std=c++14", "-shared", "-Xcompiler", "-fPIC", "-arch=sm_90", f"-I{ROOT}/kernels/cuda",
           f"-I{ROOT}/kernels/common", str(ROOT / "kernels/cuda/flowwarp_cuda.cu"), str(ROOT / "kernels/cuda/flowwarp_capi.cu"),
           "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True)
    symbols = subprocess.run(["nm", "-D", str(lib)], check=True, capture_output=True, text=True).stdout
    assert "edgeseg_flowwarp_f32" in symbols and "edgeseg_flowwarp_f16" in symbols


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], check=True)
