"""TensorRT engines from the exported ONNX: version-aware build plans, profiles, engine cache, INT8 calibration.

The decisions are plain functions, tested without TensorRT; `build_engine` is the thin part that calls the
`tensorrt` Python API (imported lazily) and needs an NVIDIA GPU.

Versions: TensorRT >= 10 builds a strongly typed network, so the precision is the ONNX's own (fp32, the fp16
casts, the int8 Q/DQ); TensorRT 11 removed the FP16/INT8 builder flags and the calibrators altogether.
TensorRT 8.x (JetPack 4.6 / 5) builds a weakly typed network with FP16 / INT8 builder flags; from a plain
fp32 graph INT8 then needs the entropy calibrator, fed from the same calibration images as the Q/DQ export.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.meta import META_KEY, PRECISIONS
from edgeseg.paths import cache_dir
from edgeseg.runtime.trt import gpu_info, import_tensorrt, sidecar_path

GRIDSAMPLE_SINCE = (8, 5)  # native GridSample layer
DEFAULT_OPT = (360, 480)


def parse_version(text: str) -> tuple[int, int, int]:
    """'10.13.3.9' -> (10, 13, 3)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        raise EdgesegError(f"cannot read the TensorRT version {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass
class BuildPlan:
    """How to build one engine on one TensorRT version."""
    version: tuple[int, int, int]
    precision: str
    strongly_typed: bool  # TensorRT >= 10: the graph's types decide
    network_flags: list[str] = field(default_factory=list)  # NetworkDefinitionCreationFlag names
    builder_flags: list[str] = field(default_factory=list)  # BuilderFlag names
    calibrator: bool = False  # TensorRT 8.x INT8 from a graph without Q/DQ
    workspace_api: str = "memory_pool"  # set_memory_pool_limit (>= 8.4) or max_workspace_size
    warnings: list[str] = field(default_factory=list)


def plan_build(version: str | tuple, graph_precision: str, precision: str | None = None, *, has_gridsample: bool = False,
               has_flowwarp: bool = False, opset: int = 17, dla_core: int | None = None) -> BuildPlan:
    """The version-aware build decisions for a graph of `graph_precision` (its metadata) asked to build as `precision`."""
    v = parse_version(version) if isinstance(version, str) else tuple(version)
    want = precision or graph_precision
    if want not in PRECISIONS:
        raise EdgesegError(f"unknown precision {want!r}; use one of: {', '.join(PRECISIONS)}")
    if has_gridsample and v[:2] < GRIDSAMPLE_SINCE:
        raise EdgesegError(f"TensorRT {'.'.join(map(str, v))} has no GridSample layer (it arrived in 8.5): build the FlowWarp "
                           f"plugin graph instead (`edgeseg export --flowwarp-plugin` writes <name>-flowwarp.<precision>.onnx)")
    plan = BuildPlan(version=v, precision=want, strongly_typed=v[0] >= 10,
                     workspace_api="memory_pool" if v[:2] >= (8, 4) else "max_workspace_size")
    if plan.strongly_typed:
        if want != graph_precision:
            raise EdgesegError(f"TensorRT {v[0]}.{v[1]} builds strongly typed networks: the precision comes from the ONNX, which "
                               f"is {graph_precision}; build from the {want} export (<name>.{want}.onnx) or drop --precision")
        if v[0] == 10:  # 11 is always strongly typed and deprecates the flag
            plan.network_flags.append("STRONGLY_TYPED")
        if dla_core is not None and v[0] == 10 and v[:2] > (10, 7):
            raise EdgesegError(f"TensorRT {v[0]}.{v[1]} has no DLA support (10.7 was the last 10.x with it); drop --dla")
    else:
        plan.network_flags.append("EXPLICIT_BATCH")
        if want == "fp32" and graph_precision != "fp32":
            raise EdgesegError(f"the ONNX is {graph_precision}: build it as {graph_precision}, or build the fp32 export as fp32")
        if want == "fp16" or graph_precision == "fp16":
            plan.builder_flags.append("FP16")
        if want == "int8":
            plan.builder_flags += ["INT8", "FP16"]  # layers without an int8 kernel fall back to fp16, not fp32
            plan.calibrator = graph_precision != "int8"  # a Q/DQ graph carries its own scales
        if graph_precision == "int8" and want != "int8":
            raise EdgesegError("the ONNX has Q/DQ (int8): build it with --precision int8")
    if dla_core is not None:
        if want == "fp32":
            raise EdgesegError("DLA runs fp16 and int8 only: build the fp16 or int8 export with --dla")
        plan.builder_flags.append("GPU_FALLBACK")
    if has_gridsample and opset >= 20 and v[:2] == (10, 13):
        plan.warnings.append("TensorRT 10.13 computes GridSample wrongly from opset-20 graphs (NVIDIA/TensorRT#4646): "
                             "re-export with --opset 17")
    if has_flowwarp:
        plan.warnings.append("the graph uses edgeseg::FlowWarp: the plugin library is loaded before parsing")
    return plan


# ---------------------------------------------------------------- shapes
def input_shape(meta: dict, n: int, h: int, w: int) -> tuple[int, int, int, int]:
    return (n, h, w, 3) if meta["input"]["layout"] == "NHWC" else (n, 3, h, w)


def make_profile(meta: dict, opt: tuple[int, int] | None = None, min_hw: tuple[int, int] | None = None,
                 max_hw: tuple[int, int] | None = None, batch: tuple[int, int, int] = (1, 1, 1)) -> dict:
    """Optimisation profile {"min", "opt", "max"} input shapes; defaults: opt 360x480, min half, max twice it."""
    d = int(meta["input"].get("size_divisor", 1))
    opt = opt or DEFAULT_OPT
    min_hw = min_hw or (opt[0] // 2, opt[1] // 2)
    max_hw = max_hw or (opt[0] * 2, opt[1] * 2)
    sizes = {"min": min_hw, "opt": opt, "max": max_hw}
    for k, (h, w) in sizes.items():
        if h < 1 or w < 1 or h % d or w % d:
            raise EdgesegError(f"--{k} {h}x{w}: sizes must be positive multiples of the model's size divisor {d}")
    if not (min_hw[0] <= opt[0] <= max_hw[0] and min_hw[1] <= opt[1] <= max_hw[1]):
        raise EdgesegError(f"profile sizes must satisfy min <= opt <= max in H and W (got {min_hw}, {opt}, {max_hw})")
    if not (1 <= batch[0] <= batch[1] <= batch[2]):
        raise EdgesegError(f"batch sizes must satisfy 1 <= min <= opt <= max (got {batch})")
    return {k: list(input_shape(meta, b, *sizes[k])) for k, b in zip(("min", "opt", "max"), batch)}


# ---------------------------------------------------------------- engine cache
def cache_key(onnx_sha256: str, trt_version: str, device: dict, precision: str, profile: dict, dla_core: int | None = None) -> str:
    """Engines are valid for one model, TensorRT version, GPU model, precision and shape profile."""
    blob = json.dumps({"onnx": onnx_sha256, "tensorrt": trt_version, "precision": precision, "profile": profile,
                       "device": [device.get("name"), device.get("compute_capability")], "dla": dla_core}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_engine(stem: str, key: str) -> Path:
    return cache_dir("engines") / f"{stem}-{key[:16]}.engine"


# ---------------------------------------------------------------- TensorRT 8.x calibration data
def calibration_batches(images: Sequence[np.ndarray], meta: dict, shape: Sequence[int]) -> Iterator[np.ndarray]:
    """Fixed-shape batches (the profile's opt shape) of RGB images in the model's input form; the last partial
    batch is dropped (an implicit calibrator takes one batch size)."""
    from edgeseg.export.validate import model_input

    n = shape[0]
    h, w = (shape[1], shape[2]) if meta["input"]["layout"] == "NHWC" else (shape[2], shape[3])
    if len(images) < n:
        raise EdgesegError(f"{len(images)} calibration images cannot fill one batch of {n}; add images or lower the batch")
    for i in range(0, len(images) - n + 1, n):
        yield np.ascontiguousarray(model_input(images[i:i + n], (h, w), meta))


# ---------------------------------------------------------------- sidecar
def sidecar(*, trt_version: str, device: dict, plan: BuildPlan, profile: dict, onnx_path: Path, onnx_sha256: str,
            meta: dict, dla_core: int | None, workspace_mb: int | None, key: str, seconds: float) -> dict:
    return {"format_version": 1, "tensorrt": trt_version, "device": device, "precision": plan.precision,
            "strongly_typed": plan.strongly_typed, "builder_flags": plan.builder_flags, "calibrated": plan.calibrator,
            "profiles": [profile], "dla_core": dla_core, "workspace_mb": workspace_mb,
            "source": {"onnx": str(onnx_path), "sha256": onnx_sha256}, META_KEY: meta, "cache_key": key,
            "build_seconds": round(seconds, 1)}


@dataclass
class BuildRequest:
    onnx: Path
    out: Path | None = None
    precision: str | None = None
    opt: tuple[int, int] | None = None
    min: tuple[int, int] | None = None
    max: tuple[int, int] | None = None
    batch: tuple[int, int, int] = (1, 1, 1)
    workspace_mb: int | None = None
    dla_core: int | None = None
    timing_cache: Path | None = None
    calib: Path | None = None  # TensorRT 8.x INT8 from an fp32 graph
    calib_images: int = 32
    use_cache: bool = True


def build_engine(req: BuildRequest, log=print) -> dict:
    """Build (or take from the cache) the engine of an exported ONNX; writes ENGINE and ENGINE.json; returns the sidecar."""
    from edgeseg.export.graph import default_opset, get_meta, load
    from edgeseg.fileio import atomic_path, sha256_file, write_json
    from edgeseg.kernels import OP_TYPE, load_trt_plugins

    model = load(req.onnx)
    meta = get_meta(model, str(req.onnx))
    ops, opset = {n.op_type for n in model.graph.node}, default_opset(model) or 17
    del model
    trt = import_tensorrt()
    plan = plan_build(trt.__version__, meta.get("precision", "fp32"), req.precision, has_gridsample="GridSample" in ops,
                      has_flowwarp=OP_TYPE in ops, opset=opset, dla_core=req.dla_core)
    for w in plan.warnings:
        log(f"build: {w}")
    profile = make_profile(meta, req.opt, req.min, req.max, req.batch)
    device = gpu_info()
    sha = sha256_file(req.onnx)
    key = cache_key(sha, trt.__version__, device, plan.precision, profile, req.dla_core)
    cached = cached_engine(req.onnx.stem, key)
    out = req.out or cached
    if req.use_cache and cached.is_file() and cached.with_suffix(".engine.json").is_file():
        log(f"build: cached engine {cached}")
        if out != cached:
            for src, dst in ((cached, out), (sidecar_path(cached), sidecar_path(out))):
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
        return json.loads(sidecar_path(out).read_text())

    logger = trt.Logger(trt.Logger.WARNING)
    if OP_TYPE in ops:
        load_trt_plugins(logger)
    t0 = time.time()
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(req.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgesegError(f"{req.onnx}: TensorRT {trt.__version__} cannot parse it ({errors[:300]})")
    config = builder.create_builder_config()
    if req.workspace_mb:
        if plan.workspace_api == "memory_pool":
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, req.workspace_mb << 20)
        else:
            config.max_workspace_size = req.workspace_mb << 20
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    prof = builder.create_optimization_profile()
    prof.set_shape(network.get_input(0).name, *(tuple(profile[k]) for k in ("min", "opt", "max")))
    config.add_optimization_profile(prof)
    if req.dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise EdgesegError("--dla: this device has no DLA cores (DLA is on Jetson Xavier / Orin)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = req.dla_core
    timing = _timing_cache(config, req.timing_cache)
    calibrator = None
    if plan.calibrator:
        calibrator = _calibrator(trt, req, meta, profile, key)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(prof)
    log(f"build: TensorRT {trt.__version__} on {device['name']} ({plan.precision}, "
        f"{'strongly typed' if plan.strongly_typed else 'flags ' + ','.join(plan.builder_flags)})")
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EdgesegError(f"{req.onnx}: TensorRT could not build the engine (see the TensorRT messages above); "
                           f"try a larger --workspace or another precision")
    if req.timing_cache:
        with atomic_path(req.timing_cache) as tmp:
            tmp.write_bytes(bytes(timing.serialize()))
    info = sidecar(trt_version=trt.__version__, device=device, plan=plan, profile=profile, onnx_path=req.onnx, onnx_sha256=sha,
                   meta=meta, dla_core=req.dla_core, workspace_mb=req.workspace_mb, key=key, seconds=time.time() - t0)
    targets = [out] + ([cached] if req.use_cache and cached != out else [])
    for path in targets:
        with atomic_path(path) as tmp:
            tmp.write_bytes(bytes(blob))
        write_json(sidecar_path(path), info)
    log(f"build: {out} ({len(bytes(blob)) / 1e6:.1f} MB, {info['build_seconds']} s)")
    return info


def _timing_cache(config, path: Path | None):
    data = path.read_bytes() if path and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _calibrator(trt, req: BuildRequest, meta: dict, profile: dict, key: str):
    """IInt8EntropyCalibrator2 over the calibration images at the profile's opt shape, with a calibration cache."""
    from cuda import cudart

    from edgeseg.export.validate import image_files, pick, read_images
    from edgeseg.fileio import atomic_path

    if req.calib is None:
        raise EdgesegError(f"TensorRT {trt.__version__} builds INT8 from this fp32 graph with a calibrator: pass --calib DIR "
                           f"(or build the int8 Q/DQ export, which needs none)")
    batches = list(calibration_batches(read_images(pick(image_files(req.calib, "train"), req.calib_images)), meta, profile["opt"]))
    cache_path = cache_dir("engines") / f"{req.onnx.stem}-{key[:16]}.calib"

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.it = iter(batches)
            err, self.device = cudart.cudaMalloc(batches[0].nbytes)
            if int(err) != 0:
                raise EdgesegError(f"cannot allocate {batches[0].nbytes} bytes on the GPU for calibration ({err})")

        def get_batch_size(self):
            return batches[0].shape[0]

        def get_batch(self, names):
            x = next(self.it, None)
            if x is None:
                return None
            cudart.cudaMemcpy(self.device, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            return [int(self.device)]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            with atomic_path(cache_path) as tmp:
                tmp.write_bytes(bytes(cache))

    return EntropyCalibrator()

