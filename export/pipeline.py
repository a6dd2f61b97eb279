"""`export_model`: checkpoint -> validated ONNX per precision (+ FlowWarp plugin graphs, Triton repository) + report.

Every file is first written to a staging folder inside `out_dir` and renamed into place only once every step
has validated, so a failed or killed export leaves the previous outputs (and a failure report) and nothing half-made.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeseg import __version__
from edgeseg.errors import EdgesegError
from edgeseg.fileio import sha256_file, write_json, write_text
from edgeseg.export import validate as V
from edgeseg.export.report import to_markdown

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_SIZES = ((360, 480), (288, 384), (192, 256))
DEFAULT_DATA = Path("../shared/data/camvid")
FP16_MIN_AGREEMENT = 0.99  # fp16 vs fp32 argmax; below this the conversion is broken, not merely rounded


@dataclass
class ExportOptions:
    """Everything that changes the exported files (the cache key) besides the checkpoint itself."""
    precisions: tuple[str, ...] = ("fp32",)
    opset: int = 17
    head: str = "logits"
    fused_preprocess: bool = False
    flowwarp_plugin: bool | str = False  # also write FlowWarp graphs; "auto": only when the model has a flow warp
    data: str | None = None  # dataset root: validation images, guard split, default calibration images
    calib: str | None = None  # calibration image folder (default: <data>/images/train)
    calib_method: str = "percentile"
    calib_images: int = 32
    percentile: float = 99.99
    int8_target: str = "tensorrt"
    guard: bool = True
    guard_split: str = "val"
    guard_images: int | None = None
    max_loss: float = 0.5
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    validate_images: int = 2
    triton_repo: str | None = None
    name: str | None = None

    def __post_init__(self):
        self.precisions = tuple(dict.fromkeys(self.precisions))
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise EdgesegError(f"unknown precision {bad[0] if bad else '(none)'!r}; use a comma list of {', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:  # every other precision is made from, and validated against, fp32
            self.precisions = ("fp32",) + self.precisions
        if len(self.sizes) < 1 or any(min(s) < 1 for s in self.sizes):
            raise EdgesegError(f"bad validation sizes {self.sizes}; give HxW sizes such as 360x480")
        if self.calib_images < 1 or self.validate_images < 1:
            raise EdgesegError("--calib-images and the number of validation images must be >= 1")


def default_data_root() -> Path:
    """CamVid beside the checkout: ../shared/data/camvid from the working folder, else from the repository."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / DEFAULT_DATA).is_dir():
            return (base / DEFAULT_DATA).resolve()
    return DEFAULT_DATA


def export_model(model: str | os.PathLike, out_dir: str | os.PathLike, precisions=("fp32",), *, progress: bool = True,
                 force: bool = False, **options) -> dict:
    """Export a checkpoint (path or shipped name) to validated ONNX files in out_dir; returns the report dict.

    options: the fields of ExportOptions. Outputs: report["outputs"][key]["path"] (key "fp32", "int8",
    "fp32-flowwarp", ...). A second call with the same checkpoint and options returns the cached report.
    """
    from edgeseg.models import checkpoint

    opts = ExportOptions(precisions=tuple(precisions), **options)
    src = checkpoint.resolve(str(model))
    sha = sha256_file(src)
    name = opts.name or (str(model) if str(model) in checkpoint.SHIPPED else src.stem)
    out_dir = Path(out_dir)
    key = _cache_key(sha, opts)
    cached = _cached(out_dir, key)
    if cached is not None and not force:
        _log(progress, f"export: up to date ({out_dir / 'report.json'})")
        return cached
    return _Export(src, sha, name, out_dir, opts, key, progress).run()


def _cache_key(sha: str, opts: ExportOptions) -> str:
    blob = json.dumps({"sha256": sha, "edgeseg": __version__, "code": _code_sha(), **asdict(opts)}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _code_sha() -> str:
    """Hash of the code that decides the exported graph (the export stage and the model definitions): a change to a
    pass or a layer invalidates what earlier code exported."""
    from edgeseg import models

    h = hashlib.sha256()
    for folder in (Path(__file__).parent, Path(models.__file__).parent):
        for f in sorted(folder.rglob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()


def _cached(out_dir: Path, key: str) -> dict | None:
    try:
        rep = json.loads((out_dir / "report.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rep.get("status") != "ok" or rep.get("key") != key:
        return None
    for f in rep.get("outputs", {}).values():
        p = Path(f["path"])
        if not p.is_file() or p.stat().st_size != f["bytes"]:
            return None
    return {**rep, "cached": True}


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


class _Export:
    def __init__(self, src: Path, sha: str, name: str, out_dir: Path, opts: ExportOptions, key: str, progress: bool):
        self.src, self.sha, self.name, self.out, self.o, self.progress = src, sha, name, out_dir, opts, progress
        self.stage = out_dir / f".export-{os.getpid()}"
        self.rep = {"name": name, "status": "running", "key": key, "edgeseg": __version__,
                    "source": {"path": str(src), "sha256": sha},
                    "options": asdict(opts),
                    "outputs": {}, "validation": {}, "metrics": {}}
        self.files: dict[str, Path] = {}  # key ("fp32", "int8-flowwarp", ...) -> staged path
        self.models: dict[str, object] = {}  # key -> onnx.ModelProto
        self.precision_of: dict[str, str] = {}  # key -> precision
        self.meta_extra: dict[str, dict] = {}  # precision -> extra metadata entries
        self.guard_metrics: dict[str, dict] = {}  # precision -> metrics measured by the int8 guard

    def log(self, msg: str) -> None:
        _log(self.progress, f"export: {msg}")

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.stage.mkdir(exist_ok=True)
        try:
            self._run()
            self._publish()
            self.rep["status"] = "ok"
            return self.rep
        except BaseException as e:  # the report says why, whatever stopped the export
            why = str(e) if isinstance(e, EdgesegError) else f"{type(e).__name__}: {e}"
            self.rep.update(status="failed", error=why, outputs={})
            raise
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)
            self._write_report()

    # ------------------------------------------------------------ steps
    def _run(self) -> None:
        import torch

        from edgeseg.export.torch_export import Deployable, example_input, export_onnx, split_thin_convs
        from edgeseg.meta import make_meta
        from edgeseg.models import checkpoint

        o = self.o
        net, rec = checkpoint.load_model(str(self.src))
        classes = checkpoint.classes_of(rec)
        self.rep["arch"] = rec["arch"]
        divisor = getattr(net, "size_divisor", 1)
        self.sizes = [V.fit_size(h, w, divisor) for h, w in o.sizes]
        fused = o.fused_preprocess
        self.meta = make_meta(rec["arch"], classes, size_divisor=divisor, mean=rec["mean"], std=rec["std"], head=o.head,
                              layout="NHWC" if fused else "NCHW", color="BGR" if fused else "RGB",
                              dtype="uint8" if fused else "float32", source_sha256=self.sha,
                              metrics=rec.get("metrics") or {}, train_size=rec.get("train_size"))
        self.data = Path(o.data) if o.data else default_data_root()
        self.rep["data"] = str(self.data)
        self.images = V.read_images(V.pick(V.image_files(self.data, o.guard_split), o.validate_images))

        self.log(f"{rec['arch']} -> ONNX (opset {o.opset}, head {o.head}{', fused preprocessing' if fused else ''})")
        wrapper = Deployable(net, o.head, fused, rec["mean"], rec["std"])
        h, w = self.sizes[0]
        fp32 = export_onnx(Deployable(split_thin_convs(net), o.head, fused, rec["mean"], rec["std"]),
                           example_input(h, w, fused), o.opset)
        self._stage("fp32", fp32, "fp32")

        @torch.inference_mode()
        def reference(x):  # the model as trained
            return wrapper(torch.from_numpy(x)).numpy()
        self._check("fp32", reference, "pytorch", max_abs=V.FP32_MAX_ABS, min_agree=V.MIN_AGREEMENT)

        if "fp16" in o.precisions:
            from edgeseg.export.fp16 import to_fp16

            self.log("fp32 -> mixed fp16")
            fp16, info = to_fp16(fp32)
            self.rep["fp16"] = info
            self._stage("fp16", fp16, "fp16")
            self._check("fp16", V.OrtPredictor(self.files["fp32"]), "fp32 onnx", min_agree=FP16_MIN_AGREEMENT)
        if "int8" in o.precisions:
            self._int8()
        if o.guard:
            self._metrics()
        if o.flowwarp_plugin:
            self._flowwarp()
        for key, model in self.models.items():  # final metadata: measured metrics
            self._stage(key, model, self.precision_of[key])

    def _int8(self) -> None:
        import onnx

        from edgeseg.export.int8 import (CalibrationImages, QuantConfig, calibration_summary, float_matmuls,
                                         guarded_quantize, quantize, size_dependent_nodes)

        o = self.o
        folder = Path(o.calib) if o.calib else self.data
        files = V.pick(V.image_files(folder, None if o.calib else "train"), o.calib_images)
        cfg = QuantConfig(method=o.calib_method, percentile=o.percentile, target=o.int8_target)
        calib = CalibrationImages(files, self.meta)
        path = self.stage / "int8.onnx"
        info = {"calibration": calibration_summary(calib, cfg, folder),
                "float_by_design": float_matmuls(self.models["fp32"]),
                "size_dependent_float": len(size_dependent_nodes(self.models["fp32"]))}
        self.log(f"fp32 -> int8 Q/DQ ({cfg.target} form, {cfg.method} calibration on {len(files)} images)")
        if o.guard:
            dataset = self._guard_set()
            result = guarded_quantize(self.files["fp32"], path, calib, cfg, lambda p: self._miou(p, dataset),
                                      max_loss=o.max_loss, progress=self.progress)
            info["guard"] = result.to_dict()
            self.guard_metrics = {"fp32": result.fp32, "int8": result.int8}
            self.log(f"int8 guard: fp32 {100 * result.fp32_miou:.2f} -> int8 {100 * result.int8_miou:.2f} mIoU, "
                     f"{len(result.float_nodes)} layers left in float")
        else:
            quantize(self.files["fp32"], path, calib, cfg)
        self.rep["int8"] = info
        self.meta_extra["int8"] = {"quantization": {"format": "QDQ", "target": cfg.target, "method": cfg.method,
                                                    "float_nodes": info.get("guard", {}).get("float_nodes", [])}}
        self._stage("int8", onnx.load(str(path)), "int8")
        self._check("int8", V.OrtPredictor(self.files["fp32"]), "fp32 onnx", min_agree=V.INT8_MIN_AGREEMENT)

    def _guard_set(self):
        from edgeseg.data import SegFolder

        try:
            return SegFolder(self.data, self.o.guard_split)
        except EdgesegError as e:
            raise EdgesegError(f"{e} (the accuracy guard needs labelled images; or pass --no-guard)") from None

    def _miou(self, path: Path, dataset) -> dict:
        return V.miou(V.OrtPredictor(path), dataset, self.meta, limit=self.o.guard_images, progress=self.progress)

    def _metrics(self) -> None:
        """mIoU of every precision on the guard split (the guard has measured fp32 and int8 already)."""
        dataset = self._guard_set()
        self.rep["guard"] = {"split": self.o.guard_split, "data": str(self.data),
                             "images": min(self.o.guard_images or len(dataset), len(dataset))}
        measured = self.guard_metrics
        for key in ("fp32", "fp16", "int8"):
            if key in self.files:
                m = measured.get(key) or self._miou(self.files[key], dataset)
                self.rep["metrics"][key] = m
                self.log(f"{key}: mIoU {100 * m['miou']:.2f} on {self.o.guard_split} ({m['images']} images)")

    def _flowwarp(self) -> None:
        from edgeseg.export.flowwarp import fuse_flowwarp

        self.rep["flowwarp"] = {}
        if self.o.flowwarp_plugin == "auto" and not any(n.op_type == "GridSample" for n in self.models["fp32"].graph.node):
            return
        for key in [k for k in ("fp32", "fp16", "int8") if k in self.models]:
            self.log(f"{key}: GridSample -> edgeseg::FlowWarp")
            model, info = fuse_flowwarp(self.models[key])
            self.rep["flowwarp"][key] = info
            fkey = f"{key}-flowwarp"
            self._stage(fkey, model, key)
            if key == "fp32":
                self._check(fkey, V.OrtPredictor(self.files[key]), f"{key} onnx", max_abs=V.PLUGIN_MAX_ABS)
            else:  # compare decisions, report the difference
                self._check(fkey, V.OrtPredictor(self.files[key]), f"{key} onnx", min_agree=V.PLUGIN_MIN_AGREEMENT)

    # ------------------------------------------------------------ helpers
    def _stage(self, key: str, model, precision: str) -> None:
        """Embed the metadata and write the model to the staging folder."""
        from edgeseg.export.graph import save, set_meta

        meta = dict(self.meta, precision=precision)
        if precision in self.rep["metrics"]:
            meta["metrics"] = {**meta["metrics"], **{f"onnx_{k}": v for k, v in self.rep["metrics"][precision].items()},
                               "split": self.o.guard_split}
        meta.update(self.meta_extra.get(precision, {}))
        set_meta(model, meta)
        path = save(model, self.stage / f"{key}.onnx")
        self.files[key], self.models[key], self.precision_of[key] = path, model, precision

    def _check(self, key: str, reference, ref_name: str, *, max_abs: float | None = None, min_agree: float | None = None) -> None:
        rows = V.compare(reference, V.OrtPredictor(self.files[key]), self.images, self.sizes, self.meta)
        w = V.worst(rows)
        limits = []
        if max_abs is not None and "max_abs_diff" in w:
            limits.append(f"max abs diff <= {max_abs:g}")
        if min_agree is not None:
            limits.append(f"argmax agreement >= {100 * min_agree:g}%")
        passed = ((max_abs is None or w.get("max_abs_diff", 0.0) <= max_abs)
                  and (min_agree is None or w["argmax_agreement"] >= min_agree))
        self.rep["validation"][key] = {"reference": ref_name, "sizes": rows, **w, "limit": ", ".join(limits) or "report only",
                                       "passed": passed}
        diff = f"max |diff| {w['max_abs_diff']:.2e}, " if "max_abs_diff" in w else ""
        self.log(f"{key} vs {ref_name}: {diff}argmax agreement {100 * w['argmax_agreement']:.3f}% at "
                 f"{', '.join(f'{h}x{w_}' for h, w_ in self.sizes)} -> {'ok' if passed else 'FAILED'}")
        if not passed:
            raise EdgesegError(f"{key} validation failed against {ref_name}: {diff}argmax agreement "
                               f"{100 * w['argmax_agreement']:.3f}% (limits: {', '.join(limits)}); see {self.out / 'report.md'}")

    def _publish(self) -> None:
        """Rename the staged files into place, then the Triton repository (copies of the published files)."""
        for key, staged in self.files.items():
            precision = self.precision_of[key]
            plugin = key.endswith("-flowwarp")
            final = self.out / f"{self.name}{'-flowwarp' if plugin else ''}.{precision}.onnx"
            os.replace(staged, final)
            self.rep["outputs"][key] = {"file": final.name, "path": str(final.resolve()), "precision": precision,
                                        "graph": "flowwarp-plugin" if plugin else "plain", "bytes": final.stat().st_size,
                                        "sha256": sha256_file(final)}
        if self.o.triton_repo:
            from edgeseg.export.triton import add_model
            from edgeseg.kernels import find_library

            models = []
            for key, f in self.rep["outputs"].items():
                lib = find_library("ort") if f["graph"] == "flowwarp-plugin" else None
                meta = dict(self.meta, precision=f["precision"])
                folder = add_model(self.o.triton_repo, Path(f["file"]).stem.replace(".", "_"), f["path"], meta,
                                   op_library=str(lib) if lib else None)
                models.append(folder.name)
            self.rep["triton"] = {"repository": str(Path(self.o.triton_repo).resolve()), "models": models}

    def _write_report(self) -> None:
        write_json(self.out / "report.json", self.rep)
        write_text(self.out / "report.md", to_markdown(self.rep))
