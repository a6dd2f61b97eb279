"""What the numbers were measured on (CPU, GPU, driver, library versions) and the machine's practical peak.

The peak is the best of a few large matrix products (fp32; int8 through torch._int_mm and, on the CPU, ONNX
Runtime's MatMulInteger; fp16 on a GPU): the ceiling a network's Conv/MatMul layers could reach, against which each row's achieved
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


def cpu_line() -> str:
    """The CPU in a few words for a report: model, cores available to this process, vector extensions."""
    info = cpu_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else info["logical_cores"]
    return f"{info['model']}, {cores} cores" + (f" ({', '.join(info['simd'])})" if info["simd"] else "")


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


def _best_rate(mm, operands, reps: int, max_n: int, min_s: float = 0.1) -> float:
    """GOP/s of the best of `reps` products mm(a, b) of n x n operands(n); n doubles from 256 until one product
    takes min_s (or reaches max_n), so a slow kernel (torch's int8 GEMM has a reference path) costs seconds, not minutes."""
    n = 256
    while True:
        a, b = operands(n)
        mm(a, b)  # warm-up: thread pools, packing buffers
        t = time.perf_counter()
        mm(a, b)
        if time.perf_counter() - t >= min_s or n >= max_n:
            break
        n *= 2
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def measure_peaks(threads: int | None, max_n: int = 4096, reps: int = 3) -> dict:
    """{"cpu": {"fp32": GFLOP/s, "int8": GOP/s}, "cuda": {"fp32", "fp16", "int8"}} measured with torch (and numpy)."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    peaks: dict[str, dict[str, float]] = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        reps_dev = reps * (10 if dev == "cuda" else 1)

        def mm(a, b, sync=sync):
            return torch.mm(a, b), sync()

        def int_mm(a, b, sync=sync):
            return torch._int_mm(a, b), sync()

        out = {}
        dtypes = {"fp32": torch.float32} | ({"fp16": torch.float16} if dev == "cuda" else {})
        for name, dt in dtypes.items():
            out[name] = _best_rate(mm, lambda n, dt=dt, dev=dev: (torch.randn(n, n, device=dev, dtype=dt),
                                                                  torch.randn(n, n, device=dev, dtype=dt)), reps_dev, max_n)
        if dev == "cpu":  # numpy's BLAS is sometimes the faster of the two: the roof is the best seen
            out["fp32"] = max(out["fp32"], _best_rate(lambda a, b: a @ b, lambda n: (
                np.random.standard_normal((n, n)).astype(np.float32),) * 2, reps, max_n))
        try:
            out["int8"] = _best_rate(int_mm, lambda n, dev=dev: tuple(
                torch.randint(-128, 127, (n, n), dtype=torch.int8, device=dev) for _ in range(2)), reps_dev, max_n)
        except (RuntimeError, AttributeError):  # no int8 GEMM for this device in this torch
            pass
        if dev == "cpu":  # torch's CPU int8 GEMM may be a reference loop; ONNX Runtime's is what int8 graphs run
            out["int8"] = max(out.get("int8", 0.0), _ort_int8_rate(threads, reps, max_n))
        peaks[dev] = {k: round(v, 1) for k, v in out.items()}
    return peaks


def _ort_int8_rate(threads: int | None, reps: int, max_n: int) -> float:
    """GOP/s of ONNX Runtime's CPU MatMulInteger (uint8 x int8, the kernels of its QLinear ops)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    dims = ["n", "n"]
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, dims),
                               helper.make_tensor_value_info("b", TensorProto.INT8, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    return _best_rate(lambda a, b: sess.run(None, {"a": a, "b": b}),
                      lambda n: (rng.integers(0, 255, (n, n), dtype=np.uint8), rng.integers(-128, 127, (n, n), dtype=np.int8)),
                      reps, max_n)


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
