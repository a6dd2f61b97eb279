"""Shared fixtures: the real CamVid copy beside the repository, and small real-data folders made from it."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("EDGESEG_CAMVID", ROOT.parent / "shared" / "data" / "camvid"))


@pytest.fixture(scope="session")
def camvid() -> Path:
    if not (CAMVID / "images" / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set EDGESEG_CAMVID)")
    return CAMVID


def shrink_camvid(src: Path, dst: Path, n_train: int = 8, n_val: int = 4, size=(96, 128)) -> Path:
    """A CamVid-format folder with the first real frames, resized (labels with nearest neighbour)."""
    for split, n in (("train", n_train), ("val", n_val)):
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        for p in sorted((src / "images" / split).iterdir())[:n]:
            img = cv2.imread(str(p))
            lab = cv2.imread(str(src / "labels" / split / p.name), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(dst / "images" / split / p.name), cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA))
            cv2.imwrite(str(dst / "labels" / split / p.name), cv2.resize(lab, size[::-1], interpolation=cv2.INTER_NEAREST))
    return dst


@pytest.fixture(scope="session")
def tiny_camvid(camvid, tmp_path_factory) -> Path:
    return shrink_camvid(camvid, tmp_path_factory.mktemp("tiny_camvid"))
