"""Confusion-matrix metrics (mIoU, mAcc, per-class IoU) and the evaluation loop. Torch-free.

A predictor is any callable `images float32 [N,3,H,W] -> logits float32 [N,C,H,W]` at input resolution (a PyTorch
model, an ONNX Runtime session, a TensorRT engine) or, for argmax-head models, `-> labels [N,H,W]`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import cv2
import numpy as np

from edgeseg.data.classes import ClassInfo
from edgeseg.data.transforms import normalize
from edgeseg.errors import EdgesegError
from edgeseg.progress import progress_bar


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int):
        self.n, self.ignore = num_classes, ignore_index
        self.mat = np.zeros((num_classes, num_classes), np.int64)  # rows: truth, cols: prediction

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        keep = target != self.ignore
        t, p = target[keep].astype(np.int64), pred[keep].astype(np.int64)
        self.mat += np.bincount(t * self.n + p, minlength=self.n * self.n).reshape(self.n, self.n)

    def metrics(self, names: Sequence[str]) -> dict:
        tp = np.diag(self.mat).astype(np.float64)
        gt, pr = self.mat.sum(1), self.mat.sum(0)
        present = gt > 0  # classes absent from the ground truth do not count in the means
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (gt + pr - tp)
            acc = tp / gt
        return {"miou": float(np.nanmean(iou[present])), "macc": float(np.nanmean(acc[present])),
                "pixel_acc": float(tp.sum() / max(self.mat.sum(), 1)),
                "per_class_iou": {n: (float(iou[i]) if present[i] else None) for i, n in enumerate(names)}}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _fit(h: int, w: int, scale: float, divisor: int) -> tuple[int, int]:
    return (max(divisor, int(round(h * scale / divisor)) * divisor), max(divisor, int(round(w * scale / divisor)) * divisor))


def at_fixed_size(predictor: Callable, hw: tuple[int, int]) -> Callable:
    """For a model that takes one size only (an adopted graph frozen to its export size): each normalised batch
    [N,3,h,w] is resized to it; predict_labels resizes the output back to the image's size."""
    def run(x: np.ndarray) -> np.ndarray:
        if x.shape[2:] == tuple(hw):
            return predictor(x)
        resized = [cv2.resize(im.transpose(1, 2, 0), hw[::-1], interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) for im in x]
        return predictor(np.ascontiguousarray(np.stack(resized)))
    return run


def predict_labels(predictor: Callable, img: np.ndarray, *, size_divisor: int = 1, scales: Sequence[float] = (1.0,),
                   flip: bool = False, mean=None, std=None) -> np.ndarray:
    """Class map HxW for one RGB image; multi-scale + flip test-time augmentation averages the softmax."""
    h, w = img.shape[:2]
    norm = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    prob = None
    for s in scales:
        sh, sw = _fit(h, w, s, size_divisor)
        x = normalize(img if (sh, sw) == (h, w) else cv2.resize(img, (sw, sh), interpolation=cv2.INTER_LINEAR), **norm)[None]
        batch = np.concatenate([x, x[..., ::-1]]) if flip else x
        out = predictor(np.ascontiguousarray(batch))
        if out.ndim == 3:  # an argmax head: no scores to average
            if len(scales) > 1 or flip:
                raise EdgesegError("this model outputs labels (argmax head); test-time augmentation needs logits: drop --tta")
            lab = out[0]
            return lab if lab.shape == (h, w) else cv2.resize(lab.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        p = _softmax(out.astype(np.float32))
        p = p[0] + p[1][..., ::-1] if flip else p[0]
        if p.shape[-2:] != (h, w):
            p = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in p])
        prob = p if prob is None else prob + p
    return prob.argmax(0)


def evaluate(predictor: Callable, dataset, classes: ClassInfo, *, size_divisor: int = 1, scales=(1.0,), flip=False,
             mean=None, std=None, progress: bool = True, limit: int | None = None) -> dict:
    """Metrics over a SegFolder-like dataset of (RGB image, label) pairs."""
    cm = ConfusionMatrix(classes.num_classes, classes.ignore_index)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in progress_bar(range(n), show=progress, desc="eval", unit="img", leave=False):
        img, lab = dataset[i]
        pred = predict_labels(predictor, img, size_divisor=size_divisor, scales=scales, flip=flip, mean=mean, std=std)
        cm.update(pred, lab)
    out = cm.metrics(classes.names)
    out["images"] = n
    return out


def format_table(metrics: dict) -> str:
    rows = [f"| {'class':<12} | {'IoU %':>6} |", f"|{'-' * 14}|{'-' * 8}|"]
    for name, v in metrics["per_class_iou"].items():
        rows.append(f"| {name:<12} | {'  n/a' if v is None else f'{100 * v:6.2f}'} |")
    rows.append(f"| {'**mIoU**':<12} | {100 * metrics['miou']:6.2f} |")
    rows.append(f"| {'mAcc':<12} | {100 * metrics['macc']:6.2f} |")
    return "\n".join(rows)
