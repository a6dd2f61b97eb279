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
    def from_dict(cls, d: dict, source: str = "classes") -> ClassInfo:
        shape = "{'names': [...], 'palette': [[r,g,b], ...], 'ignore_index': int}"
        if not isinstance(d, dict) or not isinstance(d.get("names"), list):
            raise EdgesegError(f"{source}: 'names' must be a list of class names, as in {shape}")
        if not d["names"] or not all(isinstance(n, str) and n.strip() for n in d["names"]):
            raise EdgesegError(f"{source}: 'names' must list at least one class, each a non-empty string")
        names = tuple(d["names"])
        pal = d.get("palette") or default_palette(len(names))
        if not isinstance(pal, list) or not all(isinstance(c, list) and len(c) == 3 and all(
                isinstance(v, int) and 0 <= v <= 255 for v in c) for c in pal) or len(pal) != len(names):
            raise EdgesegError(f"{source}: 'palette' needs one [r,g,b] of integers 0-255 per class ({len(names)} classes)")
        palette = tuple(tuple(c) for c in pal)
        ignore = d.get("ignore_index", 255)
        if not isinstance(ignore, int) or isinstance(ignore, bool):
            raise EdgesegError(f"{source}: 'ignore_index' must be an integer, as in {shape}")
        if 0 <= ignore < len(names):
            raise EdgesegError(f"{source}: ignore_index {ignore} is a class index; use a value >= {len(names)} (e.g. 255)")
        return cls(names, palette, ignore)

    @classmethod
    def load(cls, path: str | Path) -> ClassInfo:
        try:
            data = Path(path).read_bytes()
            # JSON is UTF-8; editors on Windows also write UTF-16 (with a byte-order mark) or UTF-8 with one
            text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8-sig")
            return cls.from_dict(json.loads(text), str(path))
        except UnicodeDecodeError:
            raise EdgesegError(f"{path}: the classes file is not UTF-8 text; save it as UTF-8 JSON") from None
        except (OSError, json.JSONDecodeError) as e:
            raise EdgesegError(f"{path}: cannot read the classes file ({e})") from None


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
