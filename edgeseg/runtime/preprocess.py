"""Frame -> model input in one pass into a preallocated buffer: resize, channel order, normalise, layout.

Normalisation is a per-channel 256-entry lookup table computed with the same float32 arithmetic as
`edgeseg.data.normalize`, so the runtime's input is bit-identical to the training/evaluation transform's.
"""
from __future__ import annotations

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.sizes import fit


def train_size(meta: dict) -> tuple[int, int] | None:
    """The image size the model was trained at, from its metadata (None when unknown)."""
    hw = meta["input"].get("train_size")
    return (int(hw[0]), int(hw[1])) if isinstance(hw, (list, tuple)) and len(hw) == 2 and min(hw) > 0 else None


def model_size(frame_hw: tuple[int, int], meta: dict, fixed: tuple[int, int] | None = None,
               requested: tuple[int, int] | None = None) -> tuple[int, int]:
    """The model input (H, W): the model's fixed size, else the requested one, else the frame scaled down to fit
    the size the model was trained at (its aspect kept: the model's speed and accuracy are those it was trained
    for), rounded to size_divisor; without a training size in the metadata, the frame's own size."""
    d = max(int(meta["input"].get("size_divisor") or 1), 1)
    if fixed:
        if requested and tuple(requested) != tuple(fixed):
            raise EdgesegError(f"--size {requested[0]}x{requested[1]}: this model only takes {fixed[0]}x{fixed[1]}; drop --size")
        return tuple(fixed)
    if requested:
        h, w = requested
        if h % d or w % d:
            hh, ww = fit((h, w), d)
            raise EdgesegError(f"--size {h}x{w}: the model needs multiples of {d}, e.g. {hh}x{ww}")
        return h, w
    h, w = frame_hw
    trained = train_size(meta)
    if trained:
        scale = min(1.0, trained[0] / h, trained[1] / w)
        h, w = h * scale, w * scale
    return fit((h, w), d)


def normalize_lut(mean, std) -> np.ndarray:
    """[3, 256] float32: (v/255 - mean[c]) / std[c] for every byte value v, computed as data.normalize does."""
    v = np.arange(256, dtype=np.float32) * np.float32(1 / 255.0)
    return np.stack([(v - np.float32(m)) / np.float32(s) for m, s in zip(mean, std)])


class Preprocessor:
    """`(frame, out) -> out`: a uint8 HxWx3 frame (BGR by default) into the model input [1,3,H,W] or [1,H,W,3].

    `size` is the model (H, W). Float inputs are RGB- or BGR-ordered and normalised as the metadata says; a
    uint8 input (the fused-preprocess model variant) gets the resized frame as it is, in the model's colour order.
    """

    def __init__(self, meta: dict, size: tuple[int, int], frame_color: str = "BGR"):
        inp = meta["input"]
        self.size, self.layout = tuple(size), inp["layout"]
        self.dtype = np.dtype({"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[inp["dtype"]])
        self.swap = inp.get("color", "RGB").upper() != frame_color.upper()
        h, w = self.size
        self._resized = np.empty((h, w, 3), np.uint8)
        self._planes = [np.empty((h, w), np.uint8) for _ in range(3)]
        if self.dtype != np.uint8:
            lut = normalize_lut(inp["mean"], inp["std"])  # indexed by model channel
            self.order = (2, 1, 0) if self.swap else (0, 1, 2)  # model channel c reads frame channel order[c]
            self._lut = [np.ascontiguousarray(lut[c]) for c in range(3)]
            self._lut3 = np.ascontiguousarray(lut.T.reshape(1, 256, 3))  # NHWC: applied after the channel swap
            self._f32 = None if self.dtype == np.float32 else np.empty(self.shape(), np.float32)
        self._swapped = np.empty((h, w, 3), np.uint8) if self.swap and self.layout == "NHWC" else None

    def shape(self, batch: int = 1) -> tuple[int, ...]:
        h, w = self.size
        return (batch, 3, h, w) if self.layout == "NCHW" else (batch, h, w, 3)

    def new_input(self, batch: int = 1) -> np.ndarray:
        return np.empty(self.shape(batch), self.dtype)

    def __call__(self, frame: np.ndarray, out: np.ndarray | None = None, index: int = 0) -> np.ndarray:
        """Write `frame` as item `index` of `out` (a new_input() array; made when None) and return out."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise EdgesegError(f"frame {frame.dtype} {list(frame.shape)}: expected a uint8 HxWx3 colour image")
        if out is None:
            out = self.new_input(index + 1)
        h, w = self.size
        same = frame.shape[:2] == (h, w)
        if self.layout == "NHWC" and not self.swap and self.dtype == np.uint8:  # fused-preprocess model: resize only
            if same:
                np.copyto(out[index], frame)
            else:
                cv2.resize(frame, (w, h), dst=out[index], interpolation=cv2.INTER_LINEAR)
            return out
        src = frame if same else cv2.resize(frame, (w, h), dst=self._resized, interpolation=cv2.INTER_LINEAR)
        if self.dtype == np.uint8:
            return self._bytes(src, out, index)
        work, i = (out, index) if self._f32 is None else (self._f32, 0)
        if self.layout == "NCHW":
            cv2.split(src, self._planes)
            for c in range(3):
                cv2.LUT(self._planes[self.order[c]], self._lut[c], dst=work[i, c])
        else:
            if self.swap:
                src = cv2.cvtColor(src, cv2.COLOR_BGR2RGB, dst=self._swapped)
            cv2.LUT(src, self._lut3, dst=work[i])
        if self._f32 is not None:  # float16 models: one conversion of the normalised float32
            np.copyto(out[index], self._f32[0], casting="unsafe")
        return out

    def _bytes(self, src, out, index):
        """uint8 inputs in the model's colour order, without normalisation."""
        if self.layout == "NHWC":  # swap needed (the plain case returned earlier)
            cv2.cvtColor(src, cv2.COLOR_BGR2RGB, dst=out[index])
            return out
        cv2.split(src, self._planes)
        for c in range(3):
            np.copyto(out[index, c], self._planes[2 - c if self.swap else c])
        return out


def preprocess(frame: np.ndarray, meta: dict, size: tuple[int, int], frame_color: str = "BGR") -> np.ndarray:
    """One frame -> a new model input [1,...]; for repeated calls keep a Preprocessor (its buffers are reused)."""
    return Preprocessor(meta, size, frame_color)(frame)
