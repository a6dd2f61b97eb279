"""Class names, palette and ignore index of a dataset; CamVid's are built in."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import EdgesegError


@dataclass(frozen=True)
class ClassInfo:
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB per class
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "palette": [list(c) for c in self.palette], "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, d: dict, source: str = "classes") -> "ClassInfo":
        try:
            names = tuple(str(n) for n in d["names"])
            palette = tuple(tuple(int(v) for v in c) for c in d.get("palette") or default_palette(len(names)))
            ignore = int(d.get("ignore_index", 255))
        except (KeyError, TypeError, ValueError) as e:
            raise EdgesegError(f"{source}: expected {{'names': [...], 'palette': [[r,g,b], ...], 'ignore_index': int}} ({e})")
        if len(palette) != len(names) or any(len(c) != 3 for c in palette):
            raise EdgesegError(f"{source}: palette needs one [r,g,b] per class ({len(names)} classes, {len(palette)} colours)")
        if 0 <= ignore < len(names):
            raise EdgesegError(f"{source}: ignore_index {ignore} is a class index; use a value >= {len(names)} (e.g. 255)")
        return cls(names, palette, ignore)

    @classmethod
    def load(cls, path: str | Path) -> "ClassInfo":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), str(path))
        except (OSError, json.JSONDecodeError) as e:
            raise EdgesegError(f"{path}: cannot read the classes file ({e})")


def default_palette(n: int) -> list[list[int]]:
    """Distinct colours for n classes (the PASCAL VOC bit-interleaving scheme)."""
    out = []
    for i in range(n):
        c, r, g, b = i + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


CAMVID = ClassInfo(
    names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_index=11,
)
# SegNet's median-frequency class weights for CamVid (from the dataset's README).
CAMVID_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614)
