"""Model output -> class IDs (and confidence) at model resolution, then at the frame's, into preallocated buffers.

The argmax is a running maximum over class planes with OpenCV (vectorised, threaded): ~10x faster than
numpy's argmax over axis 0, same result (the first maximum wins ties).
"""
from __future__ import annotations

import cv2
import numpy as np


def label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


class Postprocessor:
    """For one output size: `labels(y)` -> HxW class IDs, `confidence(y)` -> HxW max softmax probability (logits only).

    y is the model's raw output for one batch: logits [N,C,H,W] (float32/16) or labels [N,H,W]. Results are views of
    buffers owned here, valid until the next call.
    """

    def __init__(self, head: str, num_classes: int, out_hw: tuple[int, int], scores_hw: tuple[int, int] | None = None):
        """scores_hw: the model input's size. Logits at a lower resolution (metadata `output_stride`, SegFormer's
        1/4) are upsampled to it bilinearly before the argmax, as the model's own upsampling would."""
        self.head, self.num_classes = head, num_classes
        self._up = None
        if head == "logits" and scores_hw is not None and tuple(scores_hw) != tuple(out_hw):
            out_hw = tuple(scores_hw)
            self._up = np.empty((num_classes, *out_hw), np.float32)
        h, w = out_hw
        self._labels = np.empty((h, w), label_dtype(num_classes))
        if head == "logits":
            self._best = np.empty((h, w), np.float32)
            self._mask = np.empty((h, w), np.uint8)
            self._ids = [np.full((h, w), c, self._labels.dtype) for c in range(num_classes)]
            self._f32 = None
            self._tmp = np.empty((h, w), np.float32)
            self._sum = np.empty((h, w), np.float32)
            self._conf = np.empty((h, w), np.uint8)

    def _planes(self, y: np.ndarray, index: int) -> np.ndarray:
        if self._up is not None:
            h, w = self._up.shape[1:]
            for c in range(self.num_classes):
                cv2.resize(y[index, c].astype(np.float32, copy=False), (w, h), dst=self._up[c],
                           interpolation=cv2.INTER_LINEAR)
            return self._up
        if y.dtype == np.float32:
            return y[index]
        if self._f32 is None:
            self._f32 = np.empty(y.shape[1:], np.float32)
        np.copyto(self._f32, y[index], casting="unsafe")
        return self._f32

    def labels(self, y: np.ndarray, index: int = 0) -> np.ndarray:
        if self.head != "logits":
            np.copyto(self._labels, y[index], casting="unsafe")
            return self._labels
        x = self._planes(y, index)
        np.copyto(self._best, x[0])
        self._labels.fill(0)
        for c in range(1, x.shape[0]):
            cv2.compare(x[c], self._best, cv2.CMP_GT, dst=self._mask)
            cv2.max(self._best, x[c], dst=self._best)
            cv2.copyTo(self._ids[c], self._mask, dst=self._labels)
        return self._labels

    def confidence(self, y: np.ndarray, index: int = 0) -> np.ndarray:
        """uint8 255 * max_c softmax(y)_c = 255 / sum_c exp(y_c - max); call after labels() on the same y (it reuses the max)."""
        x = self._up if self._up is not None else self._planes(y, index)  # upsampled by labels() already
        self._sum.fill(0)
        for c in range(x.shape[0]):
            cv2.subtract(x[c], self._best, dst=self._tmp)
            cv2.exp(self._tmp, dst=self._tmp)
            cv2.add(self._sum, self._tmp, dst=self._sum)
        cv2.divide(255.0, self._sum, dst=self._tmp)
        return cv2.convertScaleAbs(self._tmp, dst=self._conf)


def upsample(image: np.ndarray, frame_hw: tuple[int, int], out: np.ndarray | None = None, nearest: bool = True) -> np.ndarray:
    """A model-resolution map at the frame's resolution (nearest for class IDs, bilinear for confidence), into `out`
    when its shape fits."""
    h, w = frame_hw
    if out is None or out.shape != (h, w) or out.dtype != image.dtype:
        out = np.empty((h, w), image.dtype)
    if image.shape == (h, w):
        np.copyto(out, image)
        return out
    return cv2.resize(image, (w, h), dst=out, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
