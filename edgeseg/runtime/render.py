"""Visualisation: class colours, overlay on the frame, a class legend and an FPS caption, into a reused canvas."""
from __future__ import annotations

import cv2
import numpy as np

from edgeseg.data.classes import ClassInfo
from edgeseg.errors import EdgesegError

VIS_MODES = ("overlay", "mask", "both")
FONT = cv2.FONT_HERSHEY_SIMPLEX


def palette_lut(classes: ClassInfo) -> np.ndarray:
    """[1,256,3] uint8 BGR colour of each class ID (IDs past the palette are black) for cv2.LUT."""
    lut = np.zeros((256, 3), np.uint8)
    pal = np.asarray(classes.palette, np.uint8)[:256, ::-1]
    lut[: len(pal)] = pal
    return lut.reshape(1, 256, 3)


class Renderer:
    """`render(frame, labels, caption)` -> BGR canvas: overlay (frame blended with class colours), mask, or both
    side by side; with a legend of the classes in view and a caption line. The canvas is reused across frames."""

    def __init__(self, classes: ClassInfo, mode: str = "overlay", alpha: float = 0.5, legend: bool = True):
        if mode not in VIS_MODES:
            raise EdgesegError(f"--vis {mode!r}: choose one of {', '.join(VIS_MODES)}")
        if not 0.0 <= alpha <= 1.0:
            raise EdgesegError(f"--alpha {alpha}: must be between 0 and 1")
        self.classes, self.mode, self.alpha, self.legend = classes, mode, float(alpha), legend
        self._lut = palette_lut(classes)
        self._pal16 = np.asarray(classes.palette, np.uint8)[:, ::-1]  # for more than 256 classes
        self._canvas = self._labels3 = self._colours = None

    def colorize(self, labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Class IDs HxW -> BGR colours HxWx3."""
        h, w = labels.shape
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
        if labels.dtype != np.uint8:
            return np.take(self._pal16, np.minimum(labels, len(self._pal16) - 1), axis=0, out=out)
        if self._labels3 is None or self._labels3.shape[:2] != (h, w):
            self._labels3 = np.empty((h, w, 3), np.uint8)
        cv2.merge([labels, labels, labels], self._labels3)
        return cv2.LUT(self._labels3, self._lut, dst=out)

    def __call__(self, frame: np.ndarray, labels: np.ndarray, caption: str | None = None) -> np.ndarray:
        h, w = frame.shape[:2]
        width = 2 * w if self.mode == "both" else w
        if self._canvas is None or self._canvas.shape != (h, width, 3):
            self._canvas = np.empty((h, width, 3), np.uint8)
            self._colours = np.empty((h, w, 3), np.uint8)
        canvas = self._canvas
        if self.mode == "overlay":
            self.colorize(labels, out=canvas)
            cv2.addWeighted(frame, 1.0 - self.alpha, canvas, self.alpha, 0.0, dst=canvas)
        elif self.mode == "mask":
            self.colorize(labels, out=canvas)
        else:  # the halves are strided views: colour and blend contiguously, then copy in
            colours = self.colorize(labels, out=self._colours)
            np.copyto(canvas[:, w:], colours)
            cv2.addWeighted(frame, 1.0 - self.alpha, colours, self.alpha, 0.0, dst=colours)
            np.copyto(canvas[:, :w], colours)
        if self.legend:
            self._draw_legend(canvas, labels, x_min=w if self.mode == "both" else 0)
        if caption:
            _label(canvas, caption, (4, 4))
        return canvas

    def _draw_legend(self, img: np.ndarray, labels: np.ndarray, x_min: int = 0) -> None:
        """Swatch + name per class in view (the largest ones when they do not all fit), top right, right of x_min."""
        sample = labels[::4, ::4]  # every 16th pixel finds the classes in view at a 16th of the cost
        counts = np.bincount(sample.ravel(), minlength=len(self.classes.names))[: len(self.classes.names)]
        present = np.flatnonzero(counts)
        scale = 0.4 if img.shape[0] < 600 else 0.6
        row = int(30 * scale) + 4
        fits = max(0, (img.shape[0] - 8) // row)
        if fits == 0 or present.size == 0:
            return
        if present.size > fits:
            present = np.sort(present[np.argsort(-counts[present], kind="stable")[:fits]])
        names = [self.classes.names[i] for i in present]
        text_w = max(cv2.getTextSize(n, FONT, scale, 1)[0][0] for n in names)
        sw = row - 6
        pw, ph = min(img.shape[1] - x_min, text_w + sw + 14), len(names) * row + 6
        x0 = img.shape[1] - pw
        roi = img[:ph, x0:]
        roi >>= 1  # darken the panel for contrast
        for k, (cid, name) in enumerate(zip(present, names)):
            y = 3 + k * row
            colour = tuple(int(v) for v in self.classes.palette[cid][::-1])
            cv2.rectangle(img, (x0 + 4, y + 2), (x0 + 4 + sw, y + 2 + sw), colour, -1)
            cv2.putText(img, name, (x0 + sw + 10, y + sw), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _label(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    """White text on a black box with its top-left corner at org."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    x, y = org
    cv2.rectangle(img, (x, y), (x + tw + 6, y + th + base + 6), (0, 0, 0), -1)
    cv2.putText(img, text, (x + 3, y + th + 3), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
