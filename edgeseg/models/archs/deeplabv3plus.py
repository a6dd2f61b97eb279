"""DeepLabV3+ (Chen et al., ECCV 2018): ASPP with atrous separable convolutions + a decoder on the /4 feature."""
from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.aspp import ASPP, SepConvBNReLU
from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import SegModel
from edgeseg.models.layers import ConvBNReLU, resize_to
from edgeseg.models.registry import register


class DeepLabV3PlusDecoder(nn.Module):
    def __init__(self, channels, dim: int, rates, low_dim: int = 48):
        super().__init__()
        self.aspp = ASPP(channels[-1], dim, rates)
        self.low = ConvBNReLU(channels[0], low_dim, 1)
        self.fuse = nn.Sequential(SepConvBNReLU(dim + low_dim, dim), SepConvBNReLU(dim, dim))

    def forward(self, feats):
        low = feats[0]
        return self.fuse(torch.cat([resize_to(self.aspp(feats[-1]), low), self.low(low)], 1))


@register("deeplabv3plus")
class DeepLabV3Plus(SegModel):
    def __init__(self, num_classes: int, backbone: str = "mobilenetv2", output_stride: int = 16, dim: int = 256):
        """`backbone`: mobilenetv2, resnet18 or resnet50; ASPP rates 6/12/18 at output stride 16, scaled with it."""
        super().__init__(num_classes, backbone=backbone, output_stride=output_stride, dim=dim)
        self.encoder = create_backbone(backbone, output_stride=output_stride)
        rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
        self.decoder = DeepLabV3PlusDecoder(self.encoder.channels, dim, rates)
        self.head = nn.Conv2d(dim, num_classes, 1)
