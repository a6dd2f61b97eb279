"""Backbones from scratch. Each returns a list of features (fine to coarse) and has `.channels`."""
from __future__ import annotations

from edgeseg.errors import EdgesegError
from edgeseg.models.backbones.efficientnet_lite import efficientnet_lite0
from edgeseg.models.backbones.mit import mit_b0
from edgeseg.models.backbones.mobilenetv2 import mobilenetv2
from edgeseg.models.backbones.resnet import resnet18, resnet50
from edgeseg.models.backbones.vgg import vgg16_bn
from edgeseg.models.backbones.vit import vit_small, vit_tiny

BACKBONES = {"resnet18": resnet18, "resnet50": resnet50}
BACKBONES.update(mobilenetv2=mobilenetv2, mit_b0=mit_b0)
BACKBONES.update(vgg16_bn=vgg16_bn)
BACKBONES.update(vit_tiny=vit_tiny, vit_small=vit_small)  # one stride (the patch): not for multi-scale decoders
BACKBONES.update(efficientnet_lite0=efficientnet_lite0)


def create_backbone(name: str, **kwargs):
    if name not in BACKBONES:
        raise EdgesegError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**kwargs)
