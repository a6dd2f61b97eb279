"""Two models on the same real images: max abs difference of their scores, argmax agreement, mIoU of each and the
per-class IoU difference; optionally the int8 sensitivity of each quantized layer (`per_layer`).

Each model is fed as its own metadata says (normalisation, size divisor, fixed size) through the runtime backends,
and its output is mapped to the image's resolution the way `edgeseg eval` does, so the mIoU figures here are
`edgeseg eval`'s.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.evaluate import ConfusionMatrix, at_fixed_size, predict_labels
from edgeseg.meta import classes_of
from edgeseg.progress import progress_bar


class _Model:
    """A backend plus what feeding it needs; `last` keeps the raw output of the latest call."""

    def __init__(self, path, backend: str):
        from edgeseg.runtime.backends import open_backend

        self.path = Path(path)
        self.backend = open_backend(path, backend)
        self.meta = self.backend.meta
        self.classes = classes_of(self.meta)
        infer = self.backend.infer
        self._infer = at_fixed_size(infer, self.backend.fixed_hw) if self.backend.fixed_hw else infer
        self.last = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.last = self._infer(x)
        return self.last

    def labels(self, img: np.ndarray) -> np.ndarray:
        inp = self.meta["input"]
        return predict_labels(self, img, size_divisor=inp["size_divisor"], mean=inp["mean"], std=inp["std"])

    def describe(self) -> dict:
        return {"path": str(self.path), "backend": self.backend.name, "head": self.meta["head"],
                "precision": self.meta.get("precision"), "arch": self.meta.get("arch")}


def compare_models(a, b, data, *, split: str = "val", limit: int | None = None, backend: str = "ort-cpu",
                   per_layer: bool = False, calib=None, calib_images: int = 8, progress: bool = True) -> dict:
    """Metrics of A and B on `data`/`split` and how they differ; with per_layer, the int8 sensitivity table."""
    from edgeseg.data import SegFolder

    ma, mb = _Model(a, backend), _Model(b, backend)
    if ma.classes.names != mb.classes.names:
        raise EdgesegError(f"{a} predicts {ma.classes.num_classes} classes and {b} {mb.classes.num_classes} "
                           f"({', '.join(mb.classes.names[:3])}, ...); compare models of the same classes")
    dataset = SegFolder(data, split)
    if dataset.classes.names != ma.classes.names:
        raise EdgesegError(f"{a} predicts {ma.classes.num_classes} classes but {data} has {dataset.classes.num_classes}; "
                           f"compare on data with the models' classes")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n < 1:
        raise EdgesegError(f"--limit {limit}: compare needs at least one image")
    classes = ma.classes
    cms = [ConfusionMatrix(classes.num_classes, classes.ignore_index) for _ in range(2)]
    same = total = 0
    max_abs, why_no_diff = 0.0, None
    for i in progress_bar(range(n), show=progress, desc="compare", unit="img", leave=False):
        img, target = dataset[i]
        la, lb = ma.labels(img), mb.labels(img)
        cms[0].update(la, target)
        cms[1].update(lb, target)
        same += int((la == lb).sum())
        total += la.size
        if why_no_diff is None:
            why_no_diff = _no_diff_reason(ma.last, mb.last)
            if why_no_diff is None:
                max_abs = max(max_abs, float(np.abs(ma.last.astype(np.float32) - mb.last.astype(np.float32)).max()))
    metrics = [cm.metrics(classes.names) for cm in cms]
    rows = []
    for name in classes.names:
        ia, ib = metrics[0]["per_class_iou"][name], metrics[1]["per_class_iou"][name]
        rows.append({"class": name, "a": ia, "b": ib, "diff": None if ia is None or ib is None else ib - ia})
    out = {"a": {**ma.describe(), **_summary(metrics[0])}, "b": {**mb.describe(), **_summary(metrics[1])},
           "data": str(data), "split": split, "images": n, "argmax_agreement": same / total,
           "max_abs_diff": None if why_no_diff else max_abs, "max_abs_diff_note": why_no_diff,
           "miou_diff": metrics[1]["miou"] - metrics[0]["miou"], "per_class": rows}
    if per_layer:
        out["per_layer"] = layer_sensitivity(ma, mb, dataset, n, calib=calib or data, calib_is_data=calib is None,
                                             calib_images=calib_images, progress=progress)
    for m in (ma, mb):
        m.backend.close()
    return out


def _summary(m: dict) -> dict:
    return {"miou": m["miou"], "macc": m["macc"], "pixel_acc": m["pixel_acc"], "per_class_iou": m["per_class_iou"]}


def _no_diff_reason(ya: np.ndarray, yb: np.ndarray) -> str | None:
    if ya.ndim != 4 or yb.ndim != 4:
        return "one of the models outputs labels (argmax head): no scores to compare"
    if ya.shape != yb.shape:
        return f"score shapes differ ({list(ya.shape)} vs {list(yb.shape)})"
    return None


# ---------------------------------------------------------------- int8 sensitivity
def layer_sensitivity(ma: _Model, mb: _Model, dataset, n: int, *, calib, calib_is_data: bool, calib_images: int,
                      progress: bool = True) -> dict:
    """Quantize one layer at a time (of those the int8 model runs in int8) from the float model, and measure each
    alone against the float model: argmax agreement and mIoU change on the compared images. Worst first.

    Calibration uses the int8 model's recorded method and form (metadata `quantization`), else ONNX Runtime's
    defaults (min-max, uint8 activations: the `cpu` form)."""
    import tempfile

    import onnx

    from edgeseg.export.int8 import (
        CalibrationImages,
        QuantConfig,
        quantizable_nodes,
        quantize,
    )
    from edgeseg.export.validate import OrtPredictor, image_files, pick
    from edgeseg.inspection import int8_coverage

    qa, qb = (int8_coverage(onnx.load(str(m.path))) for m in (ma, mb))
    if qa["int8"] and not qb["int8"]:
        ma, mb, qb = mb, ma, qa
    elif qb["int8"] == 0 or qa["int8"]:
        raise EdgesegError(f"--per-layer needs one float model and one int8 (Q/DQ) model; {ma.path.name} has "
                           f"{qa['int8']} int8 layers and {mb.path.name} {qb['int8']}")
    fp32 = ma.path
    layers = [n_ for n_ in quantizable_nodes(onnx.load(str(fp32))) if n_ in set(qb["int8_layers"])]
    if not layers:
        raise EdgesegError(f"the int8 layers of {mb.path.name} have no namesakes in {fp32.name}; --per-layer compares "
                           f"an int8 model with the float model it was quantized from")
    q = mb.meta.get("quantization") or {}
    cfg = QuantConfig(method=q.get("method", "minmax"), target=q.get("target", "cpu"))
    files = pick(image_files(calib, "train" if calib_is_data else None), calib_images)
    images = CalibrationImages(files, ma.meta)
    refs = [ma.labels(dataset[i][0]) for i in range(n)]
    targets = [dataset[i][1] for i in range(n)]
    base = ConfusionMatrix(ma.classes.num_classes, ma.classes.ignore_index)
    for r, t in zip(refs, targets):
        base.update(r, t)
    base_miou = base.metrics(ma.classes.names)["miou"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-compare-") as tmp:
        work = Path(tmp)
        for name in progress_bar(layers, show=progress, desc="int8 per layer", unit="layer", leave=False):
            probe = _Probe(OrtPredictor(quantize(fp32, work / "one.onnx", images, cfg, only=[name], cache=work / "ranges.json")),
                           ma.meta)
            cm = ConfusionMatrix(ma.classes.num_classes, ma.classes.ignore_index)
            same = total = 0
            for i in range(n):
                lab = probe.labels(dataset[i][0])
                cm.update(lab, targets[i])
                same += int((lab == refs[i]).sum())
                total += lab.size
            miou = cm.metrics(ma.classes.names)["miou"]
            rows.append({"layer": name, "agreement": same / total, "miou": miou, "miou_change": miou - base_miou})
    rows.sort(key=lambda r: (r["agreement"], r["miou_change"]))
    return {"method": "quantize one layer at a time from the float model", "float_model": str(fp32),
            "int8_model": str(mb.path), "calibration": {"images": len(files), "method": cfg.method, "form": cfg.target},
            "float_miou": base_miou, "layers": rows}


class _Probe:
    def __init__(self, predictor, meta: dict):
        self.predictor, self.meta = predictor, meta

    def labels(self, img: np.ndarray) -> np.ndarray:
        inp = self.meta["input"]
        return predict_labels(self.predictor, img, size_divisor=inp["size_divisor"], mean=inp["mean"], std=inp["std"])


# ---------------------------------------------------------------- text
def _pct(v) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}"


def format_text(r: dict) -> str:
    a, b = r["a"], r["b"]
    lines = [f"A: {a['path']} ({a['precision']}, {a['head']}, {a['backend']})",
             f"B: {b['path']} ({b['precision']}, {b['head']}, {b['backend']})",
             f"{r['images']} images of {r['data']} [{r['split']}]",
             f"argmax agreement {100 * r['argmax_agreement']:.2f} %; max abs score diff "
             + (f"{r['max_abs_diff']:.3g}" if r["max_abs_diff"] is not None else f"n/a ({r['max_abs_diff_note']})"),
             f"mIoU A {100 * a['miou']:.2f}, B {100 * b['miou']:.2f} (B - A {100 * r['miou_diff']:+.2f} points)", "",
             f"| {'class':<12} | {'A IoU %':>7} | {'B IoU %':>7} | {'B - A':>6} |", f"|{'-' * 14}|{'-' * 9}|{'-' * 9}|{'-' * 8}|"]
    for row in r["per_class"]:
        diff = "   n/a" if row["diff"] is None else f"{100 * row['diff']:+6.2f}"
        lines.append(f"| {row['class']:<12} | {_pct(row['a']):>7} | {_pct(row['b']):>7} | {diff:>6} |")
    if "per_layer" in r:
        p = r["per_layer"]
        lines += ["", (f"int8 sensitivity ({p['method']}; {p['calibration']['method']} calibration on "
                      f"{p['calibration']['images']} images, {p['calibration']['form']} form), worst first:"),
                  f"| {'layer':<40} | {'agreement %':>11} | {'mIoU %':>6} | {'change':>6} |",
                  f"|{'-' * 42}|{'-' * 13}|{'-' * 8}|{'-' * 8}|"]
        for row in p["layers"]:
            lines.append(f"| {row['layer'][:40]:<40} | {100 * row['agreement']:11.2f} | {100 * row['miou']:6.2f} | "
                         f"{100 * row['miou_change']:+6.2f} |")
    return "\n".join(lines)
