"""`export_model`: a model -> validated ONNX per precision (+ FlowWarp plugin graphs, Triton repository) + report.

The model is a checkpoint (path or shipped name), any `torch.nn.Module` mapping images to per-class scores, or an
ONNX file (adopted first when it lacks edgeseg's metadata). The fp32 graph is validated against the model itself
(PyTorch, or ONNX Runtime on the source ONNX); then the passes of `edgeseg.export.passes` run in order, each
graph checked by one checker against the graph it came from, under one set of gates (`Gates`).

Every file is first written to a staging folder inside `out_dir` and renamed into place once the graphs have
validated. A failed fp32 export leaves the previous outputs and a failure report; a failed pass (an INT8 step
whose guard cannot be met, say) publishes the graphs that validated, and the report says what failed and why.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeseg import __version__
from edgeseg.errors import EdgesegError
from edgeseg.export import validate as V
from edgeseg.export.int8 import CALIB_METHODS, TARGET_CHOICES, resolve_target
from edgeseg.export.report import to_markdown
from edgeseg.export.torch_export import HEADS
from edgeseg.export.validate import Gates
from edgeseg.fileio import sha256_file, write_json, write_text
from edgeseg.sizes import fit

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_SIZES = ((360, 480), (288, 384), (192, 256))


def _opt(default, help: str, **meta):
    """A field with its command-line help (and flag, choices, metavar, default_text: see edgeseg.cli.export)."""
    meta = {"help": help, **meta}
    if isinstance(default, type):  # a dataclass of settings (Gates): one instance per options object
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ExportOptions:
    """Everything that changes the exported files (the cache key) besides the model itself.

    The metadata of each field is its command-line option (`edgeseg export` derives its flags from it).
    """
    precisions: tuple[str, ...] = _opt(("fp32",), "comma list of fp32, fp16, int8 (fp32 is always made)",
                                       flag="--precision", metavar="LIST", default_text="fp32")
    opset: int = _opt(17, "ONNX opset, 16..20 (TensorRT 10.13 computes GridSample wrongly from 20)")
    head: str = _opt("logits", "output logits [N,C,H,W] or labels [N,H,W]", choices=HEADS)
    fused_preprocess: bool = _opt(False, "input uint8 BGR [N,H,W,3], normalised inside the graph")
    flowwarp_plugin: bool | str = _opt(False, "also write <name>-flowwarp.<precision>.onnx with each flow warp as "
                                              "one edgeseg::FlowWarp node ('auto' in the API: only when the model has "
                                              "a flow warp)")
    data: str | None = _opt(None, "data root (CamVid layout) for validation images, the guard split and calibration "
                                  "images", metavar="DIR", default_text="$EDGESEG_DATA")
    calib: str | None = _opt(None, "calibration image folder", metavar="DIR", default_text="<data>/images/train")
    calib_method: str = _opt("percentile", "int8 calibration method", choices=CALIB_METHODS)
    calib_images: int = _opt(32, "number of calibration images (spread over the folder)")
    percentile: float = _opt(99.99, "with --calib-method percentile", flag="--calib-percentile")
    int8_target: str = _opt("auto", "Q/DQ form: tensorrt (symmetric int8 on Conv/MatMul inputs; what TensorRT >= 10 "
                                    "builds), cpu (uint8 activations, all ops; fastest on ONNX Runtime x86, rejected "
                                    "by TensorRT), auto (tensorrt where TensorRT is importable, else cpu)",
                            choices=TARGET_CHOICES)
    guard: bool = _opt(True, "skip the mIoU measurement and the int8 accuracy guard", flag="--no-guard")
    guard_split: str = _opt("val", "held-out split for the accuracy guard and the validation images")
    guard_images: int | None = _opt(None, "use only the first N images of the guard split", metavar="N",
                                    default_text="all")
    sizes: tuple[tuple[int, int], ...] = _opt(DEFAULT_SIZES, "sizes at which every step is compared with the one "
                                              "before", flag="--validate-sizes", metavar="HxW,...",
                                              default_text="360x480,288x384,192x256")
    validate_images: int = _opt(2, "validation images (spread over the guard split)")
    triton_repo: str | None = _opt(None, "also write a Triton model repository here", metavar="DIR",
                                   default_text="none")
    name: str | None = _opt(None, "file name stem", default_text="the model's name")
    gates: Gates = _opt(Gates, "the limits each step is held to (see Gates)", cli=False)

    def __post_init__(self):
        self.precisions = tuple(dict.fromkeys(self.precisions))
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise EdgesegError(f"unknown precision {bad[0] if bad else '(none)'!r}; use a comma list of "
                               f"{', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:  # every other precision is made from, and validated against, fp32
            self.precisions = ("fp32",) + self.precisions
        if len(self.sizes) < 1 or any(min(s) < 1 for s in self.sizes):
            raise EdgesegError(f"bad validation sizes {self.sizes}; give HxW sizes such as 360x480")
        if self.calib_images < 1 or self.validate_images < 1:
            raise EdgesegError("--calib-images and --validate-images must be >= 1")
        if self.int8_target not in TARGET_CHOICES:
            raise EdgesegError(f"unknown int8 target {self.int8_target!r}; use one of: {', '.join(TARGET_CHOICES)}")
        self.gates = Gates.of(self.gates)


class PartialExport(EdgesegError):
    """Some passes failed; the graphs that validated were published. `.report` is the export report."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def export_model(model, out_dir: str | os.PathLike, precisions=("fp32",), *, progress: bool = True, force: bool = False,
                 classes=None, mean=None, std=None, output=None, resize_output: bool = False,
                 input_name: str | None = None, input_layout: str | None = None, model_options: dict | None = None,
                 **options) -> dict:
    """Export a model to validated ONNX files in out_dir; returns the report dict.

    model: a checkpoint path or shipped name; a `torch.nn.Module` mapping normalised RGB images [N,3,H,W] to
    per-class scores, with `classes` (a classes.json path or a ClassInfo), `mean` / `std` (ImageNet's when
    omitted), `output` (the key, attribute or index of the scores in a dict / object / tuple output; a dict's or
    object's `logits` by default) and `resize_output` (upsample scores at 1/k resolution in the graph; otherwise the
    metadata says `output_stride` k and runtimes upsample); or an `.onnx` file (with edgeseg's metadata, or adopted:
    then `classes`, `mean`, `std` describe it, and `input_name`, `input_layout` ("NCHW" or "NHWC") and `output` (a
    tensor name) choose its image input and score output where the adoption cannot tell). `model_options` set a
    checkpoint architecture's inference options (UNet++'s prune=L) on its trained weights.
    options: the fields of ExportOptions (gates: a Gates or a dict of its fields). Outputs:
    report["outputs"][key]["path"] (key "fp32", "int8", "fp32-flowwarp", ...). A second call with the same model and
    options returns the cached report. Raises PartialExport (an EdgesegError) after publishing what validated when a
    pass failed.
    """
    from edgeseg.export.sources import open_source

    opts = ExportOptions(precisions=tuple(precisions), **options)
    src = open_source(model, opts, classes=classes, mean=mean, std=std, output=output, resize_output=resize_output,
                      input_name=input_name, input_layout=input_layout, model_options=model_options)
    target = resolve_target(opts.int8_target) if "int8" in opts.precisions else None
    out_dir = Path(out_dir)
    key = _cache_key(src.sha, src.key_extra, opts, target)
    cached = _cached(out_dir, key)
    if cached is not None and not force:
        _log(progress, f"export: up to date ({out_dir / 'report.json'})")
        return cached
    return _Export(src, out_dir, opts, key, target, progress).run()


def _cache_key(sha: str, extra: dict, opts: ExportOptions, target) -> str:
    blob = json.dumps({"sha256": sha, "source": extra, "edgeseg": __version__, "code": _code_sha(), "int8_form": target,
                       **asdict(opts)}, sort_keys=True, default=str)
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
    """One export: the context every pass reads (options, gates, metadata, validated graphs) and the one checker."""

    def __init__(self, src, out_dir: Path, opts: ExportOptions, key: str, target, progress: bool):
        self.src, self.out, self.o, self.gates, self.progress = src, out_dir, opts, opts.gates, progress
        self.int8_target = target  # (form, why) when int8 is requested
        self.stage_dir = out_dir / f".export-{os.getpid()}"
        self.rep = {"name": src.name, "status": "running", "key": key, "edgeseg": __version__,
                    "source": {"path": src.path, "kind": src.kind, "sha256": src.sha},
                    "options": asdict(opts), "outputs": {}, "validation": {}, "metrics": {}, "passes": {}}
        self.files: dict[str, Path] = {}  # key ("fp32", "int8-flowwarp", ...) -> staged path
        self.models: dict[str, object] = {}  # key -> onnx.ModelProto
        self.precision_of: dict[str, str] = {}  # key -> precision
        self.meta_extra: dict[str, dict] = {}  # precision -> extra metadata entries
        self.guard_metrics: dict[str, dict] = {}  # precision -> metrics measured by the int8 guard
        self._guard_dataset = None

    def log(self, msg: str) -> None:
        _log(self.progress, f"export: {msg}")

    def run(self) -> dict:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.stage_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise EdgesegError(f"output folder {self.out}: cannot create it ({e.strerror}); choose another") from None
        try:
            failed = self._run()
            self._publish()
            self.rep["status"] = "partial" if failed else "ok"
        except BaseException as e:  # the report says why, whatever stopped the export
            why = str(e) if isinstance(e, EdgesegError) else f"{type(e).__name__}: {e}"
            self.rep.update(status="failed", error=why, outputs={})
            raise
        finally:
            shutil.rmtree(self.stage_dir, ignore_errors=True)
            self._write_report()
        if failed:
            names = ", ".join(f"{k} ({why})" for k, why in failed.items())
            raise PartialExport(f"{names}; published what validated ({', '.join(self.rep['outputs'])}); see "
                                f"{self.out / 'report.md'}", self.rep)
        return self.rep

    # ------------------------------------------------------------ steps
    def _run(self) -> dict[str, str]:
        """fp32, then every pass; returns {pass or graph key: why} of what failed."""
        from edgeseg.export.passes import PASSES
        from edgeseg.paths import data_root

        o, src = self.o, self.src
        self.rep["arch"] = src.arch
        self.sizes = [src.fixed_size] if src.fixed_size else [fit(s, src.divisor) for s in o.sizes]
        self.meta = src.meta(o)
        self.data = data_root(o.data)
        self.rep["data"] = str(self.data)
        self.images = V.read_images(V.pick(V.image_files(self.data, o.guard_split), o.validate_images))
        passes = [p() for p in PASSES]
        passes = [p for p in passes if p.wanted(o)]
        for p in passes:  # bad input (calibration images, labels) stops the export before any file is made
            p.prepare(self)
        if o.guard:
            self.guard_set()

        model, reference, ref_name = src.fp32(o, self.sizes[0])
        self._stage("fp32", model, "fp32")
        self._check("fp32", reference, ref_name, max_abs=self.gates.fp32_max_abs, min_agree=self.gates.fp32_agreement,
                    hard_decisions=src.hard_decisions, fatal=True)

        failed: dict[str, str] = {}
        for p in passes:
            why = p.skip_reason(self)
            if why:
                self.rep["passes"][p.name] = {"status": "skipped", "why": why}
                continue
            try:
                outputs = p.apply(self)
            except EdgesegError as e:
                self.log(f"{p.name} failed: {e}")
                self.rep["passes"][p.name] = {"status": "failed", "why": str(e)}
                failed[p.name] = str(e)
                continue
            for out in outputs:
                why = self._validated(out)
                if why:
                    failed[out.key] = why
            bad = [out.key for out in outputs if out.key in failed]
            self.rep["passes"][p.name] = {"status": "failed" if bad else "ok", "outputs": [out.key for out in outputs]}
        if o.guard:
            self._metrics()
        for key, model in self.models.items():  # final metadata: measured metrics
            self._stage(key, model, self.precision_of[key])
        return failed

    def _validated(self, out) -> str | None:
        """Stage a pass's graph and check it against its reference; None when it passed, else why (it is dropped)."""
        if out.meta:
            self.meta_extra[out.precision] = out.meta
        try:
            self._stage(out.key, out.model, out.precision)
            if self._check(out.key, V.OrtPredictor(self.files[out.reference]), f"{out.reference} onnx",
                           max_abs=out.max_abs, min_agree=out.min_agree, decided_by=out.decided_by):
                return None
            why = self.rep["validation"][out.key]["why"]
        except EdgesegError as e:  # e.g. ONNX Runtime cannot load the graph (a FlowWarp graph without the op built)
            why = f"{out.key}: {e}"
            self.log(why)
        if out.key in self.files:
            self._drop(out.key)
        return why

    def guard_set(self):
        """The labelled guard split (read once)."""
        from edgeseg.data import SegFolder

        if self._guard_dataset is None:
            try:
                self._guard_dataset = SegFolder(self.data, self.o.guard_split)
            except EdgesegError as e:
                raise EdgesegError(f"{e} (the accuracy guard needs labelled images; or pass --no-guard)") from None
        return self._guard_dataset

    def miou(self, path: Path, dataset) -> dict:
        return V.miou(V.OrtPredictor(path), dataset, self.meta, limit=self.o.guard_images, progress=self.progress)

    def _metrics(self) -> None:
        """mIoU of every precision on the guard split (the guard has measured fp32 and int8 already)."""
        dataset = self.guard_set()
        self.rep["guard"] = {"split": self.o.guard_split, "data": str(self.data),
                             "images": min(self.o.guard_images or len(dataset), len(dataset))}
        for key in ("fp32", "fp16", "int8"):
            if key in self.files:
                m = self.guard_metrics.get(key) or self.miou(self.files[key], dataset)
                self.rep["metrics"][key] = m
                self.log(f"{key}: mIoU {100 * m['miou']:.2f} on {self.o.guard_split} ({m['images']} images)")

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
        path = save(model, self.stage_dir / f"{key}.onnx")
        self.files[key], self.models[key], self.precision_of[key] = path, model, precision

    def _drop(self, key: str) -> None:
        self.files.pop(key).unlink(missing_ok=True)
        del self.models[key], self.precision_of[key]

    def _check(self, key: str, reference, ref_name: str, *, max_abs: float | None = None,
               min_agree: float | None = None, hard_decisions: str = "", decided_by: str | None = None,
               fatal: bool = False) -> bool:
        """The one checker: the graph `key` against a reference on the validation images at every size."""
        rows = V.compare(reference, V.OrtPredictor(self.files[key]), self.images, self.sizes, self.meta)
        w = V.worst(rows)
        passed, limit = V.judge(rows, max_abs=max_abs, min_agree=min_agree, hard_decisions=hard_decisions)
        if decided_by:
            limit = f"report only ({decided_by})"
        entry = {"reference": ref_name, "sizes": rows, **w, "limit": limit, "passed": passed}
        diff = f"max |diff| {V.shown('abs', w['max_abs_diff'])}, " if "max_abs_diff" in w else ""
        if diff and hard_decisions:
            diff += f"99.9th percentile {V.shown('abs', w['p999_abs_diff'])}, "
        sizes = ", ".join(f"{h}x{w_}" for h, w_ in self.sizes)
        self.log(f"{key} vs {ref_name}: {diff}argmax agreement {V.shown('agreement', w['argmax_agreement'])}% at "
                 f"{sizes} -> {'ok' if passed else 'FAILED'}")
        if not passed:
            entry["why"] = (f"{key} validation failed against {ref_name}: {diff}argmax agreement "
                            f"{V.shown('agreement', w['argmax_agreement'])}% (limits: {limit})")
        self.rep["validation"][key] = entry
        if not passed and fatal:
            raise EdgesegError(f"{entry['why']}; see {self.out / 'report.md'}")
        return passed

    def _publish(self) -> None:
        """Rename the staged files into place, then the Triton repository (copies of the published files)."""
        for key, staged in self.files.items():
            precision = self.precision_of[key]
            plugin = key.endswith("-flowwarp")
            final = self.out / f"{self.src.name}{'-flowwarp' if plugin else ''}.{precision}.onnx"
            os.replace(staged, final)
            self.rep["outputs"][key] = {"file": final.name, "path": str(final.resolve()), "precision": precision,
                                        "graph": "flowwarp-plugin" if plugin else "plain",
                                        "bytes": final.stat().st_size, "sha256": sha256_file(final)}
        if self.o.triton_repo:
            from edgeseg.export.triton import add_model
            from edgeseg.kernels import find_library

            models = []
            for f in self.rep["outputs"].values():
                lib = find_library("ort") if f["graph"] == "flowwarp-plugin" else None
                meta = dict(self.meta, precision=f["precision"])
                folder = add_model(self.o.triton_repo, Path(f["file"]).stem.replace(".", "_"), f["path"], meta,
                                   op_library=str(lib) if lib else None)
                models.append(folder.name)
            self.rep["triton"] = {"repository": str(Path(self.o.triton_repo).resolve()), "models": models}

    def _write_report(self) -> None:
        write_json(self.out / "report.json", self.rep)
        write_text(self.out / "report.md", to_markdown(self.rep))
