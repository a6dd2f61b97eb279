"""DeepLabV3+ (Chen et al., ECCV 2018): ASPP with atrous separable convolutions + a decoder on the /4 feature."""
from __future__ import annotations

import torch
import torch.nn as nn

from edgeseg.models.backbones import create_backbone
from edgeseg.models.base import SegModel
from edgeseg.models.layers import ConvBNReLU, resize_to
from edgeseg.models.registry import register


class SepConvBNReLU(nn.Sequential):
    """3x3 depthwise (atrous) conv + 1x1 pointwise conv, each with BN and ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__(ConvBNReLU(cin, cin, 3, dilation=dilation, groups=cin), ConvBNReLU(cin, cout, 1))


class ImagePool(nn.Module):
    """Global context: mean over H and W, 1x1 conv, broadcast back to H x W (both follow the input size).

    No BatchNorm here: on a 1x1 map it fails in training with batch size 1.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        p = torch.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))
        return p.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    def __init__(self, cin: int, dim: int, rates):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(cin, dim, 1)] + [SepConvBNReLU(cin, dim, r) for r in rates]
                                      + [ImagePool(cin, dim)])
        self.project = nn.Sequential(ConvBNReLU(len(self.branches) * dim, dim, 1), nn.Dropout2d(0.1))

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.branches], 1))


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
