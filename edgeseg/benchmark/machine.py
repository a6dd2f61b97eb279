"""What the numbers were measured on (CPU, GPU, driver, library versions) and the machine's practical peak.

The peak is the best of a few large matrix products (fp32, and int8 through torch._int_mm where it exists,
fp16 on a GPU): the ceiling a network's Conv/MatMul layers could reach, against which each row's achieved
GFLOP/s is put (a roofline's compute roof, measured rather than read off a data sheet).
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata

LIBRARIES = {"numpy": "numpy", "torch": "torch", "onnxruntime": "onnxruntime", "onnx": "onnx",
             "opencv": "opencv-python-headless", "tensorrt": "tensorrt", "edgeseg": "edgeseg"}


def _version(dist: str) -> str | None:
    for name in (dist, dist.replace("-headless", ""), "onnxruntime-gpu" if dist == "onnxruntime" else dist):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _tensorrt_version() -> str | None:
    """TensorRT from pip or from the system (JetPack's python3-libnvinfer has no pip metadata)."""
    version = _version("tensorrt")
    if version:
        return version
    try:
        import tensorrt
    except ImportError:
        return None
    return getattr(tensorrt, "__version__", "unknown")


def cpu_info() -> dict:
    model, cores = platform.processor() or platform.machine(), set()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            block: dict[str, str] = {}
            for line in f.read().splitlines() + [""]:
                if not line.strip():
                    if block:
                        model = block.get("model name", model)
                        cores.add((block.get("physical id"), block.get("core id")))
                        flags = block.get("flags", "").split() or flags
                    block = {}
                    continue
                key, _, value = line.partition(":")
                block[key.strip()] = value.strip()
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "asimd", "sve") if f in flags]
    return {"model": model, "logical_cores": os.cpu_count(), "physical_cores": len(cores) or None, "simd": simd}


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpu_info() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, driver, mem = (s.strip() for s in line.split(","))
        gpus.append({"name": name, "driver": driver, "memory": mem})
    return gpus


def machine_info() -> dict:
    versions = {k: _version(v) for k, v in LIBRARIES.items() if k != "tensorrt"}
    versions["tensorrt"] = _tensorrt_version()
    info = {"cpu": cpu_info(), "memory_gib": memory_gib(), "gpus": gpu_info(), "os": platform.platform(),
            "python": platform.python_version(), "libraries": versions}
    try:
        import onnxruntime as ort
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


def _best_rate(fn, ops: float, reps: int) -> float:
    fn()  # warm-up: thread pools, packing buffers
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return ops / best / 1e9


def measure_peaks(threads: int | None, n: int = 4096, reps: int = 3) -> dict:
    """{"cpu": {"fp32": GFLOP/s, "int8": GOP/s}, "cuda": {"fp32", "fp16", "int8"}} measured with torch (and numpy)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    ops = 2.0 * n ** 3
    peaks: dict[str, dict[str, float]] = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        reps_dev = reps * (10 if dev == "cuda" else 1)
        out = {}
        dtypes = {"fp32": torch.float32} | ({"fp16": torch.float16} if dev == "cuda" else {})
        for name, dt in dtypes.items():
            a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
            out[name] = _best_rate(lambda: (torch.mm(a, b), sync()), ops, reps_dev)
        if dev == "cpu":  # numpy's BLAS is sometimes the faster of the two: the roof is the best seen
            a, b = a.numpy(), b.numpy()
            out["fp32"] = max(out["fp32"], _best_rate(lambda: a @ b, ops, reps))
        a8 = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=dev)
        b8 = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=dev)
        try:
            out["int8"] = _best_rate(lambda: (torch._int_mm(a8, b8), sync()), ops, reps_dev)
        except (RuntimeError, AttributeError):  # no int8 GEMM for this device in this torch
            pass
        peaks[dev] = {k: round(v, 1) for k, v in out.items()}
    return peaks


def best_peaks(*measured: dict) -> dict:
    """The highest of several peak measurements (other work on the machine only ever lowers one)."""
    out: dict[str, dict[str, float]] = {}
    for peaks in measured:
        for dev, rates in peaks.items():
            for k, v in rates.items():
                out.setdefault(dev, {})[k] = max(v, out.get(dev, {}).get(k, 0.0))
    return out


def peak_for(peaks: dict, device: str, precision: str) -> float | None:
    """The roof a row is compared with: int8 rows with the int8 peak; fp16 with the fp16 peak on a GPU and the
    fp32 peak on a CPU (which computes fp16 layers in fp32)."""
    dev = peaks.get("cuda" if device == "cuda" else "cpu", {})
    if precision == "int8":
        return dev.get("int8")
    if precision == "fp16" and device == "cuda":
        return dev.get("fp16")
    return dev.get("fp32")
