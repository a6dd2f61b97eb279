"""Every export step checked against the step before it: real images, several sizes, ONNX Runtime on the CPU."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from edgeseg.data import read_image, normalize
from edgeseg.data.folders import IMAGE_EXTS
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import evaluate
from edgeseg.meta import classes_of

FP32_MAX_ABS = 1e-3  # ONNX Runtime fp32 vs PyTorch
MIN_AGREEMENT = 0.999  # fraction of pixels with the same argmax
PLUGIN_MAX_ABS = 1e-4  # FlowWarp plugin graph vs the graph it was rewritten from
# fp16 / int8 plugin graphs: a last-bit difference in a warped value can move a rounding or quantization step
PLUGIN_MIN_AGREEMENT = 0.995
INT8_MIN_AGREEMENT = 0.95  # int8 vs fp32 at every size; below it the Q/DQ graph is broken, not merely rounded


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


def fit_size(h: int, w: int, divisor: int) -> tuple[int, int]:
    return max(divisor, round(h / divisor) * divisor), max(divisor, round(w / divisor) * divisor)


def model_input(images_rgb: Sequence[np.ndarray], size: tuple[int, int], meta: dict) -> np.ndarray:
    """A batch in the model's input form (metadata `input`): normalised float RGB NCHW, or uint8 BGR NHWC."""
    h, w = size
    resized = [img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) for img in images_rgb]
    spec = meta["input"]
    if spec["dtype"] == "uint8":
        return np.ascontiguousarray(np.stack([cv2.cvtColor(r, cv2.COLOR_RGB2BGR) for r in resized]))
    return np.stack([normalize(r, spec["mean"], spec["std"]) for r in resized])


def ort_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session for a path or serialized bytes; the FlowWarp op library registered when used."""
    import onnxruntime as ort

    from edgeseg.kernels import ort_session_options_for

    so = ort_session_options_for(model, threads)
    try:
        return ort.InferenceSession(str(model) if isinstance(model, Path) else model, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
        name = model if isinstance(model, (str, Path)) else "the model"
        raise EdgesegError(f"{name}: ONNX Runtime cannot load it ({str(e).strip().splitlines()[0][:200]})") from None


class OrtPredictor:
    """numpy batch in, first output out."""

    def __init__(self, model, threads: int | None = None):
        self.session = ort_session(model, threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


def _labels(out: np.ndarray) -> np.ndarray:
    return out if out.ndim == 3 else out.argmax(1)


def compare(reference: Callable, candidate: Callable, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
            meta: dict) -> list[dict]:
    """Per size: max abs difference of the outputs (logits heads) and argmax agreement, on one batch of all images."""
    rows = []
    for size in sizes:
        x = model_input(images, size, meta)
        a, b = reference(x), candidate(x)
        if a.shape != b.shape:
            raise EdgesegError(f"output shapes differ at {size[0]}x{size[1]}: {list(a.shape)} vs {list(b.shape)}")
        row = {"size": list(size), "batch": len(images),
               "argmax_agreement": float((_labels(a) == _labels(b)).mean())}
        if a.ndim == 4:
            row["max_abs_diff"] = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())
        rows.append(row)
    return rows


def worst(rows: list[dict]) -> dict:
    """The summary the report and the pass/fail checks use: the worst size."""
    out = {"argmax_agreement": min(r["argmax_agreement"] for r in rows)}
    if all("max_abs_diff" in r for r in rows):
        out["max_abs_diff"] = max(r["max_abs_diff"] for r in rows)
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
