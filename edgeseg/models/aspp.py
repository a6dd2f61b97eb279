"""Atrous spatial pyramid pooling, shared by DeepLab v2, v3 and v3+ (Chen et al., TPAMI 2018; arXiv 1706.05587;
ECCV 2018). Every branch follows the input size, so the exported graphs take any H and W."""
from __future__ import annotations

import torch
from torch import nn

from edgeseg.models.layers import ConvBNReLU


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
    """v3 / v3+ ASPP: a 1x1 branch, one 3x3 atrous branch per rate, image pooling; concatenated and projected.

    `separable`: v3+'s depthwise-separable atrous branches; v3 uses plain 3x3 atrous convolutions.
    """

    def __init__(self, cin: int, dim: int, rates, separable: bool = True):
        super().__init__()
        atrous = [SepConvBNReLU(cin, dim, r) if separable else ConvBNReLU(cin, dim, 3, dilation=r) for r in rates]
        self.branches = nn.ModuleList([ConvBNReLU(cin, dim, 1)] + atrous + [ImagePool(cin, dim)])
        self.project = nn.Sequential(ConvBNReLU(len(self.branches) * dim, dim, 1), nn.Dropout2d(0.1))

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.branches], 1))


class ASPPSum(nn.Module):
    """v2's ASPP-L: per rate a 3x3 atrous fc6, a 1x1 fc7 and a 1x1 fc8 to class scores; the scores are summed."""

    def __init__(self, cin: int, num_classes: int, rates=(6, 12, 18, 24), dim: int = 1024):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(ConvBNReLU(cin, dim, 3, dilation=r), nn.Dropout2d(0.5), ConvBNReLU(dim, dim, 1),
                          nn.Dropout2d(0.5), nn.Conv2d(dim, num_classes, 1))
            for r in rates)

    def forward(self, x):
        out = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        return out
