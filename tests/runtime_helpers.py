"""Real ONNX models and videos for the runtime tests: exported with torch here, run without it by the runtime."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
import torch.nn as nn

from edgeseg.data.classes import CAMVID
from edgeseg.meta import IMAGENET_MEAN, IMAGENET_STD, META_KEY, make_meta

SIZE = (64, 96)  # H, W of the test frames


def export_onnx(model, path: Path, meta: dict, example, *, dynamic: bool = True, output_name: str = "logits") -> Path:
    """Export with the TorchScript exporter (the project's choice) and write the edgeseg metadata."""
    model.eval()
    axes = None
    if dynamic:
        hw = {0: "N", 1: "H", 2: "W"} if meta["input"]["layout"] == "NHWC" else {0: "N", 2: "H", 3: "W"}
        out_axes = {0: "N", 1: "H", 2: "W"} if output_name == "labels" else {0: "N", 2: "H", 3: "W"}
        axes = {"images": hw, output_name: out_axes}
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=[output_name], dynamic_axes=axes)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, str(path))
    return path


def sfnet(num_classes: int = 11) -> nn.Module:
    """A real SFNet (ResNet-18, narrow decoder) with fixed random weights."""
    from edgeseg.models import create

    torch.manual_seed(0)
    return create("sfnet", num_classes, fpn_dim=32, aux=False).eval()


def conv_net(num_classes: int = 11) -> nn.Module:
    """A tiny fully convolutional net: fast, and enough to check layouts, heads and the pipeline's plumbing."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1)).eval()


class Fused(nn.Module):
    """The fused-preprocess variant: takes uint8 [N,H,W,3] BGR and normalises inside the graph."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).flip(1).float() / 255.0
        return self.net((x - self.mean) / self.std)


class Argmax(nn.Module):
    """The `--head argmax` variant: class IDs [N,H,W]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).argmax(1)


def camvid_meta(**kw) -> dict:
    return make_meta("test", CAMVID, **kw)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str | None = None) -> Path:
    fourcc = fourcc or ("MJPG" if path.suffix == ".avi" else "mp4v")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"cv2 cannot write {fourcc} to {path}"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def camvid_frames(camvid: Path, n: int, size=SIZE) -> list[np.ndarray]:
    """The first n real CamVid val frames (BGR), resized to size (H, W)."""
    files = sorted((camvid / "images" / "val").iterdir())[:n]
    return [cv2.resize(cv2.imread(str(p)), size[::-1], interpolation=cv2.INTER_AREA) for p in files]


