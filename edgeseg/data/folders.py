"""Segmentation data on disk: CamVid-format and generic image + mask folders. Torch-free (numpy, opencv).

Layout (both formats):  DIR/images/<split>/*.{png,jpg}  and  DIR/labels/<split>/*.png  (or masks/),
matched by file stem; without a `<split>` subfolder, DIR/images and DIR/labels are the split.
A `DIR/classes.json` ({"names", "palette", "ignore_index"}) describes the classes; without it the folder
must be CamVid's (11 classes, void = 11).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgeseg.data.classes import CAMVID, ClassInfo
from edgeseg.errors import EdgesegError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABEL_DIRS = ("labels", "masks", "annotations")


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 HxWx3."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise EdgesegError(f"{path}: cannot read the image (missing or corrupt); fix or remove it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise EdgesegError(f"{path}: cannot read the label (missing or corrupt); fix or remove it")
    if lab.ndim != 2:
        raise EdgesegError(f"{path}: labels must be single-channel class-index PNGs, this one has {lab.shape[2]} channels")
    return lab


def load_classes(root: Path) -> ClassInfo:
    path = root / "classes.json"
    return ClassInfo.load(path) if path.exists() else CAMVID


def _split_dir(root: Path, names: tuple[str, ...], split: str) -> Path | None:
    for name in names:
        d = root / name
        if (d / split).is_dir():
            return d / split
        if d.is_dir() and not any(p.is_dir() for p in d.iterdir()):
            return d
    return None


class SegFolder:
    """A list of (image, label) pairs with checked labels. Decoded samples are cached in memory on request."""

    def __init__(self, root: str | Path, split: str, cache: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise EdgesegError(f"{self.root}: data folder not found; pass --data with a CamVid-format folder (images/<split>, labels/<split>)")
        self.classes = load_classes(self.root)
        img_dir = _split_dir(self.root, ("images",), split)
        lab_dir = _split_dir(self.root, LABEL_DIRS, split)
        if img_dir is None or lab_dir is None:
            raise EdgesegError(f"{self.root}: no images/{split} and labels/{split} folders; check --data and --split")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not images:
            raise EdgesegError(f"{img_dir}: no images ({', '.join(IMAGE_EXTS)}); check --data and --split")
        labels = {p.stem: p for p in lab_dir.iterdir() if p.suffix.lower() == ".png"}
        unmatched = [p.name for p in images if p.stem not in labels]
        if unmatched:
            raise EdgesegError(f"{img_dir / unmatched[0]}: no label {unmatched[0].rsplit('.', 1)[0]}.png in {lab_dir} "
                               f"({len(unmatched)} images without labels); add the labels or remove the images")
        self.items = [(p, labels[p.stem]) for p in images]
        self.split = split
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 HxWx3, label uint8/uint16 HxW) with label values checked."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img_path, lab_path = self.items[i]
        img, lab = read_image(img_path), read_label(lab_path)
        if img.shape[:2] != lab.shape:
            raise EdgesegError(f"{lab_path}: label is {lab.shape[1]}x{lab.shape[0]} but its image is "
                               f"{img.shape[1]}x{img.shape[0]}; labels must match their images pixel for pixel")
        c = self.classes
        bad = (lab >= c.num_classes) & (lab != c.ignore_index)
        if bad.any():
            raise EdgesegError(f"{lab_path}: label value {int(lab[bad].max())} is out of range (classes 0..{c.num_classes - 1}, "
                               f"ignore {c.ignore_index}); fix the mask or the classes.json")
        if self._cache is not None:
            self._cache[i] = (img, lab)
        return img, lab
