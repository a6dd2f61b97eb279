"""Every export step checked against the step before it: real images, several sizes, ONNX Runtime on the CPU."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edgeseg.data import normalize, read_image
from edgeseg.data.folders import IMAGE_EXTS
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import evaluate
from edgeseg.meta import classes_of


@dataclass(frozen=True)
class Gates:
    """The limits every export step is held to, in one place (each settable from `edgeseg export`).

    Agreement is the fraction of pixels whose argmax equals the reference's, at the worst validation size. A
    difference limit scales with the reference's largest |logit| once that exceeds 1: fp32 rounding grows with the
    values (untrained U2-Nets fuse seven side outputs into logits of ~500, 1.4e-3 from float64 in PyTorch itself).
    A result passes when its value, rounded as the report prints it (`shown`), meets the limit.
    """
    fp32_max_abs: float = field(default=1e-3, metadata={"help": "most |logit difference| of fp32 ONNX against the "
                                                                 "reference (PyTorch, or the source ONNX), per unit "
                                                                 "of the reference's largest |logit| above 1 (its "
                                                                 "99.9th percentile for a model with hard "
                                                                 "decisions: SegNet's switches, Mask2Former's masks)"})
    fp32_agreement: float = field(default=0.999, metadata={"help": "least fp32 argmax agreement with the reference"})
    fp16_agreement: float = field(default=0.99, metadata={"help": "least fp16 argmax agreement with fp32; below it "
                                                                  "the conversion is broken, not merely rounded"})
    int8_agreement: float = field(default=0.95, metadata={"help": "least int8 argmax agreement with fp32 when no mIoU "
                                                                  "was measured (with the guard, mIoU decides)"})
    int8_max_loss: float = field(default=0.5, metadata={"help": "most mIoU points int8 may lose against fp32 on the "
                                                                "guard split (the guard keeps layers in float until "
                                                                "it does not)"})
    plugin_max_abs: float = field(default=1e-4, metadata={"help": "most |logit difference| of an fp32 FlowWarp graph "
                                                                  "against the graph it was rewritten from, per unit "
                                                                  "of its largest |logit| above 1"})
    # fp16 / int8 FlowWarp graphs: a last-bit difference in a warped value can move a rounding or quantization step
    plugin_agreement: float = field(default=0.995, metadata={"help": "least argmax agreement of an fp16 / int8 "
                                                                     "FlowWarp graph with the graph it came from"})

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("agreement") and not 0.0 <= v <= 1.0:
                raise EdgesegError(f"gate {f.name}={v}: an agreement is a fraction 0..1 (e.g. 0.95)")

    @classmethod
    def of(cls, value) -> Gates:
        """Gates from Gates, a dict of its fields, or None (the defaults)."""
        if value is None or isinstance(value, cls):
            return value or cls()
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise EdgesegError(f"unknown gate {min(unknown)!r}; gates are {', '.join(f.name for f in fields(cls))}")
        return cls(**value)


def shown(kind: str, x: float) -> str:
    """How the report prints a measured value; the gates compare this rounded value, so a printed pass is a pass."""
    return f"{100 * x:.2f}" if kind == "agreement" else f"{x:.2e}"


def within(kind: str, x: float, limit: float) -> bool:
    """Does x (printed as `shown`) meet the limit: agreement >= limit, difference <= limit."""
    if kind == "agreement":
        return float(shown(kind, x)) >= round(100 * limit, 2)
    return float(shown(kind, x)) <= limit


def image_files(folder: str | Path, split: str | None = None) -> list[Path]:
    """Images of a folder: DIR/images/<split> of a dataset root, else DIR/images, else DIR itself."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgesegError(f"{folder}: image folder not found; pass --data (or --calib) with a CamVid-format root "
                           f"or a folder of images")
    for d in ([folder / "images" / split] if split else []) + [folder / "images", folder]:
        if d.is_dir():
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            if files:
                return files
    where = f"{folder}/images/{split}, " if split else ""
    raise EdgesegError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) in {where}{folder}/images or {folder}; "
                       f"pass a folder that holds images")


def pick(files: Sequence[Path], n: int) -> list[Path]:
    """n files spread evenly over the list (neighbouring video frames are near duplicates)."""
    if n >= len(files):
        return list(files)
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def model_input(images_rgb: Sequence[np.ndarray], size: tuple[int, int], meta: dict) -> np.ndarray:
    """A batch in the model's input form (metadata `input`): normalised float RGB NCHW, or uint8 BGR NHWC."""
    h, w = size
    resized = [img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) for img in images_rgb]
    spec = meta["input"]
    if spec["dtype"] == "uint8":
        return np.ascontiguousarray(np.stack([cv2.cvtColor(r, cv2.COLOR_RGB2BGR) for r in resized]))
    return np.stack([normalize(r, spec["mean"], spec["std"]) for r in resized])


class OrtPredictor:
    """numpy batch in, first output out."""

    def __init__(self, model, threads: int | None = None):
        from edgeseg.runtime.backends.ort import ort_session

        self.session = ort_session(model, threads=threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


def _labels(out: np.ndarray) -> np.ndarray:
    return out if out.ndim == 3 else out.argmax(1)


def compare(reference: Callable, candidate: Callable, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
            meta: dict) -> list[dict]:
    """Per size: max and 99.9th-percentile abs difference of the outputs (logits heads) and argmax agreement, on one
    batch of all images."""
    rows = []
    for size in sizes:
        x = model_input(images, size, meta)
        a, b = reference(x), candidate(x)
        if a.shape != b.shape:
            raise EdgesegError(f"output shapes differ at {size[0]}x{size[1]}: {list(a.shape)} vs {list(b.shape)}")
        row = {"size": list(size), "batch": len(images),
               "argmax_agreement": float((_labels(a) == _labels(b)).mean())}
        if a.ndim == 4:
            diff = np.abs(a.astype(np.float32) - b.astype(np.float32))
            row["max_abs_diff"], row["p999_abs_diff"] = float(diff.max()), float(np.quantile(diff, 0.999))
            row["reference_max_abs"] = float(np.abs(a.astype(np.float32)).max())
        rows.append(row)
    return rows


def judge(rows: list[dict], *, max_abs: float | None = None, min_agree: float | None = None,
          hard_decisions: str = "") -> tuple[bool, str]:
    """Mark each size's row passed or not against the limits (as printed, see `within`); (all passed, limits text).

    With `hard_decisions` (what a last-bit difference can flip, see SegModel) the difference limit holds for the
    99.9th percentile of |diff|: the maximum is that of a flipped pixel, which the agreement limit bounds."""
    limits = []
    diff_key = "p999_abs_diff" if hard_decisions else "max_abs_diff"
    if max_abs is not None and all(diff_key in r for r in rows):
        what = f"99.9th percentile abs diff ({hard_decisions})" if hard_decisions else "max abs diff"
        limits.append(f"{what} <= {max_abs:g} x max(1, largest |reference logit|)")
    else:
        max_abs = None  # an argmax head has no scores to compare
    if min_agree is not None:
        limits.append(f"argmax agreement >= {shown('agreement', min_agree)}%")
    for r in rows:
        scale = max(1.0, r.get("reference_max_abs", 1.0))
        r["passed"] = ((max_abs is None or within("abs", r[diff_key], max_abs * scale))
                       and (min_agree is None or within("agreement", r["argmax_agreement"], min_agree)))
    return all(r["passed"] for r in rows), ", ".join(limits) or "report only"


def worst(rows: list[dict]) -> dict:
    """The summary the report and the pass/fail checks use: the worst size."""
    out = {"argmax_agreement": min(r["argmax_agreement"] for r in rows)}
    if all("max_abs_diff" in r for r in rows):
        out["max_abs_diff"] = max(r["max_abs_diff"] for r in rows)
        out["p999_abs_diff"] = max(r["p999_abs_diff"] for r in rows)
    return out


def miou(predictor: Callable, dataset, meta: dict, *, limit: int | None = None, progress: bool = True) -> dict:
    """mIoU / mAcc of a predictor over a SegFolder, through the same evaluation as `edgeseg eval`."""
    spec = meta["input"]
    if spec["dtype"] == "uint8":
        predictor = _from_normalised(predictor, spec)
    m = evaluate(predictor, dataset, classes_of(meta), size_divisor=spec["size_divisor"], mean=spec["mean"],
                 std=spec["std"], progress=progress, limit=limit)
    return {"miou": m["miou"], "macc": m["macc"], "pixel_acc": m["pixel_acc"], "images": m["images"]}


def _from_normalised(predictor: Callable, spec: dict) -> Callable:
    """Feed a fused-preprocessing model (uint8 BGR NHWC) from the evaluation's normalised RGB NCHW batches."""
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        rgb = np.rint((x.transpose(0, 2, 3, 1) * std + mean) * 255.0)  # exact: the batch came from uint8 pixels
        return predictor(np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8)[..., ::-1]))
    return run


def read_images(files: Sequence[Path]) -> list[np.ndarray]:
    return [read_image(p) for p in files]
