"""opencv augmentation for training and the deterministic evaluation transform (numpy in, numpy out)."""
from __future__ import annotations

import cv2
import numpy as np

from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD


def normalize(img: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 3xHxW, (x/255 - mean)/std: the `images` input of every model."""
    x = img.astype(np.float32) * (1 / 255.0)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class TrainTransform:
    """Random scale, crop padded with the ignore index, horizontal flip, photometric jitter."""

    def __init__(self, crop: tuple[int, int], ignore_index: int, scale=(0.5, 2.0), flip: bool = True,
                 jitter: float = 0.25, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.crop, self.ignore, self.scale, self.flip, self.jitter = crop, ignore_index, scale, flip, jitter
        self.mean, self.std = mean, std

    def __call__(self, img: np.ndarray, lab: np.ndarray, rng: np.random.Generator):
        s = rng.uniform(*self.scale)
        h, w = lab.shape
        size = (max(1, round(w * s)), max(1, round(h * s)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
        if self.jitter:  # before padding, so the padding stays exactly the mean colour
            img = self._photometric(img, rng)
        ch, cw = self.crop
        ph, pw = max(ch - lab.shape[0], 0), max(cw - lab.shape[1], 0)
        if ph or pw:  # pad image with the mean colour (0 after normalisation) and labels with ignore
            fill = [round(255 * m) for m in self.mean]
            img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=fill)
            lab = cv2.copyMakeBorder(lab, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.ignore)
        y = int(rng.integers(0, lab.shape[0] - ch + 1))
        x = int(rng.integers(0, lab.shape[1] - cw + 1))
        img, lab = img[y:y + ch, x:x + cw], lab[y:y + ch, x:x + cw]
        if self.flip and rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        return normalize(img, self.mean, self.std), np.ascontiguousarray(lab).astype(np.int64)

    def _photometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        j = self.jitter
        x = img.astype(np.float32)
        x = x * rng.uniform(1 - j, 1 + j) + rng.uniform(-j, j) * 64  # contrast, brightness
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * rng.uniform(1 - j, 1 + j)  # saturation
        return np.clip(x, 0, 255).astype(np.uint8)


class EvalTransform:
    """Deterministic: optional resize to (h, w), then normalise. Labels stay at full resolution."""

    def __init__(self, size: tuple[int, int] | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.size is not None and img.shape[:2] != tuple(self.size):
            img = cv2.resize(img, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        return normalize(img, self.mean, self.std)
